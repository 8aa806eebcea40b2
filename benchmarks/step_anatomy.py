"""Where a recorded training step's time goes, and what a compiler or fewer validation samples buy.

For the 784-400-20 MNIST-sized VAE at batch 128 (random data: timing only), side by side in one
process:

- the share of the replayed step's graph spent in matrix products (``torch.profiler``) and their
  achieved GFLOP/s, against the same products timed alone (operands in cache);
- the graph handed to Inductor (``torch._inductor.compile_fx``), with its Python wrapper and with
  its C++ one (``cpp_wrapper``): compile seconds (the second compile of a process reads Inductor's
  cache) and step time against the replay, in alternating turns;
- the validation ELBO's Monte Carlo standard error and cost for 1, 4 and 16 samples of z per
  image (``evaluate.elbo_sums``) on 1,000 images after a few hundred steps.

    python benchmarks/step_anatomy.py          # about a minute on 2 CPU cores, Inductor included
    python benchmarks/step_anatomy.py --quick  # seconds: no Inductor, few turns
"""

import argparse
import statistics
import time

import torch

from pyro_vae import VAE, TrainConfig, Trainer
from pyro_vae.inference.evaluate import elbo_estimate, elbo_sums

LAYERS = [(784, 400), (400, 40), (20, 400), (400, 784)]
BATCH = 128


def timed(function, repeats: int) -> float:
    """Median seconds of one call over ``repeats`` calls, after a warm-up."""
    for _ in range(5):
        function()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def matrix_products(graph, inputs) -> tuple[float, float]:
    """(share of the graph's CPU time in mm/addmm, their MFLOP per call of the graph)."""
    from torch.profiler import profile

    with torch.no_grad(), profile() as prof:
        for _ in range(20):
            graph(*inputs)
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    products = sum(e.self_cpu_time_total for e in events if e.key in ("aten::mm", "aten::addmm"))
    forward = sum(2 * BATCH * a * b for a, b in LAYERS)
    flop = 3 * forward - 2 * BATCH * LAYERS[0][0] * LAYERS[0][1]  # no gradient for the data
    return products / total, flop / 1e6


def products_alone(repeats: int) -> float:
    """GFLOP/s of the step's four large products, each timed alone with its operands in cache."""
    shapes = [((BATCH, 784), (784, 400)), ((BATCH, 400), (400, 784))]
    shapes += [((784, BATCH), (BATCH, 400)), ((400, BATCH), (BATCH, 784))]
    rates = []
    for a_shape, b_shape in shapes:
        a, b = torch.randn(*a_shape), torch.randn(*b_shape)
        rates.append(
            2 * a_shape[0] * a_shape[1] * b_shape[1] / timed(lambda a=a, b=b: a @ b, repeats)
        )
    return statistics.median(rates) / 1e9


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    repeats = 20 if args.quick else 200
    torch.manual_seed(0)
    vae = VAE(784, 20, hidden_dims=(400,))
    trainer = Trainer(vae, TrainConfig(elbo="analytic"))
    x = torch.rand(BATCH, 784)
    for _ in range(30 if args.quick else 300):
        trainer.step(x)
    (graph,) = trainer._recorded._graphs.values()
    inputs = [*trainer._recorded._inputs, x]

    def replay(function=graph):
        with torch.no_grad():
            function(*inputs)

    share, mflop = matrix_products(graph, inputs)
    step = timed(replay, repeats)
    print(f"replayed graph: {step * 1e3:.2f} ms, {mflop / step / 1e3:.0f} GFLOP/s overall")
    print(
        f"matrix products: {share:.0%} of it, {share * step * 1e3:.2f} ms, "
        f"{mflop / (share * step) / 1e3:.0f} GFLOP/s; alone: {products_alone(repeats):.0f} GFLOP/s"
    )

    if not args.quick:
        import torch._inductor.config as inductor
        from torch._inductor.compile_fx import compile_fx

        inductor.fallback_random = True  # torch's generator, as the eager step draws
        for wrapper in (False, True):
            inductor.cpp_wrapper = wrapper
            start = time.perf_counter()
            compiled = compile_fx(graph, inputs)
            seconds = time.perf_counter() - start
            pairs = [
                (timed(replay, repeats // 4), timed(lambda c=compiled: replay(c), repeats // 4))
                for _ in range(4)
            ]
            ratio = statistics.median(b / a for a, b in pairs)
            name = "C++" if wrapper else "Python"
            print(
                f"Inductor, {name} wrapper: compiled in {seconds:.2f} s; step "
                f"{statistics.median(b for _, b in pairs) * 1e3:.2f} ms against the replay's "
                f"{statistics.median(a for a, _ in pairs) * 1e3:.2f} (paired ratio {ratio:.2f})"
            )

    images = torch.rand(1000, 784)
    for particles in (1, 4, 16):
        estimate = elbo_estimate(elbo_sums(vae, images, particles), images.shape[0])
        cost = timed(lambda p=particles: elbo_sums(vae, images, p), 3 if args.quick else 10)
        error = f"{estimate.standard_error:.3f}" if estimate.standard_error else "none"
        print(
            f"validation, {particles:2d} samples of z: standard error {error} nats, "
            f"{cost * 1e3:.0f} ms"
        )


if __name__ == "__main__":
    main()
