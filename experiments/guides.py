"""Guide families against each other: diagonal, full-covariance and IAF posteriors (K = 1, 2, 4
flows), at equal epochs and at equal wall-clock time, with the inference gap each one leaves.

Every model trains on the MNIST split on disk (the 10,000 test images, split 8,000 / 1,000 /
1,000 with a fixed seed), statically binarized, Bernoulli likelihood, MLP 512-256, latent
dimension 16, Trace_ELBO, Adam 1e-3, batch 128: the networks experiment's MLP, with only the
guide family changed. "Equal epochs" trains every guide for the same passes over the data;
"equal time" gives every guide the seconds that the slowest (IAF, K = 4) took for those epochs
(measured in the same run, per seed). Each model is scored on the 1,000 test images with
K = 1,000 samples of z from its own guide: the ELBO (the mean of log w, w = p(x, z)/q(z|x)), the
IWAE bound log mean w, and their difference, a lower bound on the inference gap
log p(x) − ELBO of Cremer, Li & Duvenaud (2018).

    python experiments/guides.py              # ~13 minutes on 2 CPU cores
    python experiments/guides.py --quick      # seconds, for the test suite
"""

import statistics
from dataclasses import dataclass
from pathlib import Path

import pyro
from common import (
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
WIDTHS = (512, 256)
# name -> (guide, guide options); the last is the slowest, the reference of "equal time"
CONTESTANTS: dict[str, tuple[str, dict]] = {
    "diagonal": ("diagonal", {}),
    "full": ("full", {}),
    "iaf K=1": ("iaf", {"flows": 1}),
    "iaf K=2": ("iaf", {"flows": 2}),
    "iaf K=4": ("iaf", {"flows": 4}),
}
REFERENCE = "iaf K=4"


@dataclass
class Outcome:
    guide: str
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

    @property
    def gap(self) -> float:
        return self.iwae - self.elbo


def train(data: Dataset, name: str, seed: int, epochs: int | None, seconds: float | None):
    pyro.set_rng_seed(seed)
    guide, options = CONTESTANTS[name]
    vae = VAE(
        data.image_shape,
        LATENT_DIM,
        hidden_dims=WIDTHS,
        likelihood="bernoulli",
        guide=guide,
        guide_options=options,
    )
    trainer = Trainer(vae, TrainConfig(batch_size=BATCH_SIZE, seed=seed))
    return vae, *train_for(trainer, data, epochs, seconds)


def run(data: Dataset, seeds: list[int], epochs: int, samples: int) -> list[Outcome]:
    outcomes = []
    for seed in seeds:
        runs = {(REFERENCE, "equal epochs"): train(data, REFERENCE, seed, epochs, None)}
        budget = runs[REFERENCE, "equal epochs"][2]
        for name in CONTESTANTS:
            if name != REFERENCE:
                runs[name, "equal epochs"] = train(data, name, seed, epochs, None)
                runs[name, "equal time"] = train(data, name, seed, None, budget)
        for (name, kind), (vae, done, seconds, per_epoch) in runs.items():
            bounds = held_out_bounds(vae, data, seed, samples)
            elbo, iwae = bounds["elbo_mc_kl"], bounds["iwae"]
            outcomes.append(
                Outcome(
                    name,
                    kind,
                    seed,
                    done,
                    seconds,
                    per_epoch,
                    sum(p.numel() for p in vae.parameters()),
                    elbo.nats,
                    elbo.standard_error,
                    iwae.nats,
                    iwae.standard_error,
                )
            )
    return outcomes


def report(
    outcomes: list[Outcome], data: Dataset, seeds: list[int], samples: int, line: str
) -> str:
    lines = [
        "# Guide families: held-out ELBO, IWAE bound and inference gap at equal epochs and time",
        "",
        line,
        "",
        f"MNIST ({len(data.train)} / {len(data.val)} / {len(data.test)} images, statically "
        f"binarized), Bernoulli likelihood, MLP {'-'.join(map(str, WIDTHS))}, latent dimension "
        f"{LATENT_DIM}, Trace_ELBO, Adam 1e-3, batch {BATCH_SIZE}. Test ELBO (mean of log w) and "
        f"IWAE bound (log mean w) from the same K = {samples:,} samples of z per "
        "image, drawn from each model's own guide; nats per image (higher is better), ± its "
        f"standard error over the {len(data.test)} test images; gap = IWAE − ELBO. Seeds "
        f"{', '.join(map(str, seeds))}. {REFERENCE} trains first, its seconds the budget of "
        "every other guide's equal-time run (whole epochs until that time has passed).",
        "",
        "| guide | budget | epochs | seconds | s/epoch (median) | parameters | test ELBO "
        "| IWAE | gap |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    groups: dict[tuple[str, str], list[Outcome]] = {}
    for o in sorted(outcomes, key=lambda o: (o.seed, list(CONTESTANTS).index(o.guide))):
        groups.setdefault((o.guide, o.budget), []).append(o)
        lines.append(
            f"| {o.guide} (seed {o.seed}) | {o.budget} | {o.epochs} | {o.seconds:.0f} "
            f"| {o.epoch_seconds:.2f} | {o.parameters:,} | {o.elbo:.2f} ± {o.elbo_se:.2f} "
            f"| {o.iwae:.2f} ± {o.iwae_se:.2f} | {o.gap:.2f} |"
        )
    lines += [
        "",
        "Mean over seeds (± standard deviation over seeds):",
        "",
        "| guide | budget | epochs | s/epoch (median) | test ELBO | IWAE | gap |",
        "|---|---|---|---|---|---|---|",
    ]
    for budget in ("equal epochs", "equal time"):
        for name in CONTESTANTS:
            group = groups.get((name, budget)) or groups.get((name, "equal epochs"), [])
            if not group or (budget == "equal time" and name == REFERENCE):
                continue
            lines.append(
                f"| {name} | {budget} | {statistics.fmean(o.epochs for o in group):.0f} "
                f"| {statistics.fmean(o.epoch_seconds for o in group):.2f} "
                f"| {mean_and_spread([o.elbo for o in group])} "
                f"| {mean_and_spread([o.iwae for o in group])} "
                f"| {mean_and_spread([o.gap for o in group])} |"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> Path:
    setup = comparison(__doc__.split("\n")[0], RESULTS / "guides.md", argv)
    outcomes = run(setup.data, setup.seeds, setup.epochs, setup.samples)
    setup.out.parent.mkdir(parents=True, exist_ok=True)
    line = provenance(Path(__file__).name, argv)
    setup.out.write_text(report(outcomes, setup.data, setup.seeds, setup.samples, line))
    return setup.out


if __name__ == "__main__":
    path = main()
    print(path.read_text())
    print(f"Written to {path}")
