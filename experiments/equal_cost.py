"""An equal-cost contest between VAEs that differ in one part (the guide family, the networks):
every contestant at equal epochs, and trained on to the slowest one's seconds; scored on the
same test images, paired image by image, with the inference gap, the train–validation gap and
a per-epoch validation curve. ``guides.py`` and ``networks.py`` are contests.

Seconds are counted in median epochs (steps and the epoch's validation), the steady state, so
that a passing load on the machine moves no budget. The slowest is measured, per seed, not
assumed. The learning rate is constant and each run draws on random streams of its own, so an
equal-time run is the equal-epochs run trained on: the same as a longer run (with its per-epoch
curve), at half the cost.
"""

import statistics
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace

import pyro
import torch
from common import Comparison, every_nth, mean_and_spread, paired, training_images

from pyro_vae import VAE, TrainConfig, Trainer
from pyro_vae.data.datasets import Dataset
from pyro_vae.inference.evaluate import evaluate_bounds, image_bounds

SCORED_IMAGES = 1000  # test images, and training images, scored with K samples of z
CURVE_IMAGES, CURVE_SAMPLES = 1000, 20  # the per-epoch validation ELBO
GAP_SAMPLES = 100  # samples of z per image in the train–validation ELBO gap


@dataclass(frozen=True)
class Contest:
    """What is pitted against what: ``kind`` names the part that differs (a report's first
    column), ``contestants`` build each VAE for the data (two at least), ``base`` is what the
    paired differences are taken from; all train with Adam at ``lr``, constant."""

    kind: str
    contestants: dict[str, Callable[[Dataset], VAE]]
    base: str
    batch_size: int
    lr: float = 1e-3

    def __post_init__(self) -> None:
        if len(self.contestants) < 2 or self.base not in self.contestants:
            raise ValueError(f"a contest needs two {self.kind}s or more, {self.base} among them")


@dataclass
class Outcome:
    name: str
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
    curve_images: int = CURVE_IMAGES  # validation images in each point of the curve
    curve_samples: int = CURVE_SAMPLES  # and samples of z per image

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
    """One contestant's model and trainer, trained on epoch by epoch and scored when asked."""

    def __init__(self, contest: Contest, data: Dataset, name: str, seed: int, curve_samples: int):
        pyro.set_rng_seed(seed)
        self.vae = contest.contestants[name](data)
        # Replayed, never compiled: whether Inductor pays is decided per graph from a timing,
        # which could go one way for one contestant and the other for the next; replayed
        # alike, their seconds compare their mathematics.
        config = TrainConfig(batch_size=contest.batch_size, lr=contest.lr, seed=seed, compile=False)
        self.trainer = Trainer(self.vae, config)
        self.data, self.name, self.seed = data, name, seed
        self.curve: list[float] = []
        self.curve_x = data.val.x[:CURVE_IMAGES]
        self.curve_samples = curve_samples
        self._stream = pyro.util.get_rng_state()  # its own: others train between its epochs

    @property
    def seconds(self) -> float:
        return sum(self.trainer.epoch_seconds) + sum(self.trainer.validation_seconds)

    @property
    def median_epoch(self) -> float:
        """The median epoch's seconds (its steps and validation): the steady state."""
        pairs = zip(self.trainer.epoch_seconds, self.trainer.validation_seconds, strict=True)
        return statistics.median(steps + validation for steps, validation in pairs)

    def epoch(self) -> None:
        """One epoch and its point of the curve, drawing on this run's own random streams, so
        that training on later, after others have trained, is the same as not stopping."""
        pyro.util.set_rng_state(self._stream)
        self.trainer.train_epoch(self.data)
        bounds = evaluate_bounds(self.vae, self.curve_x, num_samples=self.curve_samples)
        self.curve.append(bounds["elbo_mc_kl"].nats)
        self._stream = pyro.util.get_rng_state()

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
            len(self.curve_x),
            self.curve_samples,
        )


def run_seed(
    contest: Contest, data: Dataset, seed: int, epochs: int, samples: int, curve_samples: int
) -> Iterator[Outcome]:
    """Every contestant at equal epochs; then the faster ones trained on to the slowest one's
    seconds (the slowest's equal-time run is its equal-epochs one)."""
    test_x = every_nth(data.test.x, SCORED_IMAGES)
    count = min(SCORED_IMAGES, len(data.val))
    fit_x = torch.cat([training_images(data, count, seed), every_nth(data.val.x, count)])
    runs, at_equal_epochs = [], []
    for name in contest.contestants:
        contestant = Run(contest, data, name, seed, curve_samples)
        for _ in range(epochs):
            contestant.epoch()
        runs.append(contestant)
        at_equal_epochs.append(contestant.score("equal epochs", test_x, fit_x, samples))
        yield at_equal_epochs[-1]
    budget = max(contestant.median_epoch for contestant in runs) * epochs
    for contestant, outcome in zip(runs, at_equal_epochs, strict=True):
        target = round(budget / contestant.median_epoch)
        if target <= epochs:  # the slowest (or as slow, to the nearest epoch): no more epochs
            yield replace(outcome, budget="equal time")
            continue
        while len(contestant.curve) < target:
            contestant.epoch()
        yield contestant.score("equal time", test_x, fit_x, samples)


