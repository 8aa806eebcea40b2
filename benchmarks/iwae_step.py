"""IWAE's training step: recorded (as every estimator's), eager, and on Pyro's RenyiELBO as shipped.

The setting of experiments/importance_weighted.py: 784-200-200-50 with tanh, Bernoulli likelihood,
batch 100, k = 5 and k = 50 samples of z per image. Contestants, each ``Trainer.step`` (fused
torch Adam):

- ``recorded``: ``--elbo iwae`` as pyro-vae trains it (``--no-compile``): ``DeviceRenyiELBO``
  (inference/objectives.py), its loss and gradient replayed from a graph recorded at the second
  step (inference/fast/replay.py);
- ``compiled``: the recorded step compiled by Inductor (``--compile``, which a run decides for
  itself where its steps would take over two minutes: inference/fast/compiled.py);
- ``eager``: the same objective with Pyro's machinery at every step (``record_graph=False``);
- ``Pyro's RenyiELBO``: Pyro's class as shipped (no differentiable loss: its ``loss_and_grads``
  reads the bound back to the host every step, on the registered model and guide), which was
  pyro-vae's IWAE until it was recorded;
- ``VAE, k = 1`` (``mc``, recorded): the reference every ratio is to.

Contestants take turns (shuffled afresh each turn, from a fixed seed), each turn a block of steps;
the report gives the median over turns. Never run it beside other work: on 2 cores, anything else
running changes every figure.

    python benchmarks/iwae_step.py            # about a minute on 2 CPU cores
    python benchmarks/iwae_step.py --quick    # seconds, for the test suite
"""

import argparse
import random
import statistics
import time
from collections.abc import Callable

import pyro
import torch
from pyro.infer import RenyiELBO

from pyro_vae import VAE, TrainConfig, Trainer
from pyro_vae.inference.fast.replay import AUDIT_FIRST

REFERENCE = "VAE, k = 1"


def trainer_step(
    estimator: str, k: int, record: bool = True, pyros: bool = False, compile: bool = False
) -> Callable[[torch.Tensor], torch.Tensor]:
    pyro.set_rng_seed(0)
    vae = VAE(784, 50, hidden_dims=(200, 200), likelihood="bernoulli", activation="tanh")
    elbo = (
        RenyiELBO(alpha=0.0, num_particles=k, vectorize_particles=k > 1, max_plate_nesting=1)
        if pyros
        else None
    )
    config = TrainConfig(elbo=estimator, num_particles=k, compile=compile)
    return Trainer(vae, config, elbo=elbo, record_graph=record).step


def contestants(
    particles: list[int], compiled: bool
) -> dict[str, Callable[[torch.Tensor], torch.Tensor]]:
    steps = {REFERENCE: trainer_step("mc", 1)}
    for k in particles:
        steps[f"IWAE, k = {k}, recorded"] = trainer_step("iwae", k)
        if compiled:
            steps[f"IWAE, k = {k}, compiled"] = trainer_step("iwae", k, compile=True)
        steps[f"IWAE, k = {k}, eager"] = trainer_step("iwae", k, record=False)
        steps[f"IWAE, k = {k}, Pyro's RenyiELBO"] = trainer_step("iwae", k, pyros=True)
    return steps


def time_turns(
    steps: dict[str, Callable], x: torch.Tensor, batch: int, turns: int, per_turn: int
) -> dict[str, list[float]]:
    batches = list(x[: batch * per_turn].split(batch))
    for step in steps.values():  # the validated step, the recording and its first audits
        for i in range(2 + AUDIT_FIRST):
            step(batches[i % len(batches)])
    seconds: dict[str, list[float]] = {name: [] for name in steps}
    order = random.Random(0)
    for _ in range(turns):
        names = list(steps)
        order.shuffle(names)
        for name in names:
            start = time.perf_counter()
            for b in batches:
                steps[name](b)
            seconds[name].append((time.perf_counter() - start) / len(batches))
    return seconds


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--particles", type=int, nargs="+", default=[5, 50])
    parser.add_argument("--turns", type=int, default=7)
    parser.add_argument("--steps", type=int, default=10, help="steps timed in one turn")
    parser.add_argument(
        "--no-compiled", action="store_true", help="leave out the compiled contestants"
    )
    parser.add_argument(
        "--quick", action="store_true", help="k = 3, 2 turns of 2 steps, nothing compiled"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.particles, args.turns, args.steps, args.no_compiled = [3], 2, 2, True
    batch = 100
    x = torch.rand(batch * args.steps, 784).bernoulli()  # the cost does not depend on the pixels
    steps = contestants(args.particles, compiled=not args.no_compiled)
    seconds = time_turns(steps, x, batch, args.turns, args.steps)
    medians = {name: statistics.median(values) for name, values in seconds.items()}
    print(
        f"784-200-200-50 tanh, batch {batch}, {torch.get_num_threads()} threads, "
        f"torch {torch.__version__}, pyro {pyro.__version__}; median of {args.turns} turns of "
        f"{args.steps} steps"
    )
    print(f"{'contestant':<36}{'ms/step':>10}{'× VAE':>8}")
    for name, median in medians.items():
        print(f"{name:<36}{median * 1e3:>10.2f}{median / medians[REFERENCE]:>8.2f}")
    for k in args.particles:
        recorded = medians[f"IWAE, k = {k}, recorded"]
        pyros = medians[f"IWAE, k = {k}, Pyro's RenyiELBO"]
        print(
            f"k = {k}: the recorded step is {medians[f'IWAE, k = {k}, eager'] / recorded:.2f}× "
            f"faster than the eager one, {pyros / recorded:.2f}× than Pyro's RenyiELBO"
        )
        if f"IWAE, k = {k}, compiled" in medians:
            compiled = medians[f"IWAE, k = {k}, compiled"]
            print(
                f"k = {k}: the compiled step is {recorded / compiled:.2f}× faster than the replay"
            )
    return medians


if __name__ == "__main__":
    main()
