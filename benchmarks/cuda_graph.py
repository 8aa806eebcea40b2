"""Images per second of a training step on a GPU: pyro-vae's step captured as one CUDA graph
against the hand-written eager PyTorch step, at batch 128 and 1,024.

The contestants take turns in one process, in an order shuffled afresh every turn (fixed seeds);
each turn times a block of steps between two synchronisations of the device, and the report gives
the median over turns in images per second and its ratio to the hand-written eager step (the
same networks, Bernoulli likelihood and closed-form KL written out in torch, torch's default
Adam). The data, 784 binary pixels an image, live on the device, as in ``pyro-vae train``.

- pyro-vae mc / analytic: ``Trainer.step``, whose recorded step and fused Adam are captured in one
  CUDA graph (inference/fast/cuda_graph.py); ``recorded``: the same graph replayed without the
  capture (``cuda_graph=False``), one launch per operation; ``eager``: Pyro's machinery at every
  step.
- hand-written, fused Adam: the reference with torch's fused Adam, as pyro-vae's step uses.

    python benchmarks/cuda_graph.py                 # on a GPU: batch 128 and 1,024
    python benchmarks/cuda_graph.py --batch 256 --turns 5
"""

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import pyro
import torch
from training_step import hand_written_step, mnist_sized, shuffled

from pyro_vae import VAE, TrainConfig, Trainer


def contestants(device: torch.device) -> dict[str, Callable[[torch.Tensor], torch.Tensor]]:
    def fresh(name: str) -> VAE:
        pyro.set_rng_seed(0)
        vae = VAE((1, 28, 28), likelihood="bernoulli", hidden_dims=(400,), latent_dim=50, name=name)
        return vae.to(device)

    def pyro_vae(name: str, estimator: str, **options) -> Callable[[torch.Tensor], torch.Tensor]:
        return Trainer(fresh(name), TrainConfig(elbo=estimator), **options).step

    found = {
        "hand-written PyTorch, eager": hand_written_step(fresh("hand")),
        "hand-written, fused Adam": hand_written_step(fresh("hand_fused"), fused=True),
    }
    for estimator in ("mc", "analytic"):
        found[f"pyro-vae {estimator} (CUDA graph)"] = pyro_vae(estimator, estimator)
        found[f"pyro-vae {estimator}, recorded"] = pyro_vae(
            f"{estimator}_recorded", estimator, cuda_graph=False
        )
    found["pyro-vae mc, eager"] = pyro_vae("eager", "mc", record_graph=False)
    return found


def images_per_second(
    steps: dict[str, Callable[[torch.Tensor], torch.Tensor]],
    x: torch.Tensor,
    batch: int,
    turns: int,
    steps_per_turn: int,
) -> dict[str, list[float]]:
    rows = torch.arange(steps_per_turn * batch, device=x.device) % x.shape[0]
    batches = [x[index] for index in rows.split(batch)]
    for name, step in steps.items():  # warm-up: recording, capture, cuBLAS's choices, allocator
        for b in batches[:5]:
            step(b)
        captured = getattr(getattr(step, "__self__", None), "_captured", None)
        if captured is not None:  # whether the graph was captured, not only how fast it ran
            print(
                f"  {name}: {len(captured._captures)} graph(s) captured, failure {captured.failure}"
            )
    rates: dict[str, list[float]] = {name: [] for name in steps}
    for turn in range(turns):
        for name in shuffled(steps, turn):
            step = steps[name]
            torch.cuda.synchronize(x.device)
            start = time.perf_counter()
            for b in batches:
                step(b)
            torch.cuda.synchronize(x.device)
            rates[name].append(batch * steps_per_turn / (time.perf_counter() - start))
    return rates


def replay_alone(step: Callable[[torch.Tensor], torch.Tensor], turns: int, steps: int) -> float:
    """Microseconds per replay of a trainer's captured graph, replayed back to back with no
    other host work: the GPU's own time for a step (with one launch each), which the whole step
    approaches as its host work shrinks."""
    capture = next(iter(step.__self__._captured._captures.values()))
    times = []
    for _ in range(turns):
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(steps):
            capture.graph.replay()
        torch.cuda.synchronize()
        times.append((time.perf_counter() - start) / steps * 1e6)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, nargs="+", default=[128, 1024])
    parser.add_argument("--turns", type=int, default=7)
    parser.add_argument("--steps", type=int, default=200, help="steps timed in one turn")
    parser.add_argument("--out", type=Path, help="also write the figures as JSON")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("cuda_graph.py measures a GPU, and this machine has none")
    device = torch.device("cuda")
    x = mnist_sized(quick=False).to(device)
    print(
        f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}, pyro {pyro.__version__}"
    )
    print(f"784-400-50, Bernoulli likelihood, {x.shape[0]} images on the device")
    results = {}
    for batch in args.batch:
        steps = contestants(device)
        rates = images_per_second(steps, x, batch, args.turns, args.steps)
        medians = {name: statistics.median(values) for name, values in rates.items()}
        reference = medians["hand-written PyTorch, eager"]
        print(f"\nbatch {batch}: {args.turns} turns of {args.steps} steps, median images/s")
        print("| contestant | images/s | step (µs) | × hand-written eager |")
        print("|---|---|---|---|")
        for name, rate in medians.items():
            print(f"| {name} | {rate:,.0f} | {batch / rate * 1e6:.0f} | {rate / reference:.2f} |")
        alone = {
            name: replay_alone(steps[name], args.turns, args.steps)
            for name in steps
            if name.endswith("(CUDA graph)")
        }
        for name, micros in alone.items():
            print(f"{name}: its graph replayed alone, {micros:.0f} µs a step")
        results[batch] = {"medians": medians, "turns": rates, "replay_alone_us": alone}
    if args.out is not None:
        args.out.write_text(json.dumps(results, indent=1))
    return results


if __name__ == "__main__":
    main()
