"""VAE and IWAE at the papers' scale: Burda, Grosse & Salakhutdinov (2016), Table 1, one
stochastic layer.

Their setting, as far as it fits the budget, on MNIST's papers' split of Kingma et al. (2014: the
first 50,000 training images for training, the last 10,000 for validation, the 10,000 test
images for testing; Burda et al. trained on 59,600 and kept 400 for validation),
dynamically binarized; 784-200-200-50 with tanh, a Bernoulli likelihood, the standard prior and
the diagonal Gaussian guide; the VAE trained on the ELBO with k = 1 sample of z, IWAE on the
importance-weighted bound with k = 5 and k = 50; and the test NLL estimated, as theirs is, by the
IWAE bound with K = 5,000 samples of z per image. What differs is the budget: they trained for
3,280 epochs (3^i epochs at a learning rate of 10^-3 · 10^(-i/7), i = 0..7, batch 20); here every
objective gets the same ``--epochs`` at batch 100, Adam from 10^-3 down to 10^-4 on a cosine.
After every epoch the validation ELBO and IWAE bound (K = 100, the first 1,000 validation
images) give the curve of how far from convergence the budget stopped.

    python experiments/importance_weighted.py           # 3 seeds: 41 minutes on 2 CPU cores
    python experiments/importance_weighted.py --quick   # seconds, for the test suite
"""

import argparse
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import pyro
import torch
from common import (
    SHARED_DATA,
    every_nth,
    mean_and_spread,
    output_path,
    paired_table,
    provenance,
)

from pyro_vae import VAE, DataConfig, TrainConfig, Trainer, load_dataset
from pyro_vae.data.datasets import Dataset
from pyro_vae.inference.evaluate import evaluate_bounds, image_bounds

RESULTS = Path(__file__).parent / "results"
LATENT_DIM = 50
WIDTHS = (200, 200)
ACTIVATION = "tanh"
BATCH_SIZE = 100
# name -> (training objective, k samples of z per image); the paper's test NLL (nats)
CONTESTANTS: dict[str, tuple[str, int]] = {
    "VAE, k = 1": ("mc", 1),
    "IWAE, k = 5": ("iwae", 5),
    "IWAE, k = 50": ("iwae", 50),
}
PAPER = {"VAE, k = 1": 86.76, "IWAE, k = 5": 85.54, "IWAE, k = 50": 84.78}
# Pythae's benchmark (Chadebec et al., 2022), its own architectures, binarized MNIST
PYTHAE = {"VAE, k = 1": 89.78, "IWAE, k = 50": 86.82}
CURVE_IMAGES = 1000  # validation images of the per-epoch curve
CURVE_SAMPLES = 100  # samples of z per image in the curve's IWAE bound
TEST_SAMPLES = 5000  # the paper's K for the test NLL
# K = 5,000 costs about 75 s per 1,000 test images on 2 CPU cores: the NLL is scored on
# TEST_IMAGES of them, the same for every model, so that differences between objectives are
# paired image by image (their standard error is far below the mean's). Every tenth image, not
# the first thousand: MNIST's first 5,000 test digits are the cleaner, easier half.
TEST_IMAGES = 1000
ACTIVE = 1e-2  # Burda et al.'s threshold: unit u is active if Cov_x(E_q[z_u | x]) > 0.01


@dataclass
class Outcome:
    name: str
    seed: int
    epochs: int
    minutes: float  # training, with the per-epoch curve's evaluation
    per_image: torch.Tensor  # −(test IWAE bound, K = TEST_SAMPLES) of each test image
    elbo: float  # test ELBO, from the same samples of z
    active_units: int
    curve: list[tuple[float, float]] = field(default_factory=list)  # (ELBO, IWAE) per epoch

    @property
    def nll(self) -> float:
        return self.per_image.mean().item()

    @property
    def nll_se(self) -> float:  # over the test images
        return (self.per_image.std() / self.per_image.numel() ** 0.5).item()


def active_units(vae: VAE, x: torch.Tensor) -> int:
    """Latent dimensions whose posterior mean varies over the images by more than ``ACTIVE``."""
    with torch.no_grad():
        means = torch.cat([vae.encode(chunk) for chunk in x.split(1000)])
    return int((means.var(dim=0) > ACTIVE).sum())


