"""What the unlabelled images are worth: M2 and M1+M2 (Kingma et al., 2014) against the same
classifier trained on the labelled images alone.

The papers' MNIST split (the first 50,000 training images to train on, the last 10,000 to
validate, the 10,000 test images to score), dynamically binarized, Bernoulli likelihood. For each
number of labels N (balanced by class, chosen by the seed) and seed:

- **M2** on the images: one hidden layer of 500 (ReLU), latent 50, α per labelled image
  (``--alpha``; unless given, pyro-vae's default: 50,000 below 100 labels a class, 5,000
  below 300, else 500);
- **M1+M2**: M2 (hidden 500, latent z₂ of 5) on the codes of M1, a VAE trained once on the
  50,000 images without labels (784-600-600-50, ``--m1-epochs``; ``--m1 RUN`` reuses a trained
  one), M2's likelihood of the codes Gaussian with a learnt σ per dimension;
- **the classifier alone**, on the images and on M1's codes: the same networks as M2's and
  M1+M2's q(y|x), cross entropy on the same labelled images, as many Adam steps of 200 as M2
  took, at the same learning rate;
- **Pyro's example** (``examples/vae/ss_vae_M2.py``, as benchmarks/m2_epoch.py writes it: its
  networks, auxiliary loss weight and loop), for as many of its own epochs, on
  ``--reference-seeds`` and ``--reference-labels`` only (one seed at 100 and 3,000 labels by
  default: it is the slowest).

Batches of 200 unlabelled images beside 200 labelled (drawn afresh), Adam at 1e-3. Each model
is scored by its last epoch on the test images: no selection on validation labels. The report
gives test error (%) as mean ± standard deviation over seeds, Kingma et al.'s figures beside it,
each model's wall time, and its validation error after each epoch.

    python experiments/semi_supervised.py                     # about 1.5 hours on 2 CPU cores
    python experiments/semi_supervised.py --m1 RUN            # with a trained M1
    python experiments/semi_supervised.py --quick             # seconds, for the test suite
"""

import argparse
import copy
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

import pyro
import torch
from common import SHARED_DATA, mean_and_spread, output_path, provenance
from torch.nn import functional as F

from pyro_vae import DataConfig, ModelConfig, RunConfig, TrainConfig, load_dataset, load_run
from pyro_vae.components.networks import build_classifier
from pyro_vae.core.train_config import (
    DEFAULT_ALPHA,
    IMAGE_ALPHAS,
)
from pyro_vae.data.datasets import Dataset
from pyro_vae.data.labels import choose_labelled
from pyro_vae.inference.evaluate import classification_error
from pyro_vae.inference.m2_trainer import SemiSupervisedTrainer
from pyro_vae.models.m2 import SemiSupervisedVAE
from pyro_vae.models.vae import VAE
from pyro_vae.runs.runner import train_run

RESULTS = Path(__file__).parent / "results"
sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))  # m2_epoch: Pyro's example
HIDDEN, LATENT, BATCH, LR = (500,), 50, 200, 1e-3
M1_HIDDEN, M1_LATENT = (600, 600), 50
# M1+M2's z₂ and likelihood of the codes: measured at 100 and 3,000 labels (docs/results.md),
# where a 50-dimensional z₂ and a fixed σ = 1 left M2 behind its classifier alone.
M1M2_LATENT, M1M2_LIKELIHOOD = 5, "gaussian-learned"
# Kingma et al. (2014), Table 1: test error (%) on MNIST with 50,000 training images
KINGMA = {
    "M2": {100: "11.97 ± 1.71", 600: "4.94 ± 0.13", 1000: "3.60 ± 0.56", 3000: "3.92 ± 0.63"},
    "M1+M2": {100: "3.33 ± 0.14", 600: "2.59 ± 0.05", 1000: "2.40 ± 0.02", 3000: "2.18 ± 0.04"},
}


def train_m1(data_config: DataConfig, epochs: int) -> Path:
    """M1: a VAE of the training images, no labels, trained into a new temporary folder."""
    folder = Path(tempfile.mkdtemp(prefix="m1-")) / "m1"
    config = RunConfig(
        model=ModelConfig(latent_dim=M1_LATENT, hidden_dims=M1_HIDDEN, likelihood="bernoulli"),
        data=data_config,
        train=TrainConfig(epochs=epochs, batch_size=100, lr_schedule="cosine", lr_min=1e-4),
    )
    train_run(config, folder)
    return folder


def data_config(quick: bool, data_dir: Path) -> DataConfig:
    """The digits (``--quick``) or MNIST's papers' split, dynamically binarized."""
    if quick:
        return DataConfig(binarize="dynamic")
    return DataConfig(dataset="mnist", data_dir=str(data_dir), split="paper", binarize="dynamic")


def steps_for(num_train: int, labels: int, epochs: int) -> int:
    """M2's steps: ``epochs`` passes over the unlabelled images, ``BATCH`` a step (what the
    classifiers alone take too)."""
    return epochs * math.ceil((num_train - labels) / BATCH)


