"""Levers on the recorded training step's time that are not kernels: overhead, the update, threads.

For the 784-400-20 VAE at batch 128 (random data: timing only; ``--quick``: fewer turns, no
Inductor), in one process, each lever side by side with what it would replace, in alternating
turns (the order reversed every other turn), medians:

- **overhead**: a 4-4-2 VAE at batch 2, where the arithmetic is nothing: the replayed graph's
  kernel calls, the recording's bookkeeping (``RecordedGradient.__call__`` less the graph), torch's
  fused Adam (its Python), and ``Trainer.step`` (the rest: the trainer's own Python);
- **Adam**: torch's fused, ``foreach`` and per-tensor Adam over the 784-400-20 VAE's parameters,
  alone (gradients in place, operands in cache);
- **update**: the replayed graph then torch's fused Adam, against the graph compiled by Inductor
  (C++ wrapper, as ``--compile`` does) then fused Adam, and against one compiled function of the
  graph and Adam's update written elementwise (in place on the optimizer's own state), which
  lets Inductor fuse the update with the step as XLA does NumPyro's;
- **threads**: the replayed graph and update with every kernel on two threads, against one thread
  for all but the matrix products (two for those), and against one thread for everything.

OpenMP's wait policy must be set before torch loads, so it is a matter of processes: alternate
``OMP_WAIT_POLICY=ACTIVE pyro-vae train ...`` with the same command without it (docs/performance.md
gives the runs).

    python benchmarks/step_levers.py          # about a minute on 2 CPU cores, Inductor included
    python benchmarks/step_levers.py --quick  # seconds: no Inductor, few turns
"""

import argparse
import copy
import statistics
import time
from collections.abc import Callable

import torch

from pyro_vae import VAE, TrainConfig, Trainer
from pyro_vae.inference.fast.compiled import compile_graph

BATCH = 128


