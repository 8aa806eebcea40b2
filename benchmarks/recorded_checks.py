"""Two costs measured side by side: the recorded step's state check, and the Gaussian likelihood's
sum-of-squares form against ``Normal(x̂, σ).to_event(1)``.

- ``StateWatch.changed()``: the check before every replay (inference/fast/contract.py), timed alone
  on the MNIST-sized VAE (784-400-20).
- ``IsotropicNormal`` against ``Normal(...).to_event(1)``: two trainers of the same VAE, one with
  each, in alternating turns; a training step (batch 128) and a validation pass (1,000 images,
  16 samples of z), reported as paired medians of the ratio.

    python benchmarks/recorded_checks.py            # about a minute on 2 CPU cores
    python benchmarks/recorded_checks.py --turns 2  # seconds
"""

import argparse
import statistics
import time
import timeit

import pyro.distributions as dist
import torch

from pyro_vae import VAE, TrainConfig, Trainer
from pyro_vae.components.likelihoods import GaussianLikelihood
from pyro_vae.data.datasets import Split


class ElementwiseGaussian(GaussianLikelihood):
    """The same likelihood in ``Normal``'s elementwise form, as it was before IsotropicNormal."""

    recordable = True

    def forward(self, x_hat: torch.Tensor) -> dist.Distribution:
        return dist.Normal(x_hat, self.scale).to_event(1)


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--turns", type=int, default=16)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    batch, validation = torch.rand(128, 784), torch.rand(1000, 784)
    validation_split = Split(validation, torch.zeros(1000, dtype=torch.long))
    trainers = {}
    for name, likelihood in [("elementwise", ElementwiseGaussian(784)), ("sum", None)]:
        vae = VAE(784, 20, hidden_dims=(400,), likelihood=likelihood or GaussianLikelihood(784))
        trainers[name] = Trainer(vae, TrainConfig())
        for _ in range(3):  # eager and validated, then recorded
            trainers[name].step(batch)
    watch = trainers["sum"]._recorded._watch
    calls = 20000
    check = timeit.timeit(watch.changed, number=calls) / calls
    steps = {name: [] for name in trainers}
    passes = {name: [] for name in trainers}
    for turn in range(args.turns):
        for name in list(trainers)[:: 1 if turn % 2 else -1]:
            start = time.perf_counter()
            for _ in range(30):
                trainers[name].step(batch)
            steps[name].append((time.perf_counter() - start) / 30)
            start = time.perf_counter()
            trainers[name]._validation_elbo(validation_split)
            passes[name].append(time.perf_counter() - start)
    result = {"check_us": check * 1e6}
    print(f"StateWatch.changed(): {check * 1e6:.1f} µs a call")
    for what, times in (("step", steps), ("validation pass", passes)):
        ratios = [a / b for a, b in zip(times["sum"], times["elementwise"], strict=True)]
        ms = {name: statistics.median(values) * 1e3 for name, values in times.items()}
        print(
            f"{what}: elementwise {ms['elementwise']:.2f} ms, sum of squares {ms['sum']:.2f} ms; "
            f"paired ratio {statistics.median(ratios):.3f} ({min(ratios):.2f}–{max(ratios):.2f})"
        )
        result[what] = statistics.median(ratios)
    return result


if __name__ == "__main__":
    main()