def train(
    data: Dataset,
    name: str,
    seed: int,
    epochs: int,
    curve_samples: int,
    test_samples: int,
    count: int,
) -> Outcome:
    """One objective trained for ``epochs``, its curve, and its scores on the test images."""
    estimator, k = CONTESTANTS[name]
    pyro.set_rng_seed(seed)
    vae = VAE(
        data.image_shape,
        LATENT_DIM,
        hidden_dims=WIDTHS,
        likelihood="bernoulli",
        activation=ACTIVATION,  # the paper's; pyro-vae's default is ReLU
    )
    config = TrainConfig(
        elbo=estimator,
        num_particles=k,
        batch_size=BATCH_SIZE,
        epochs=epochs,
        lr_schedule="cosine",
        lr_min=1e-4,
        seed=seed,
    )
    trainer = Trainer(vae, config)
    curve_x = data.val.x[:CURVE_IMAGES]
    curve, start = [], time.perf_counter()
    for _ in range(epochs):
        trainer.train_epoch(data)
        bounds = evaluate_bounds(vae, curve_x, num_samples=curve_samples)
        curve.append((bounds["elbo_mc_kl"].nats, bounds["iwae"].nats))
    minutes = (time.perf_counter() - start) / 60
    pyro.set_rng_seed(seed)
    bounds = image_bounds(
        vae, every_nth(data.test.x, count), num_samples=test_samples, max_rows=2**16
    )
    return Outcome(
        name,
        seed,
        epochs,
        minutes,
        -bounds["iwae"],
        bounds["elbo_mc_kl"].mean().item(),
        active_units(vae, data.test.x),
        curve,
    )