def m2(
    data: Dataset,
    labels: int,
    seed: int,
    epochs: int,
    alpha: float | None,
    m1: VAE | None,
    latent: int | None = None,
    likelihood: str | None = None,
) -> dict:
    """M2 (M1+M2 with ``m1``): test error, validation error after each epoch, steps, seconds.
    ``latent`` and ``likelihood``: z's dimension and the likelihood, where not this report's."""
    pyro.set_rng_seed(seed)
    likelihood = likelihood or ("bernoulli" if m1 is None else M1M2_LIKELIHOOD)
    features = None if m1 is None else copy.deepcopy(m1)
    vae = SemiSupervisedVAE(
        data.image_shape,
        latent or (LATENT if m1 is None else M1M2_LATENT),
        HIDDEN,
        likelihood=likelihood,
        num_classes=data.num_classes,
        features=features,
    )
    config = TrainConfig(labels=labels, batch_size=BATCH, lr=LR, seed=seed, alpha=alpha)
    trainer = SemiSupervisedTrainer(vae, config, data)
    start = time.perf_counter()
    curve = [trainer.train_epoch(data).val_error for _ in range(epochs)]
    return {
        "error": classification_error(vae, data.test),
        "curve": curve,
        "steps": steps_for(len(data.train), labels, epochs),
        "seconds": time.perf_counter() - start,
    }


def classifier_alone(data: Dataset, labels: int, seed: int, steps: int, m1: VAE | None) -> dict:
    """M2's q(y|x) network (on M1's codes with ``m1``), trained by cross entropy on the same
    labelled images (``choose_labelled`` with the same seed), ``steps`` Adam steps of up to
    ``BATCH`` of them."""
    pyro.set_rng_seed(seed)
    inputs = data.image_shape if m1 is None else (m1.latent_dim,)
    net = build_classifier("mlp", inputs, LATENT, HIDDEN, data.num_classes)
    chosen = choose_labelled(data.train.labels, labels, seed)
    x, y = data.train.rows(chosen), data.train.labels[chosen]
    test = data.test.x

    def read(images: torch.Tensor) -> torch.Tensor:
        # dynamically binarized training images, as M2 sees them; M1's codes of them
        if data.binarize == "dynamic" and images is not test:
            images = torch.bernoulli(images)
        return images if m1 is None else m1.encode(images).detach()

    optimizer = torch.optim.Adam(net.parameters(), lr=LR)
    start = time.perf_counter()
    for _ in range(steps):
        batch = torch.randperm(len(chosen))[:BATCH]
        optimizer.zero_grad()
        F.cross_entropy(net(read(x[batch])), y[batch]).backward()
        optimizer.step()
    with torch.no_grad():
        error = float((net(read(test)).argmax(-1) != data.test.labels).float().mean())
    return {"error": error, "seconds": time.perf_counter() - start}


def pyros_example(data: Dataset, labels: int, seed: int, epochs: int) -> dict:
    """The second reference: Pyro's ``examples/vae/ss_vae_M2.py`` as benchmarks/m2_epoch.py
    writes it (its Softplus networks, auxiliary loss weight 46, learning rate 0.00042, its loop:
    a supervised batch every N_train / N-th batch), for ``epochs`` of its own epochs, on the
    grey training images as the example reads them."""
    from m2_epoch import pyros_example as build

    contestant = build(data, labels, BATCH, name=f"ss_vae_{labels}_{seed}", seed=seed)
    start = time.perf_counter()
    for _ in range(epochs):
        contestant.run_epoch()
    with torch.no_grad():
        guess = contestant.model.encoder_y(data.test.x).argmax(-1)
    error = float((guess != data.test.labels).float().mean())
    return {"error": error, "seconds": time.perf_counter() - start}


METHODS = ("classifier", "M2", "classifier on codes", "M1+M2", "Pyro's example")