def run(contest: Contest, setup: Comparison, write: Callable[[list[Outcome]], None]) -> None:
    """Every seed's contest; ``write`` the report after every run, so that an interrupted
    report keeps what it measured."""
    curve_samples = 2 if setup.samples < 100 else CURVE_SAMPLES
    outcomes: list[Outcome] = []
    for seed in setup.seeds:
        for outcome in run_seed(
            contest, setup.data, seed, setup.epochs, setup.samples, curve_samples
        ):
            outcomes.append(outcome)
            write(outcomes)


def budgeting(kind: str) -> str:
    """The sentence that says how the equal-time budget was set."""
    return (
        f"Every {kind} trains the same epochs first; the slowest one's seconds (its median epoch "
        "times the epochs: the steady state), per seed, are the equal-time budget, and each "
        "faster one trains on from its equal-epochs state to the whole number of its own median "
        "epochs nearest that budget (the slowest one's equal-time run is its equal-epochs run)."
    )


def scoring(data: Dataset, samples: int) -> str:
    """The sentence that says how every model was scored."""
    return (
        "Scores: the ELBO (mean of log w) and the IWAE "
        f"bound (log mean w) from the same K = {samples:,} samples of z per image, drawn from "
        f"each model's own guide, on {min(SCORED_IMAGES, len(data.test)):,} test images spread "
        "over the test split (the same for every model); nats per image, higher is better; "
        "gap = IWAE − ELBO, a lower bound on the inference gap; train − validation: the ELBO "
        f"(K = {min(samples, GAP_SAMPLES)}) of {min(SCORED_IMAGES, len(data.val)):,} training "
        "images (binarized once) less that of as many validation images, the model's "
        "overfitting."
    )


def tables(contest: Contest, outcomes: list[Outcome]) -> list[str]:
    """The report's tables: means over seeds, paired differences from the base, the validation
    curve, and every run."""
    seeds = sorted({o.seed for o in outcomes})
    order = {name: i for i, name in enumerate(contest.contestants)}
    lines = [
        "Mean ± standard deviation over seeds:",
        "",
        f"| {contest.kind} | budget | epochs | s/epoch (median) | test ELBO | test IWAE | gap "
        "| train ELBO | train − validation ELBO |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    groups: dict[tuple[str, str], list[Outcome]] = {}
    for o in sorted(outcomes, key=lambda o: (o.seed, order[o.name])):
        groups.setdefault((o.name, o.budget), []).append(o)
    for budget in ("equal epochs", "equal time"):
        for name in contest.contestants:
            group = groups.get((name, budget))
            if not group:
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
    lines += ["", *paired_table(contest, outcomes, seeds, "equal epochs")]
    if any(o.budget == "equal time" for o in outcomes):
        lines += ["", *paired_table(contest, outcomes, seeds, "equal time")]
    lines += ["", *curve_table(contest, groups), "", *per_seed_table(outcomes, order)]
    return lines


def paired_table(
    contest: Contest, outcomes: list[Outcome], seeds: list[int], budget: str
) -> list[str]:
    """Each contestant less the base, image by image, seed by seed, at one budget."""
    lines = [
        f"Each {contest.kind} less {contest.base}, paired image by image on the same test "
        "images, seed by seed (mean over the images ± its standard error; positive: its bound "
        f"is higher, i.e. better), at {budget}:",
        "",
        f"| {contest.kind} | "
        + " | ".join(f"ELBO, seed {s} | IWAE, seed {s}" for s in seeds)
        + " |",
        "|---|" + "---:|---:|" * len(seeds),
    ]
    runs = {(o.name, o.budget, o.seed): o for o in outcomes}
    for name in contest.contestants:
        if name == contest.base:
            continue
        cells = []
        for seed in seeds:
            base, this = runs.get((contest.base, budget, seed)), runs.get((name, budget, seed))
            if base is None or this is None:
                cells += ["—", "—"]
                continue
            cells += [
                paired(this.test["elbo_mc_kl"], base.test["elbo_mc_kl"]),
                paired(this.test["iwae"], base.test["iwae"]),
            ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def curve_table(contest: Contest, groups: dict[tuple[str, str], list[Outcome]]) -> list[str]:
    """The validation ELBO after each epoch of the equal-epochs runs, mean over seeds."""
    names = [n for n in contest.contestants if (n, "equal epochs") in groups]
    runs = {n: groups[n, "equal epochs"] for n in names}
    epochs = min(len(o.curve) for group in runs.values() for o in group)
    first = next(iter(runs.values()))[0]
    lines = [
        f"Validation ELBO after each epoch (the first {first.curve_images:,} validation "
        f"images, K = {first.curve_samples} samples of z; mean over seeds; nats, higher is "
        "better):",
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
        "| run | budget | epochs | seconds | s/epoch (median) | parameters | test ELBO "
        "| IWAE | gap |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for o in sorted(outcomes, key=lambda o: (o.seed, order[o.name], o.budget)):
        n = o.test["iwae"].numel() ** 0.5
        elbo_se, iwae_se = o.test["elbo_mc_kl"].std() / n, o.test["iwae"].std() / n
        lines.append(
            f"| {o.name} (seed {o.seed}) | {o.budget} | {o.epochs} | {o.seconds:.0f} "
            f"| {o.epoch_seconds:.2f} | {o.parameters:,} | {o.elbo:.2f} ± {elbo_se:.2f} "
            f"| {o.iwae:.2f} ± {iwae_se:.2f} | {o.gap:.2f} |"
        )
    return lines
