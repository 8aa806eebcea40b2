"""What the unlabelled images are worth: M2 (Kingma et al., 2014) against its own classifier
trained on the labelled images alone (the conditional VAE's picture: experiments/conditional.py).

The MNIST split on disk (the 10,000 test images, split 8,000 / 1,000 / 1,000 with a fixed seed),
statically binarized, Bernoulli likelihood; the paper's networks: one hidden layer of 500 units
(ReLU here), latent dimension 50; Adam 1e-3, batch 128 (unlabelled) beside a batch of up to 128
labelled images at every step. α, the weight of the labelled images' mean log q(y|x), is the
paper's 0.1 × the training images (800 for 8,000) and, to see how much the result hangs on it,
ten times that (``--alphas``: multiples of the paper's). For each number of labels (balanced by
class, chosen by the seed) and seed, M2 trains for the same epochs (passes over the unlabelled
images), and the classifier alone (the same network as M2's q(y|x), cross entropy) takes as many
steps on the labelled images. Both are scored on the 1,000 test images. No model selection on
validation labels: the last epoch's model is scored.

    python experiments/semi_supervised.py              # about half an hour on 2 CPU cores
    python experiments/semi_supervised.py --quick      # seconds, for the test suite
"""

import argparse
import math
import statistics
import time
from pathlib import Path

import pyro
import torch
from common import SHARED_DATA, mean_and_spread, output_path, provenance
from torch.nn import functional as F

from pyro_vae import DataConfig, TrainConfig, load_dataset
from pyro_vae.components.networks import build_classifier
from pyro_vae.data.datasets import Dataset
from pyro_vae.inference.evaluate import classification_error
from pyro_vae.inference.m2_trainer import SemiSupervisedTrainer, default_alpha
from pyro_vae.models.m2 import SemiSupervisedVAE

RESULTS = Path(__file__).parent / "results"
HIDDEN, LATENT, BATCH = (500,), 50, 128
PAPER = {100: "11.97 ± 1.71", 600: "4.94 ± 0.13", 1000: "3.60 ± 0.56", 3000: "3.92 ± 0.63"}


def m2(
    data: Dataset, labels: int, seed: int, epochs: int, alpha: float
) -> tuple[float, list[float], int]:
    """M2's test error, its validation error after each epoch, and the steps it took."""
    pyro.set_rng_seed(seed)
    vae = SemiSupervisedVAE(
        data.image_shape, LATENT, HIDDEN, likelihood="bernoulli", num_classes=data.num_classes
    )
    config = TrainConfig(labels=labels, batch_size=BATCH, epochs=epochs, seed=seed, alpha=alpha)
    trainer = SemiSupervisedTrainer(vae, config, data)
    curve = [trainer.train_epoch(data).val_error for _ in range(epochs)]
    steps = epochs * math.ceil(len(trainer.unlabelled_rows) / BATCH)
    return classification_error(vae, data.test), curve, steps


def classifier_alone(data: Dataset, labels: int, seed: int, steps: int) -> float:
    """The same network as M2's q(y|x), trained by cross entropy on the same labelled images
    (``choose_labelled`` with the same seed) for ``steps`` Adam steps of up to 128 of them."""
    from pyro_vae.data.labels import choose_labelled

    pyro.set_rng_seed(seed)
    net = build_classifier("mlp", data.image_shape, LATENT, HIDDEN, data.num_classes)
    chosen = choose_labelled(data.train.labels, labels, seed)
    x, y = data.train.rows(chosen), data.train.labels[chosen]
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    for _ in range(steps):
        batch = torch.randperm(len(chosen))[:BATCH]
        optimizer.zero_grad()
        F.cross_entropy(net(x[batch]), y[batch]).backward()
        optimizer.step()
    with torch.no_grad():
        return float((net(data.test.x).argmax(-1) != data.test.labels).float().mean())


