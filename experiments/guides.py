"""Guide families against each other: diagonal, full-covariance and IAF posteriors (K = 1, 2, 4
flows), at equal epochs and at equal wall-clock time, with the inference gap each one leaves.

Every model trains on MNIST's papers' split (the first 50,000 training images for training, the
last 10,000 for validation, the 10,000 test images for testing), dynamically binarized, with a
Bernoulli likelihood, MLP 512-256, latent dimension 16, Trace_ELBO, Adam 1e-3, batch 128: the
networks experiment's MLP, with only the guide family changed. "Equal epochs" trains every guide
for the same passes over the data; "equal time" gives every guide the training seconds that the
slowest (IAF, K = 4) took for those epochs, measured in the same run, per seed: the whole number
of its own epochs nearest to them. Seconds are counted in median epochs (steps and the epoch's
validation), the steady state, so that a passing load on the machine moves no budget. The
learning rate is constant, so a guide's equal-time run is its equal-epochs run trained on: the
same as a longer run, at half the cost.

Scores, from samples of z drawn from the model's own guide: on 1,000 test images (every tenth;
the same for every model, so that differences are paired image by image), with K = 1,000, the
ELBO (the mean of log w, w = p(x, z)/q(z|x)), the IWAE bound log mean w, and their difference, a
lower bound on the inference gap log p(x) − ELBO of Cremer, Li & Duvenaud (2018); with K = 100,
the ELBO on 1,000 training images (binarized once) less that on 1,000 validation images, the
overfitting of the model and its encoder (the validation images, not the test ones: they are the
training file's last 10,000, from the same writers, where the test digits are easier); and
after every epoch the ELBO on 1,000 validation images (K = 20), the curve of how far from
convergence the budget stopped.

    python experiments/guides.py              # ~60 minutes on 2 CPU cores
    python experiments/guides.py --quick      # seconds, for the test suite
"""

import statistics
from dataclasses import dataclass, field, replace
from pathlib import Path

import pyro
import torch
from common import (
    comparison,
    every_nth,
    mean_and_spread,
    paired,
    provenance,
    training_images,
)

from pyro_vae import VAE, TrainConfig, Trainer
from pyro_vae.data.datasets import Dataset
from pyro_vae.inference.evaluate import evaluate_bounds, image_bounds

RESULTS = Path(__file__).parent / "results"
LATENT_DIM = 16
BATCH_SIZE = 128
WIDTHS = (512, 256)
EPOCHS = 30
SCORED_IMAGES = 1000  # test images, and training images, scored with K samples of z
CURVE_IMAGES, CURVE_SAMPLES = 1000, 20  # the per-epoch validation ELBO
GAP_SAMPLES = 100  # samples of z per image in the train–validation ELBO gap
# name -> (guide, guide options); the last is the slowest, the reference of "equal time"
CONTESTANTS: dict[str, tuple[str, dict]] = {
    "diagonal": ("diagonal", {}),
    "full": ("full", {}),
    "iaf K=1": ("iaf", {"flows": 1}),
    "iaf K=2": ("iaf", {"flows": 2}),
    "iaf K=4": ("iaf", {"flows": 4}),
}
REFERENCE = "iaf K=4"
BASE = "diagonal"  # what the paired differences are taken from


@dataclass
class Outcome:
    guide: str
    budget: str  # "equal epochs" or "equal time"
    seed: int
    epochs: int
    seconds: float  # training only (steps and the per-epoch validation)
    epoch_seconds: float  # the median epoch (steps and validation): the steady state
    parameters: int
    test: dict[str, torch.Tensor]  # per test image: "elbo_mc_kl" and "iwae"
    train_elbo: float  # training images
    val_elbo: float  # validation images
    curve: list[float] = field(default_factory=list)  # validation ELBO after each epoch

    @property
    def elbo(self) -> float:
        return self.test["elbo_mc_kl"].mean().item()

    @property
    def iwae(self) -> float:
        return self.test["iwae"].mean().item()

    @property
    def gap(self) -> float:
        return self.iwae - self.elbo