def alternating(contestants: dict[str, Callable[[], object]], turns: int, calls: int) -> dict:
    """Median seconds a call of each contestant, over ``turns`` alternating turns of ``calls``."""
    seconds: dict[str, list[float]] = {name: [] for name in contestants}
    for turn in range(turns):
        names = list(contestants) if turn % 2 == 0 else list(contestants)[::-1]
        for name in names:
            run = contestants[name]
            for _ in range(max(1, calls // 10)):  # warm: caches, allocator, the thread team
                run()
            start = time.perf_counter()
            for _ in range(calls):
                run()
            seconds[name].append((time.perf_counter() - start) / calls)
    return {name: statistics.median(values) for name, values in seconds.items()}


def recorded(data_dim: int, latent: int, hidden: int, batch: int):
    """A trainer whose step is recorded, its graph, the graph's inputs and the batch."""
    torch.manual_seed(0)
    trainer = Trainer(VAE(data_dim, latent, hidden_dims=(hidden,)), TrainConfig(elbo="analytic"))
    x = torch.rand(batch, data_dim)
    for _ in range(5):
        trainer.step(x)
    (graph,) = trainer._recorded._graphs.values()
    return trainer, graph, [*trainer._recorded._inputs, x], x


def overhead(turns: int) -> dict[str, float]:
    trainer, graph, inputs, x = recorded(4, 2, 4, 2)
    optimizer = trainer.update_rule.optimizer

    def replay() -> None:
        with torch.no_grad():
            graph(*inputs)

    found = alternating(
        {
            "graph": replay,
            "recorded step": lambda: trainer._recorded(x),
            "fused Adam": optimizer.step,
            "Trainer.step": lambda: trainer.step(x),
        },
        turns,
        500,
    )
    return {
        "graph's kernel calls": found["graph"],
        "the recording's bookkeeping": found["recorded step"] - found["graph"],
        "fused Adam (its Python)": found["fused Adam"],
        "the trainer's Python": found["Trainer.step"]
        - found["recorded step"]
        - found["fused Adam"],
    }


def adam(turns: int) -> dict[str, float]:
    trainer = recorded(784, 20, 400, BATCH)[0]
    parameters = [torch.nn.Parameter(p.detach().clone()) for p in trainer.update_rule.parameters]
    for parameter in parameters:
        parameter.grad = torch.randn_like(parameter)
    optimizers = {
        name: torch.optim.Adam(parameters, lr=1e-3, **options)
        for name, options in [
            ("fused", {"fused": True}),
            ("foreach", {"foreach": True}),
            ("per tensor", {"foreach": False}),
        ]
    }
    return alternating({name: o.step for name, o in optimizers.items()}, turns, 200)


def elementwise_adam(optimizer: torch.optim.Adam) -> Callable[[list[torch.Tensor]], None]:
    """Adam's update written in torch's elementwise operations, in place on ``optimizer``'s
    parameters and state (its defaults: betas 0.9 and 0.999, ε 1e-8)."""
    group = optimizer.param_groups[0]
    parameters = group["params"]
    lr = torch.tensor(group["lr"])
    beta1, beta2 = group["betas"]
    states = [optimizer.state[p] for p in parameters]

    def update(gradients: list[torch.Tensor]) -> None:
        for parameter, gradient, state in zip(parameters, gradients, states, strict=True):
            step, mean, square = state["step"], state["exp_avg"], state["exp_avg_sq"]
            step.add_(1)
            mean.lerp_(gradient, 1 - beta1)
            square.mul_(beta2).addcmul_(gradient, gradient, value=1 - beta2)
            denominator = (square.sqrt() / (1 - torch.pow(beta2, step)).sqrt()).add_(group["eps"])
            parameter.sub_(lr * mean / ((1 - torch.pow(beta1, step)) * denominator))

    return update


def update(turns: int, quick: bool) -> dict[str, float]:
    trainer, graph, inputs, _ = recorded(784, 20, 400, BATCH)
    optimizer = trainer.update_rule.optimizer
    parameters = trainer.update_rule.parameters

    def replayed() -> None:
        with torch.no_grad():
            graph(*inputs)
        optimizer.step()

    contestants: dict[str, Callable[[], object]] = {"replayed graph, fused Adam": replayed}
    if not quick:
        compiled = compile_graph(graph, inputs, asked=True)
        elementwise = elementwise_adam(optimizer)

        def step_and_update(*values: torch.Tensor) -> None:
            _, _, *gradients = graph(*values)
            elementwise(gradients)

        together = torch.compile(
            step_and_update, fullgraph=True, dynamic=False, options={"cpp_wrapper": True}
        )

        def compiled_then_adam() -> None:
            with torch.no_grad():
                _, _, *gradients = compiled(*inputs)
            for parameter, gradient in zip(parameters, gradients, strict=True):
                parameter.grad = gradient
            optimizer.step()

        def compiled_together() -> None:
            with torch.no_grad():
                together(*inputs)

        contestants["compiled graph, fused Adam"] = compiled_then_adam
        contestants["graph and Adam compiled together"] = compiled_together
        import torch._inductor.config as inductor

        with inductor.patch(fallback_random=True):  # torch's generator, as the eager step draws
            compiled_together()  # compiled here, not in a timed turn
    return alternating(contestants, turns, 150)


def threads(turns: int) -> dict[str, float]:
    trainer, graph, inputs, _ = recorded(784, 20, 400, BATCH)
    optimizer = trainer.update_rule.optimizer
    products = (torch.mm, torch.addmm, torch.ops.aten.mm.default, torch.ops.aten.addmm.default)

    def on_two_threads(product: Callable) -> Callable:
        def run(*args: torch.Tensor) -> torch.Tensor:
            torch.set_num_threads(2)
            try:
                return product(*args)
            finally:
                torch.set_num_threads(1)

        return run

    split = copy.deepcopy(graph)
    for node in split.graph.nodes:
        if node.op == "call_function" and node.target in products:
            node.target = on_two_threads(node.target)
    split.recompile()

    def step(function: Callable, count: int) -> Callable[[], None]:
        def run() -> None:
            torch.set_num_threads(count)
            with torch.no_grad():
                function(*inputs)
            torch.set_num_threads(2)
            optimizer.step()

        return run

    try:
        return alternating(
            {
                "two threads": step(graph, 2),
                "one thread, products on two": step(split, 1),
                "one thread": step(graph, 1),
            },
            turns,
            150,
        )
    finally:
        torch.set_num_threads(2)


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    if torch.get_num_threads() < 2:
        raise SystemExit("needs 2 torch threads (2 CPU cores): the threads lever compares them")
    turns = 2 if args.quick else 8
    results = {
        "overhead of a step with no arithmetic (4-4-2 VAE, batch 2)": overhead(turns),
        "Adam over the 784-400-20 VAE's parameters, alone": adam(turns),
        "the 784-400-20 step and its update": update(turns, args.quick),
        "threads, the 784-400-20 step and its update": threads(turns),
    }
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; median of {turns} turns")
    for title, rows in results.items():
        print(title)
        for name, seconds in rows.items():
            print(f"  {name:<40} {seconds * 1e6:9.0f} µs")
    return results


if __name__ == "__main__":
    main()
