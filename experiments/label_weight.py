"""How much weight the labels need, and how large M2's z may be: M2 and M1+M2 on the papers'
split at 100 and 3,000 labels, one seed, a short budget, over α (per labelled image), the
dimension of z (z₂ for M1+M2) and M1+M2's likelihood of the codes. The measurements behind
pyro-vae's default α and behind experiments/semi_supervised.py's M1+M2 settings.

Everything else is semi_supervised.py's (networks, batches, Adam, the M1 it trains or
``--m1 RUN``, test error of the last epoch's model), with ``--epochs`` (4) epochs.

    python experiments/label_weight.py --m1 RUN          # 30 minutes on 2 CPU cores
    python experiments/label_weight.py --quick           # seconds, for the test suite
"""

import argparse
import time
from pathlib import Path

import semi_supervised as ss
from common import SHARED_DATA, output_path, provenance

from pyro_vae import load_dataset, load_run

RESULTS = Path(__file__).parent / "results"
# (model, α per labelled image, z's dimension, likelihood)
GRID = [
    ("M2", 46.0, 50, "bernoulli"),
    ("M2", 500.0, 50, "bernoulli"),
    # towards the classifier alone: does any weight let the unlabelled images help M2's?
    ("M2", 5000.0, 50, "bernoulli"),
    ("M2", 50000.0, 50, "bernoulli"),
    # a smaller z, so that the decoder has to take the digit's class from y: while z can carry
    # it, every class reconstructs an unlabelled image equally well and the only pull on
    # q(y|x) from the unlabelled images is their entropy term, towards uniform
    ("M2", 500.0, 10, "bernoulli"),
    ("M2", 5000.0, 10, "bernoulli"),
    ("M2", 500.0, 5, "bernoulli"),
    ("M1+M2", 46.0, 50, "gaussian"),
    ("M1+M2", 500.0, 5, "gaussian"),
    *(
        ("M1+M2", alpha, latent, "gaussian-learned")
        for latent in (50, 5)
        for alpha in (46.0, 500.0, 2000.0)
    ),
]

# --quick's three: M2, and M1+M2 with z of 50 and of 5
QUICK_GRID = [
    ("M2", 500.0, 50, "bernoulli"),
    ("M1+M2", 46.0, 50, "gaussian-learned"),
    ("M1+M2", 46.0, 5, "gaussian-learned"),
]


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=SHARED_DATA)
    parser.add_argument("--labels", type=int, nargs="+", default=[100, 3000])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--m1", type=Path, help="a trained M1 run (else one is trained)")
    parser.add_argument("--m1-epochs", type=int, default=100)
    parser.add_argument("--quick", action="store_true", help="the digits, 1 epoch")
    parser.add_argument("--out", type=Path, help="default: experiments/results/label_weight.md")
    args = parser.parse_args(argv)
    out = output_path(args.out, args.quick, RESULTS / "label_weight.md")
    grid = GRID
    if args.quick:
        args.labels, args.epochs, args.m1_epochs = [50], 1, 1
        grid = QUICK_GRID
    config = ss.data_config(args.quick, args.data_dir)
    data = load_dataset(config)
    began = time.perf_counter()
    m1 = load_run(args.m1 or ss.train_m1(config, args.m1_epochs))
    steps = ss.steps_for(len(data.train), min(args.labels), args.epochs)
    lines = [
        "# How much weight the labels need: α, z's dimension and the codes' likelihood",
        "",
        provenance(Path(__file__).name, argv),
        "",
        f"{len(data.train):,} training images of MNIST's papers' split (the digits with "
        f"--quick), dynamically binarized; seed {args.seed}, {args.epochs} epochs; M1 "
        f"{m1.epochs_trained} epochs. Test error (%) of the last epoch's model; validation "
        "error (%) after each epoch. The classifiers alone take as many steps "
        f"({steps:,} at most) on the labelled images.",
        "",
        "| labels | model | α per labelled image | z | likelihood | test error | validation "
        "error by epoch | minutes |",
        "|---:|---|---:|---:|---|---:|---|---:|",
    ]
    for labels in args.labels:
        for name, codes in (("classifier alone", None), ("classifier alone on M1's codes", m1.vae)):
            steps = ss.steps_for(len(data.train), labels, args.epochs)
            result = ss.classifier_alone(data, labels, args.seed, steps, codes)
            lines.append(
                f"| {labels:,} | {name} | | | | {100 * result['error']:.2f} | | "
                f"{result['seconds'] / 60:.1f} |"
            )
            print(lines[-1], flush=True)
        for model, alpha, latent, likelihood in grid:
            codes = m1.vae if model == "M1+M2" else None
            result = ss.m2(data, labels, args.seed, args.epochs, alpha, codes, latent, likelihood)
            curve = ", ".join(f"{100 * e:.1f}" for e in result["curve"])
            lines.append(
                f"| {labels:,} | {model} | {alpha:g} | {latent} | {likelihood} | "
                f"{100 * result['error']:.2f} | {curve} | {result['seconds'] / 60:.1f} |"
            )
            print(lines[-1], flush=True)
    lines += ["", f"The whole run took {(time.perf_counter() - began) / 60:.0f} minutes.", ""]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines))
    return out


if __name__ == "__main__":
    print(main())
