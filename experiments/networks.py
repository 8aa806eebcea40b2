"""MLP against conv: the same VAE with either encoder/decoder pair, at equal epochs and at equal
wall-clock time.

Every model trains on the MNIST split on disk (the 10,000 test images, split 8,000 / 1,000 /
1,000 with a fixed seed), statically binarized, with a Bernoulli likelihood (the IWAE papers'
setting, so the numbers can be set beside theirs), latent dimension 16, Trace_ELBO, Adam 1e-3,
batch 128. "Equal epochs" trains both for the same passes over the data; "equal time" gives the
MLP the seconds the conv needed for its epochs (measured in the same run, per seed), so each
network is compared at the same cost as well as the same data. Each model is scored on the
1,000 test images with K = 1,000 samples of z each: the ELBO (closed-form KL, averaged over the
samples) and the IWAE bound, both with their standard errors over images.

    python experiments/networks.py              # ~25 minutes on 2 CPU cores
    python experiments/networks.py --quick      # seconds, for the test suite
"""

import statistics
from dataclasses import dataclass
from pathlib import Path

import pyro
from common import (
    IWAE_SAMPLES,
    comparison,
    held_out_bounds,
    mean_and_spread,
    provenance,
    train_for,
)

from pyro_vae import VAE, TrainConfig, Trainer
from pyro_vae.data.datasets import Dataset

RESULTS = Path(__file__).parent / "results"
LATENT_DIM = 16
BATCH_SIZE = 128
WIDTHS = {"mlp": (512, 256), "conv": (32, 64)}  # each network's --hidden-dims


@dataclass
class Outcome:
    network: str
    budget: str  # "equal epochs" or "equal time"
    seed: int
    epochs: int
    seconds: float  # training only (steps and the per-epoch validation)
    epoch_seconds: float  # the median epoch (steps and validation): the steady state
    parameters: int
    elbo: float
    elbo_se: float
    iwae: float
    iwae_se: float


def train(data: Dataset, network: str, seed: int, epochs: int | None, seconds: float | None):
    """A VAE trained for ``epochs``, or for whole epochs until ``seconds`` have passed."""
    pyro.set_rng_seed(seed)
    vae = VAE(
        data.image_shape,
        LATENT_DIM,
        hidden_dims=WIDTHS[network],
        network=network,
        likelihood="bernoulli",
    )
    trainer = Trainer(vae, TrainConfig(batch_size=BATCH_SIZE, seed=seed))
    return vae, *train_for(trainer, data, epochs, seconds)


def score(vae: VAE, data: Dataset, seed: int, samples: int) -> tuple[float, float, float, float]:
    """The test ELBO and IWAE bound, both from the same K samples of z per image."""
    bounds = held_out_bounds(vae, data, seed, samples)
    elbo, iwae = bounds["elbo_analytic_kl"], bounds["iwae"]
    return elbo.nats, elbo.standard_error, iwae.nats, iwae.standard_error


def run(data: Dataset, seeds: list[int], epochs: int, samples: int) -> list[Outcome]:
    outcomes = []
    for seed in seeds:
        runs = {}
        runs["conv", "reference"] = train(data, "conv", seed, epochs, None)
        conv_seconds = runs["conv", "reference"][2]
        runs["mlp", "equal epochs"] = train(data, "mlp", seed, epochs, None)
        runs["mlp", "equal time"] = train(data, "mlp", seed, None, conv_seconds)
        for (network, budget), (vae, done, seconds, per_epoch) in runs.items():
            parameters = sum(p.numel() for p in vae.parameters())
            scores = score(vae, data, seed, samples)
            outcomes.append(
                Outcome(network, budget, seed, done, seconds, per_epoch, parameters, *scores)
            )
    return outcomes


def report(outcomes: list[Outcome], data: Dataset, seeds: list[int], line: str) -> str:
    lines = [
        "# MLP against conv: held-out ELBO and IWAE bound at equal epochs and equal time",
        "",
        line,
        "",
        f"MNIST ({len(data.train)} / {len(data.val)} / {len(data.test)} images, statically "
        f"binarized), Bernoulli likelihood, latent dimension {LATENT_DIM}, Trace_ELBO, Adam 1e-3, "
        f"batch {BATCH_SIZE}; mlp {'-'.join(map(str, WIDTHS['mlp']))} units, conv "
        f"{'-'.join(map(str, WIDTHS['conv']))} channels (two stride-2 stages, 28×28 → 7×7). "
        f"Test ELBO (closed-form KL) and IWAE bound from the same K = {IWAE_SAMPLES:,} samples "
        "of z per image; nats per image (higher is better), ± its standard error over "
        f"the {len(data.test)} test images. Seeds {', '.join(map(str, seeds))}. The conv "
        "trains first (the reference for both budgets); the MLP then trains the same epochs, and "
        "again, from the same seed, whole epochs until it has used the conv's seconds.",
        "",
        "| network | budget | epochs | seconds | s/epoch (median) | parameters | test ELBO "
        "| IWAE |",
        "|---|---|---|---|---|---|---|---|",
    ]
    groups: dict[tuple[str, str], list[Outcome]] = {}
    for o in outcomes:
        groups.setdefault((o.network, o.budget), []).append(o)
        lines.append(
            f"| {o.network} (seed {o.seed}) | {o.budget} | {o.epochs} | {o.seconds:.0f} "
            f"| {o.epoch_seconds:.2f} | {o.parameters:,} | {o.elbo:.2f} ± {o.elbo_se:.2f} "
            f"| {o.iwae:.2f} ± {o.iwae_se:.2f} |"
        )
    lines += [
        "",
        "Mean over seeds (± standard deviation over seeds):",
        "",
        "| network | budget | epochs | s/epoch (median) | test ELBO | IWAE |",
        "|---|---|---|---|---|---|",
    ]
    for (network, budget), group in groups.items():
        lines.append(
            f"| {network} | {budget} | {statistics.fmean(o.epochs for o in group):.0f} "
            f"| {statistics.fmean(o.epoch_seconds for o in group):.2f} "
            f"| {mean_and_spread([o.elbo for o in group])} "
            f"| {mean_and_spread([o.iwae for o in group])} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> Path:
    setup = comparison(__doc__.split("\n")[0], RESULTS / "networks.md", argv)
    outcomes = run(setup.data, setup.seeds, setup.epochs, setup.samples)
    setup.out.parent.mkdir(parents=True, exist_ok=True)
    line = provenance(Path(__file__).name, argv)
    setup.out.write_text(report(outcomes, setup.data, setup.seeds, line))
    return setup.out


if __name__ == "__main__":
    path = main()
    print(path.read_text())
    print(f"Written to {path}")