def report(outcomes: list[Outcome], data: Dataset, args: argparse.Namespace, line: str) -> str:
    """The markdown report: the table beside the paper's, the paired differences, the curve."""
    names = [n for n in CONTESTANTS if any(o.name == n for o in outcomes)]
    by_name = {n: [o for o in outcomes if o.name == n] for n in names}
    epochs = outcomes[0].epochs
    seeds = ", ".join(str(seed) for seed in sorted({o.seed for o in outcomes}))
    step = max(1, data.test.x.shape[0] // args.test_images)
    spread_over = (
        f"every {step}th: MNIST's first 5,000 test digits are the easier half"
        if step > 1
        else "all of them"
    )
    lines = [
        "# VAE and IWAE on the papers' split (Burda et al., 2016, Table 1)",
        "",
        line,
        "",
        f"Data: {data.train.x.shape[0]:,} training, {data.val.x.shape[0]:,} validation and "
        f"{data.test.x.shape[0]:,} test images, dynamically binarized (the held-out images "
        "binarized once, with a fixed seed). Model: 784-200-200-50, tanh, Bernoulli likelihood, "
        f"standard prior, diagonal Gaussian guide. Training: {epochs} epochs for every "
        f"objective, batch {BATCH_SIZE}, Adam 10^-3 to 10^-4 on a cosine; seeds {seeds}. "
        "Test NLL: −(IWAE bound with K = "
        f"{args.test_samples:,} samples of z per image) on {args.test_images:,} test images "
        f"({spread_over}), the same for every model, mean ± standard deviation over seeds; "
        "its standard error over those images is the largest of the seeds'. The test ELBO "
        "comes from the same images and samples. "
        "Active units (Burda et al.'s count: dimensions whose posterior mean varies over the "
        f"test images by more than {ACTIVE:g}) on all the test images. The paper trained "
        "for 3,280 epochs; Pythae's figures come from its own architectures and budget and "
        "stand as a second anchor only.",
        "",
        "| objective | test NLL (nats, lower is better) | s.e. over images "
        "| test ELBO (higher is better) | active units "
        "| paper's NLL | Pythae's NLL | minutes per run | per seed (NLL) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for name, runs in by_name.items():
        lines.append(
            f"| {name} | {mean_and_spread([o.nll for o in runs])} "
            f"| {max(o.nll_se for o in runs):.2f} "
            f"| {mean_and_spread([o.elbo for o in runs])} "
            f"| {mean_and_spread([float(o.active_units) for o in runs], 1)} | {PAPER[name]:.2f} "
            f"| {PYTHAE.get(name, float('nan')):.2f} "
            f"| {statistics.fmean(o.minutes for o in runs):.1f} "
            f"| {', '.join(f'{o.nll:.2f}' for o in runs)} |"
        )
    lines += ["", *ordering(by_name), "", *curve_table(by_name, args.curve_samples)]
    return "\n".join(lines).replace("| nan |", "| — |") + "\n"


def ordering(by_name: dict[str, list[Outcome]]) -> list[str]:
    """Does ours order the objectives as the paper does (a larger k, a lower NLL)? And each
    one's NLL less the VAE's, image by image on the same test images, seed by seed."""
    means = {n: statistics.fmean(o.nll for o in runs) for n, runs in by_name.items()}
    ours, paper = sorted(means, key=means.get), sorted(means, key=PAPER.get)
    verdict = "the paper's too" if ours == paper else f"the paper's: {' < '.join(paper)}"
    lines = [f"Ordering by test NLL, best first: {' < '.join(ours)} ({verdict})."]
    base = "VAE, k = 1"
    if base not in by_name or len(by_name) < 2:
        return lines
    lines += [
        "",
        "Each objective's test NLL less the VAE's (nats, negative: better than the VAE), "
        "paired image by image for each seed: mean over the images ± its standard error.",
        "",
    ]
    by_seed = {n: {o.seed: o.per_image for o in runs} for n, runs in by_name.items()}
    gains = {n: f"{PAPER[n] - PAPER[base]:+.2f}" for n in by_name}
    return lines + paired_table("objective", by_seed, base, gains)


def curve_table(by_name: dict[str, list[Outcome]], samples: int) -> list[str]:
    """The validation bounds after each epoch, averaged over seeds."""
    names = list(by_name)
    lines = [
        f"Validation bounds after each epoch (the first {CURVE_IMAGES:,} validation images, "
        f"K = {samples} samples of z per image; mean over seeds; nats, higher is "
        "better): ELBO / IWAE bound.",
        "",
        "| epoch | " + " | ".join(names) + " |",
        "|---:|" + "---:|" * len(names),
    ]
    epochs = len(next(iter(by_name.values()))[0].curve)
    for e in range(epochs):
        cells = []
        for runs in by_name.values():
            elbo = statistics.fmean(o.curve[e][0] for o in runs)
            iwae = statistics.fmean(o.curve[e][1] for o in runs)
            cells.append(f"{elbo:.2f} / {iwae:.2f}")
        lines.append(f"| {e + 1} | " + " | ".join(cells) + " |")
    return lines


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", type=Path, default=SHARED_DATA)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument(
        "--objectives", nargs="+", default=list(CONTESTANTS), choices=list(CONTESTANTS)
    )
    parser.add_argument("--test-samples", type=int, default=TEST_SAMPLES)
    parser.add_argument("--test-images", type=int, default=TEST_IMAGES)
    parser.add_argument("--quick", action="store_true", help="the digits, 1 epoch, 1 seed")
    parser.add_argument(
        "--out",
        type=Path,
        help="default: RESULTS / importance_weighted.md (a temporary folder with --quick)",
    )
    args = parser.parse_args(argv)
    args.out = output_path(args.out, args.quick, RESULTS / "importance_weighted.md")
    args.curve_samples = CURVE_SAMPLES
    if args.quick:
        data = load_dataset(DataConfig(binarize="dynamic"))
        args.seeds, args.epochs, args.test_samples, args.curve_samples = [0], 1, 20, 10
        args.test_images = 180
    else:
        config = DataConfig(
            dataset="mnist", data_dir=str(args.data_dir), split="paper", binarize="dynamic"
        )
        data = load_dataset(config)
    outcomes: list[Outcome] = []
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for seed in args.seeds:
        for name in args.objectives:
            budget = (args.epochs, args.curve_samples, args.test_samples, args.test_images)
            outcomes.append(train(data, name, seed, *budget))
            # written after every run, so that an interrupted report keeps what it measured
            args.out.write_text(report(outcomes, data, args, provenance(Path(__file__).name, argv)))
    return args.out


if __name__ == "__main__":
    path = main()
    print(path.read_text())
    print(f"Written to {path}")