def report(rows: dict, curves: dict, args: argparse.Namespace, line: str) -> str:
    alphas = [f"M2, α = {alpha(m, args.train):,g}" for m in args.alphas]
    lines = [
        "# Semi-supervised M2 against its classifier alone",
        "",
        line,
        "",
        f"{args.data_name}: {args.train:,} training images, of which N keep their labels, "
        f"{args.val:,} validation, {args.test:,} test; binarized, Bernoulli likelihood, "
        f"MLP {HIDDEN[0]}, latent {LATENT}, {args.epochs} epochs, seeds {args.seeds}; "
        f"α = 0.1 × {args.train:,} is the paper's. Test error (%), mean ± standard deviation "
        "over seeds; the paper's M2 on 50,000 training images beside it.",
        "",
        "| labels N | classifier alone | " + " | ".join(alphas) + " | paper's M2 |",
        "|---:|---:|" + "---:|" * len(alphas) + "---:|",
    ]
    for labels, (alone_errors, by_alpha) in rows.items():
        cells = [mean_and_spread([100 * e for e in by_alpha[m]]) for m in args.alphas]
        lines.append(
            f"| {labels:,} | {mean_and_spread([100 * e for e in alone_errors])} | "
            + " | ".join(cells)
            + f" | {PAPER.get(labels, '—')} |"
        )
    lines += ["", "M2's validation error (%) after each epoch, seed mean:", ""]
    for (labels, multiple), per_seed in curves.items():
        means = [100 * statistics.fmean(values) for values in zip(*per_seed, strict=True)]
        lines.append(
            f"- N = {labels:,}, α = {alpha(multiple, args.train):,g}: "
            + ", ".join(f"{m:.1f}" for m in means)
        )
    lines += ["", f"The whole run took {args.minutes:.0f} minutes.", ""]
    return "\n".join(lines)


def alpha(multiple: float, num_train: int) -> float:
    """``multiple`` times the paper's α, 0.1 × the training images."""
    return multiple * default_alpha(num_train)


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=SHARED_DATA)
    parser.add_argument("--labels", type=int, nargs="+", default=[100, 600, 1000, 3000])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--alphas", type=float, nargs="+", default=[1.0, 10.0])
    parser.add_argument("--quick", action="store_true", help="the digits, 1 epoch, 1 seed")
    parser.add_argument("--out", type=Path, help="default: experiments/results/semi_supervised.md")
    args = parser.parse_args(argv)
    out = output_path(args.out, args.quick, RESULTS / "semi_supervised.md")
    if args.quick:
        data = load_dataset(DataConfig(binarize="static"))
        args.labels, args.seeds, args.epochs = [50], [0], 1
    else:
        config = DataConfig(dataset="mnist", data_dir=str(args.data_dir), binarize="static")
        data = load_dataset(config)
    args.train, args.val, args.test = len(data.train), len(data.val), len(data.test)
    args.data_name = "The digits" if args.quick else "MNIST split on disk"
    began = time.perf_counter()
    rows, curves = {}, {}
    for labels in args.labels:
        alone_errors, by_alpha = [], {multiple: [] for multiple in args.alphas}
        for seed in args.seeds:
            for multiple in args.alphas:
                start = time.perf_counter()
                weight = alpha(multiple, args.train)
                error, curve, steps = m2(data, labels, seed, args.epochs, weight)
                by_alpha[multiple].append(error)
                curves.setdefault((labels, multiple), []).append(curve)
                print(
                    f"N={labels} seed={seed} α={weight:g}: M2 {error:.2%} "
                    f"({time.perf_counter() - start:.0f} s)",
                    flush=True,
                )
            alone_errors.append(classifier_alone(data, labels, seed, steps))
            print(f"N={labels} seed={seed}: alone {alone_errors[-1]:.2%}", flush=True)
        rows[labels] = (alone_errors, by_alpha)
    args.minutes = (time.perf_counter() - began) / 60
    out.parent.mkdir(parents=True, exist_ok=True)
    line = provenance(Path(__file__).name, argv)
    out.write_text(report(rows, curves, args, line))
    return out


if __name__ == "__main__":
    print(main())
