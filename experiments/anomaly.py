"""Finding the digit a VAE never saw: how well do its scores single out a held-out class?

For each digit d, a VAE trains on the MNIST training images of the nine other digits (the 60,000
training images of ``../shared/data`` less a seeded tenth for validation, digit d removed from
both), statically binarized, Bernoulli likelihood, MLP 784-400-20, Adam 1e-3, batch 128. Then
all 10,000 test images are scored three ways, a lower score meaning "more unusual":

- the ELBO (closed-form KL, K samples of z per image);
- the importance-weighted bound on log p(x) with the same K samples (Burda et al., 2016);
- the latent codes: the log-density of each test image's posterior mean under a 10-component
  Gaussian mixture fitted to the training images' posterior means.

The AUROC of telling the held-out digit's test images from the other nine's, per digit, mean ±
standard deviation over seeds; 0.5 is chance, and below 0.5 the held-out digit looks *more*
likely than the digits trained on (Nalisnick et al., 2019, "Do deep generative models know what
they don't know?").

    python experiments/anomaly.py              # about 17 minutes on 2 idle CPU cores
    python experiments/anomaly.py --quick      # seconds, for the test suite
"""

import argparse
import statistics
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyro
import torch
from common import SHARED_DATA, output_path, provenance
from sklearn.metrics import roc_auc_score
from sklearn.mixture import GaussianMixture

from pyro_vae import VAE, DataConfig, TrainConfig, Trainer, load_dataset
from pyro_vae.data.datasets import Dataset, Split
from pyro_vae.inference.evaluate import image_bounds

RESULTS = Path(__file__).parent / "results"
HIDDEN, LATENT, BATCH, COMPONENTS = (400,), 20, 128, 10
SCORES = ("ELBO", "IWAE", "latent density")


def without(split: Split, digit: int) -> Split:
    keep = split.labels != digit
    return Split(split.stored[keep], split.labels[keep])


def train(data: Dataset, seed: int, epochs: int) -> VAE:
    pyro.set_rng_seed(seed)
    vae = VAE(data.image_shape, LATENT, HIDDEN, likelihood="bernoulli")
    trainer = Trainer(vae, TrainConfig(batch_size=BATCH, epochs=epochs, seed=seed))
    for _ in range(epochs):
        trainer.train_epoch(data)
    return vae.eval()


@torch.no_grad()
def scores(vae: VAE, data: Dataset, seed: int, samples: int) -> dict[str, np.ndarray]:
    """Each test image's three scores (higher: more like the training images)."""
    pyro.set_rng_seed(seed)
    bounds = image_bounds(vae, data.test.stored, samples)
    train_codes = torch.cat([vae.encode(x) for x in data.train.chunks()]).numpy()
    test_codes = torch.cat([vae.encode(x) for x in data.test.chunks()]).numpy()
    mixture = GaussianMixture(COMPONENTS, random_state=seed).fit(train_codes)
    return {
        "ELBO": bounds["elbo_analytic_kl"].numpy(),
        "IWAE": bounds["iwae"].numpy(),
        "latent density": mixture.score_samples(test_codes),
    }


def aurocs(found: dict[str, np.ndarray], held_out: np.ndarray) -> dict[str, float]:
    """The AUROC of each score at ranking the held-out digit's images as the most unusual."""
    return {name: float(roc_auc_score(held_out, -values)) for name, values in found.items()}