class Run:
    """One guide's model and trainer, trained on epoch by epoch and scored when asked."""

    def __init__(self, data: Dataset, name: str, seed: int, epochs: int, curve_samples: int):
        pyro.set_rng_seed(seed)
        guide, options = CONTESTANTS[name]
        self.vae = VAE(
            data.image_shape,
            LATENT_DIM,
            hidden_dims=WIDTHS,
            likelihood="bernoulli",
            guide=guide,
            guide_options=options,
        )
        # Replayed, never compiled: whether Inductor pays is decided per graph from a timing,
        # which could go one way for one guide and the other for the next; replayed alike, the
        # guides' seconds compare their mathematics.
        config = TrainConfig(batch_size=BATCH_SIZE, epochs=epochs, seed=seed, compile=False)
        self.trainer = Trainer(self.vae, config)
        self.data, self.name, self.seed = data, name, seed
        self.curve: list[float] = []
        self.curve_x = data.val.x[:CURVE_IMAGES]
        self.curve_samples = curve_samples

    @property
    def seconds(self) -> float:
        return sum(self.trainer.epoch_seconds) + sum(self.trainer.validation_seconds)

    @property
    def median_epoch(self) -> float:
        """The median epoch's seconds (its steps and validation): the steady state."""
        pairs = zip(self.trainer.epoch_seconds, self.trainer.validation_seconds, strict=True)
        return statistics.median(steps + validation for steps, validation in pairs)

    def epoch(self) -> None:
        self.trainer.train_epoch(self.data)
        bounds = evaluate_bounds(self.vae, self.curve_x, num_samples=self.curve_samples)
        self.curve.append(bounds["elbo_mc_kl"].nats)

    def score(self, budget: str, test_x: torch.Tensor, fit_x: torch.Tensor, samples: int):
        """The test bounds, and the ELBO of the training and validation images ``fit_x``
        (K = GAP_SAMPLES: the ELBO's mean does not depend on K)."""
        pyro.set_rng_seed(self.seed)
        test = image_bounds(self.vae, test_x, num_samples=samples)
        fit = image_bounds(self.vae, fit_x, num_samples=min(samples, GAP_SAMPLES))["elbo_mc_kl"]
        train, val = fit.chunk(2)
        return Outcome(
            self.name,
            budget,
            self.seed,
            len(self.curve),
            self.seconds,
            self.median_epoch,
            sum(p.numel() for p in self.vae.parameters()),
            test,
            train.mean().item(),
            val.mean().item(),
            list(self.curve),
        )


def run_seed(data: Dataset, seed: int, epochs: int, samples: int, curve_samples: int):
    """Every guide at equal epochs, and the others on to the reference's seconds."""
    test_x = every_nth(data.test.x, SCORED_IMAGES)
    count = min(SCORED_IMAGES, len(data.val))
    fit_x = torch.cat([training_images(data, count, seed), every_nth(data.val.x, count)])
    reference = Run(data, REFERENCE, seed, epochs, curve_samples)
    for _ in range(epochs):
        reference.epoch()
    budget = reference.median_epoch * epochs
    yield reference.score("equal epochs", test_x, fit_x, samples)
    for name in CONTESTANTS:
        if name == REFERENCE:
            continue
        contestant = Run(data, name, seed, epochs, curve_samples)
        for _ in range(epochs):
            contestant.epoch()
        outcome = contestant.score("equal epochs", test_x, fit_x, samples)
        yield outcome
        target = round(budget / contestant.median_epoch)
        if target <= epochs:  # no faster than the reference: no more epochs
            yield replace(outcome, budget="equal time")
            continue
        while len(contestant.curve) < target:
            contestant.epoch()
        yield contestant.score("equal time", test_x, fit_x, samples)