def report(results: dict, args: argparse.Namespace, line: str) -> str:
    def cell(method: str, labels: int) -> str:
        runs = results.get((method, labels), [])
        return mean_and_spread([100 * r["error"] for r in runs]) if runs else "—"

    def minutes(method: str) -> str:
        runs = [r for (m, _), rs in results.items() if m == method for r in rs]
        return f"{statistics.fmean(r['seconds'] for r in runs) / 60:.1f}" if runs else "—"

    lines = [
        "# Semi-supervised learning: M2 and M1+M2 against the classifier alone",
        "",
        line,
        "",
        f"{args.data_name}: {args.train:,} training images, of which N keep their labels, "
        f"{args.val:,} validation, {args.test:,} test; {args.binarize} binarization. M2: MLP "
        f"{HIDDEN[0]}, latent {LATENT}, Bernoulli likelihood; M1+M2: M1 a VAE "
        f"{'-'.join(map(str, M1_HIDDEN))}-{M1_LATENT} ({args.m1_note}), M2 on its codes: MLP "
        f"{HIDDEN[0]}, latent {M1M2_LATENT}, {M1M2_LIKELIHOOD} likelihood. "
        f"{alpha_text(args.alpha)} "
        f"{args.epochs} epochs of {BATCH} unlabelled + {BATCH} labelled images a step, Adam "
        f"{LR:g}; the classifiers alone as many steps on the labelled images. Seeds "
        f"{args.seeds}. Test error (%), mean ± standard deviation over seeds, the last epoch's "
        "model; Kingma et al. (2014) beside them.",
        "",
        "| labels N | classifier alone | M2 | classifier alone on M1's codes | M1+M2 "
        "| Pyro's example | Kingma M2 | Kingma M1+M2 |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for labels in args.labels:
        cells = [cell(method, labels) for method in METHODS]
        lines.append(
            f"| {labels:,} | " + " | ".join(cells)
            + f" | {KINGMA['M2'].get(labels, '—')} | {KINGMA['M1+M2'].get(labels, '—')} |"
        )  # fmt: skip
    lines += [
        "",
        "Minutes per model (mean over its runs): "
        + ", ".join(f"{method} {minutes(method)}" for method in METHODS)
        + f". M1: {args.m1_minutes}. Pyro's example: seeds {args.reference_seeds} at "
        f"{args.reference_labels} labels, {args.epochs} of its epochs.",
        "",
        "Validation error (%) after each epoch, seed mean:",
        "",
    ]
    for (method, labels), runs in results.items():
        if "curve" in runs[0]:
            means = [
                100 * statistics.fmean(v) for v in zip(*(r["curve"] for r in runs), strict=True)
            ]
            lines.append(f"- {method}, N = {labels:,}: " + ", ".join(f"{m:.1f}" for m in means))
    lines += ["", f"The whole run took {args.minutes:.0f} minutes.", ""]
    return "\n".join(lines)


def alpha_text(alpha: float | None) -> str:
    """The report's words for α."""
    if alpha is not None:
        return f"α = {alpha:g} per labelled image."
    tiers = ", ".join(f"{alpha:,g} below {below}" for below, alpha in IMAGE_ALPHAS)
    return (
        f"α per labelled image: pyro-vae's default, {DEFAULT_ALPHA:,g} on M1's codes; on the "
        f"images {tiers} labels a class, {DEFAULT_ALPHA:,g} from {IMAGE_ALPHAS[-1][0]}."
    )


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=SHARED_DATA)
    parser.add_argument("--labels", type=int, nargs="+", default=[100, 600, 1000, 3000])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=10, help="M2's and M1+M2's")
    parser.add_argument("--m1-epochs", type=int, default=100)
    parser.add_argument("--m1", type=Path, help="a trained M1 run (else one is trained)")
    parser.add_argument(
        "--alpha", type=float, help="per labelled image (default: pyro-vae's, by label count)"
    )
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument(
        "--reference-seeds", type=int, nargs="+", default=[0], help="Pyro's example's"
    )
    parser.add_argument(
        "--reference-labels", type=int, nargs="+", default=[100, 3000], help="Pyro's example's"
    )
    parser.add_argument("--quick", action="store_true", help="the digits, 1 epoch, 1 seed")
    parser.add_argument("--out", type=Path, help="default: experiments/results/semi_supervised.md")
    args = parser.parse_args(argv)
    out = output_path(args.out, args.quick, RESULTS / "semi_supervised.md")
    if args.quick:
        args.labels, args.seeds, args.epochs, args.m1_epochs = [50], [0], 1, 1
        args.reference_labels = [50]
    config = data_config(args.quick, args.data_dir)
    data = load_dataset(config)
    args.train, args.val, args.test = len(data.train), len(data.val), len(data.test)
    args.binarize = data.binarize
    args.data_name = "The digits" if args.quick else "MNIST, the papers' split"
    began = time.perf_counter()
    m1_run, args.m1_minutes = args.m1, "given"
    if m1_run is None and {"M1+M2", "classifier on codes"} & set(args.methods):
        start = time.perf_counter()
        m1_run = train_m1(config, args.m1_epochs)
        args.m1_minutes = f"{(time.perf_counter() - start) / 60:.1f} minutes"
    m1 = None if m1_run is None else load_run(m1_run)
    args.m1_note = "not run" if m1 is None else f"{m1.epochs_trained} epochs, no labels"
    m1 = None if m1 is None else m1.vae
    results: dict[tuple[str, int], list[dict]] = {}
    for labels in args.labels:
        for seed in args.seeds:
            steps = steps_for(args.train, labels, args.epochs)
            for method in args.methods:
                codes = m1 if method in ("M1+M2", "classifier on codes") else None
                if method == "Pyro's example":
                    if seed not in args.reference_seeds or labels not in args.reference_labels:
                        continue
                    result = pyros_example(data, labels, seed, args.epochs)
                elif method.startswith("classifier"):
                    result = classifier_alone(data, labels, seed, steps, codes)
                else:
                    result = m2(data, labels, seed, args.epochs, args.alpha, codes)
                results.setdefault((method, labels), []).append(result)
                print(
                    f"N={labels} seed={seed} {method}: {result['error']:.2%} "
                    f"({result['seconds']:.0f} s)",
                    flush=True,
                )
    args.minutes = (time.perf_counter() - began) / 60
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(report(results, args, provenance(Path(__file__).name, argv)))
    return out


if __name__ == "__main__":
    print(main())