def report(results: dict, args: argparse.Namespace, line: str) -> str:
    lines = [
        "# Anomaly detection: a held-out digit",
        "",
        line,
        "",
        f"{args.data_name}; per held-out digit, a VAE trained {args.epochs} epochs on the "
        f"other digits' training images (about {args.train:,}), statically binarized, Bernoulli "
        f"likelihood, MLP {HIDDEN[0]}, latent {LATENT}, batch {BATCH}; scored on the "
        f"{args.test:,} test images with K = {args.samples} samples of z each; seeds "
        f"{args.seeds}. AUROC of singling out the held-out digit (1 is perfect, 0.5 chance, "
        "below 0.5 the unseen digit scores as *more* likely), mean ± standard deviation over "
        "seeds.",
        "",
        "| held-out digit | pixels on | " + " | ".join(SCORES) + " |",
        "|---:|---:|" + "---:|" * len(SCORES),
    ]
    for digit, per_seed in results.items():
        cells = [_spread([found[name] for found in per_seed]) for name in SCORES]
        lines.append(f"| {digit} | {args.ink[digit]:.1%} | " + " | ".join(cells) + " |")
    means = {
        name: statistics.fmean(found[name] for per in results.values() for found in per)
        for name in SCORES
    }
    lines.append("| mean | | " + " | ".join(f"{means[name]:.3f}" for name in SCORES) + " |")
    best = max(means, key=means.get)
    weakest = min(results, key=lambda d: statistics.fmean(found["IWAE"] for found in results[d]))
    # Below chance by more than twice the spread over seeds (with one seed: below chance).
    fooled = [
        digit
        for digit, per in results.items()
        if statistics.fmean(found["IWAE"] for found in per)
        + 2 * (statistics.stdev(found["IWAE"] for found in per) if len(per) > 1 else 0)
        < 0.5
    ]
    lines += [
        "",
        f"Best on average: **{best}** ({means[best]:.3f}). "
        + (
            f"Held-out digits whose IWAE AUROC is below chance by more than twice its spread "
            f"over seeds: {', '.join(map(str, fooled))}: the model gives the digit it never saw "
            "a *higher* likelihood than the digits it learnt, the failure Nalisnick et al. "
            "(2019) report across datasets. A likelihood rewards simple images (few pixels on: "
            "see that column, the share of the held-out digit's test pixels that are on), "
            "whatever their class."
            + (
                " The density of the latent codes does not share the failure for these digits."
                if all(
                    statistics.fmean(found["latent density"] for found in results[d]) > 0.5
                    for d in fooled
                )
                else ""
            )
            if fooled
            else "No held-out digit's IWAE AUROC is below chance here, so the failure "
            "Nalisnick et al. (2019) report (an unseen kind of image given a *higher* "
            f"likelihood) does not show at this scale; the weakest is digit {weakest} "
            f"({statistics.fmean(found['IWAE'] for found in results[weakest]):.3f})."
        ),
        "",
        f"The whole run took {args.minutes:.0f} minutes.",
        "",
    ]
    return "\n".join(lines)


def _spread(values: list[float]) -> str:
    spread = statistics.stdev(values) if len(values) > 1 else float("nan")
    return f"{statistics.fmean(values):.3f} ± {spread:.3f}"


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=SHARED_DATA)
    parser.add_argument("--digits", type=int, nargs="+", default=list(range(10)))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--samples", type=int, default=100, help="K samples of z per test image")
    parser.add_argument("--quick", action="store_true", help="the digits, 2 digits, 1 seed")
    parser.add_argument("--out", type=Path, help="default: experiments/results/anomaly.md")
    args = parser.parse_args(argv)
    out = output_path(args.out, args.quick, RESULTS / "anomaly.md")
    if args.quick:
        data = load_dataset(DataConfig(binarize="static"))
        args.digits, args.seeds, args.epochs, args.samples = [0, 1], [0], 1, 10
        args.data_name = "The digits (a quick check)"
    else:
        config = DataConfig(dataset="mnist", data_dir=str(args.data_dir), binarize="static")
        data = load_dataset(config)
        args.data_name = "MNIST (60,000 training images less a tenth for validation; 10,000 test)"
    args.test = len(data.test)
    on = data.test.x  # (N, D) binary
    args.ink = {d: float(on[data.test.labels == d].mean()) for d in args.digits}
    began = time.perf_counter()
    results = {}
    for digit in args.digits:
        nine = replace(data, train=without(data.train, digit), val=without(data.val, digit))
        args.train = len(nine.train)
        held_out = (data.test.labels == digit).numpy()
        for seed in args.seeds:
            start = time.perf_counter()
            vae = train(nine, seed, args.epochs)
            found = aurocs(scores(vae, nine, seed, args.samples), held_out)
            results.setdefault(digit, []).append(found)
            print(
                f"digit {digit} seed {seed}: "
                + ", ".join(f"{name} {value:.3f}" for name, value in found.items())
                + f" ({time.perf_counter() - start:.0f} s)",
                flush=True,
            )
    args.minutes = (time.perf_counter() - began) / 60
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(report(results, args, provenance(Path(__file__).name, argv)))
    return out


if __name__ == "__main__":
    print(main())