def report(outcomes: list[Outcome], setup, samples: int, line: str) -> str:
    data = setup.data
    seeds = sorted({o.seed for o in outcomes})
    binarized = "dynamically" if data.binarize == "dynamic" else "statically"
    order = {name: i for i, name in enumerate(CONTESTANTS)}
    lines = [
        "# Guide families: held-out ELBO, IWAE bound and inference gap at equal epochs and time",
        "",
        line,
        "",
        f"MNIST ({len(data.train):,} / {len(data.val):,} / {len(data.test):,} images, "
        f"{binarized} binarized), Bernoulli likelihood, MLP {'-'.join(map(str, WIDTHS))}, "
        f"latent dimension {LATENT_DIM}, Trace_ELBO, Adam 1e-3 (constant), batch {BATCH_SIZE}, "
        "every step replayed from its recording (none compiled); "
        f"seeds {', '.join(map(str, seeds))}. {REFERENCE} trains first, its seconds (its median "
        "epoch times the epochs: the steady state) the budget of every other guide's equal-time "
        "run: trained on from its equal-epochs state to the whole number of its own median "
        "epochs nearest that budget. Scores: the ELBO (mean of log w) and the IWAE "
        f"bound (log mean w) from the same K = {samples:,} samples of z per image, drawn from "
        f"each model's own guide, on {min(SCORED_IMAGES, len(data.test)):,} test images spread "
        "over the test split (the same for every model); nats per image, higher is better; "
        "gap = IWAE − ELBO, a lower bound on the inference gap; train − validation: the ELBO "
        f"(K = {min(samples, GAP_SAMPLES)}) of {min(SCORED_IMAGES, len(data.val)):,} training "
        "images (binarized once) less that of as many validation images, the model's "
        "overfitting.",
        "",
        "Mean ± standard deviation over seeds:",
        "",
        "| guide | budget | epochs | s/epoch (median) | test ELBO | test IWAE | gap "
        "| train ELBO | train − validation ELBO |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    groups: dict[tuple[str, str], list[Outcome]] = {}
    for o in sorted(outcomes, key=lambda o: (o.seed, order[o.guide])):
        groups.setdefault((o.guide, o.budget), []).append(o)
    for budget in ("equal epochs", "equal time"):
        for name in CONTESTANTS:
            group = groups.get((name, budget))
            if not group or (budget == "equal time" and name == REFERENCE):
                continue
            lines.append(
                f"| {name} | {budget} | {statistics.fmean(o.epochs for o in group):.0f} "
                f"| {statistics.fmean(o.epoch_seconds for o in group):.2f} "
                f"| {mean_and_spread([o.elbo for o in group])} "
                f"| {mean_and_spread([o.iwae for o in group])} "
                f"| {mean_and_spread([o.gap for o in group])} "
                f"| {mean_and_spread([o.train_elbo for o in group])} "
                f"| {mean_and_spread([o.train_elbo - o.val_elbo for o in group])} |"
            )
    lines += [
        "",
        f"Each guide less the {BASE} guide, paired image by image on the same test images, seed "
        "by seed (mean over the images ± its standard error; positive: the richer guide's bound "
        "is higher, i.e. better), at equal epochs:",
        "",
        "| guide | " + " | ".join(f"ELBO, seed {s} | IWAE, seed {s}" for s in seeds) + " |",
        "|---|" + "---:|---:|" * len(seeds),
    ]
    at_equal_epochs = {(o.guide, o.seed): o for o in outcomes if o.budget == "equal epochs"}
    for name in CONTESTANTS:
        if name == BASE:
            continue
        cells = []
        for seed in seeds:
            base, this = (at_equal_epochs.get((guide, seed)) for guide in (BASE, name))
            if base is None or this is None:
                cells += ["—", "—"]
                continue
            cells += [
                paired(this.test["elbo_mc_kl"], base.test["elbo_mc_kl"]),
                paired(this.test["iwae"], base.test["iwae"]),
            ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", *curve_table(groups), "", *per_seed_table(outcomes, order)]
    return "\n".join(lines) + "\n"


def curve_table(groups: dict[tuple[str, str], list[Outcome]]) -> list[str]:
    """The validation ELBO after each epoch of the equal-epochs runs, mean over seeds."""
    names = [n for n in CONTESTANTS if (n, "equal epochs") in groups]
    runs = {n: groups[n, "equal epochs"] for n in names}
    epochs = min(len(o.curve) for group in runs.values() for o in group)
    lines = [
        f"Validation ELBO after each epoch (the first {CURVE_IMAGES:,} validation images, "
        f"K = {CURVE_SAMPLES} samples of z; mean over seeds; nats, higher is better):",
        "",
        "| epoch | " + " | ".join(names) + " |",
        "|---:|" + "---:|" * len(names),
    ]
    for e in range(epochs):
        cells = [f"{statistics.fmean(o.curve[e] for o in runs[n]):.2f}" for n in names]
        lines.append(f"| {e + 1} | " + " | ".join(cells) + " |")
    return lines


def per_seed_table(outcomes: list[Outcome], order: dict[str, int]) -> list[str]:
    lines = [
        "Every run (± the standard error over the scored images):",
        "",
        "| guide | budget | epochs | seconds | s/epoch (median) | parameters | test ELBO "
        "| IWAE | gap |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for o in sorted(outcomes, key=lambda o: (o.seed, order[o.guide], o.budget)):
        n = o.test["iwae"].numel() ** 0.5
        elbo_se, iwae_se = o.test["elbo_mc_kl"].std() / n, o.test["iwae"].std() / n
        lines.append(
            f"| {o.guide} (seed {o.seed}) | {o.budget} | {o.epochs} | {o.seconds:.0f} "
            f"| {o.epoch_seconds:.2f} | {o.parameters:,} | {o.elbo:.2f} ± {elbo_se:.2f} "
            f"| {o.iwae:.2f} ± {iwae_se:.2f} | {o.gap:.2f} |"
        )
    return lines


def main(argv: list[str] | None = None) -> Path:
    setup = comparison(
        __doc__.split("\n")[0], RESULTS / "guides.md", argv, split="paper", epochs=EPOCHS
    )
    curve_samples = 2 if setup.samples < 100 else CURVE_SAMPLES
    line = provenance(Path(__file__).name, argv)
    setup.out.parent.mkdir(parents=True, exist_ok=True)
    outcomes: list[Outcome] = []
    for seed in setup.seeds:
        for outcome in run_seed(setup.data, seed, setup.epochs, setup.samples, curve_samples):
            outcomes.append(outcome)
            # written after every run, so that an interrupted report keeps what it measured
            setup.out.write_text(report(outcomes, setup, setup.samples, line))
    return setup.out


if __name__ == "__main__":
    path = main()
    print(path.read_text())
    print(f"Written to {path}")
