"""Held-out ELBO of every registered prior at an equal training budget.

Each prior trains the same VAE (Bernoulli likelihood on statically binarized images, the setting
of the VampPrior paper) with the same estimator, optimiser, epochs and seeds; every model is then
scored on the test split with one yardstick that every prior admits: the Monte Carlo-KL ELBO with
many samples of z per image. Mean ± standard deviation over seeds.

    python experiments/priors.py      # digits, and MNIST where present: ~8 minutes on 2 CPU cores
    python experiments/priors.py --quick          # seconds, for the test suite
"""

import argparse
import statistics
from pathlib import Path

import pyro
from common import output_path, provenance

from pyro_vae import (
    DATASETS,
    PRIORS,
    VAE,
    DataConfig,
    TrainConfig,
    Trainer,
    elbo_per_datapoint,
    load_dataset,
)
from pyro_vae.inference.objectives import kl_method

RESULTS = Path(__file__).parent / "results"
EVAL_PARTICLES = 256  # samples of z per test image in the common yardstick
EPOCHS = {"digits": 100, "mnist": 30}  # per dataset: 1,437 or 8,000 training images
SHARED_DATA = Path(__file__).parents[1].parent / "shared" / "data"  # beside the checkout


def run(
    dataset: str, priors: list[str], seeds: list[int], epochs: int, data_dir: Path
) -> list[dict]:
    data = load_dataset(DataConfig(dataset=dataset, binarize="static", data_dir=str(data_dir)))
    rows = []
    for prior in priors:
        elbos, train_kl = [], ""
        for seed in seeds:
            pyro.set_rng_seed(seed)
            vae = VAE(data.data_dim, latent_dim=8, prior=prior, likelihood="bernoulli")
            trainer = Trainer(vae, TrainConfig(elbo="mc", seed=seed))
            for _ in range(epochs):
                trainer.train_epoch(data)
            pyro.set_rng_seed(seed)
            elbos.append(
                elbo_per_datapoint(vae, data.test.x, estimator="mc", num_particles=EVAL_PARTICLES)
            )
            train_kl = kl_method("analytic", vae.prior())
        rows.append(
            {
                "dataset": dataset,
                "epochs": epochs,
                "train_images": data.train.x.shape[0],
                "test_images": data.test.x.shape[0],
                "prior": prior,
                "closed_form_kl": train_kl == "closed-form",
                "mean": statistics.fmean(elbos),
                "std": statistics.stdev(elbos) if len(elbos) > 1 else float("nan"),
                "runs": elbos,
            }
        )
    return rows


def report(rows: list[dict], seeds: list[int], provenance_line: str) -> str:
    lines = [
        "# Held-out ELBO by prior, at an equal training budget",
        "",
        provenance_line,
        "",
        "Bernoulli likelihood on statically binarized images; latent dimension 8, hidden layers "
        "256-128; Trace_ELBO (Monte Carlo KL) for every prior; Adam 1e-3, batch 64; the same "
        f"epochs for every prior of a dataset; seeds {', '.join(map(str, seeds))}. MNIST: the "
        "test split of 10,000 images, split 8,000 / 1,000 / 1,000 with a fixed seed when the "
        "training split is not on disk. Test ELBO: Trace_ELBO with "
        f"{EVAL_PARTICLES} samples of z per image (nats per image, higher is better), "
        "mean ± standard deviation over seeds.",
        "",
        "| dataset (train / test images, epochs) | prior | KL to the guide in closed form "
        "| test ELBO | per seed |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        per_seed = ", ".join(f"{e:.2f}" for e in r["runs"])
        spread = f" ± {r['std']:.2f}" if len(r["runs"]) > 1 else ""
        lines.append(
            f"| {r['dataset']} ({r['train_images']} / {r['test_images']}, {r['epochs']}) "
            f"| {r['prior']} | {'yes' if r['closed_form_kl'] else 'no'} "
            f"| {r['mean']:.2f}{spread} | {per_seed} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    present = ["mnist"] if (SHARED_DATA / "MNIST" / "raw").is_dir() else []
    parser.add_argument(
        "--datasets",
        nargs="+",
        default=["digits", *present],
        choices=[n for n in DATASETS if n != "array"],
    )
    parser.add_argument("--data-dir", type=Path, default=SHARED_DATA)
    parser.add_argument("--priors", nargs="+", default=list(PRIORS), choices=list(PRIORS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, help=f"for every dataset (default: {EPOCHS})")
    parser.add_argument("--quick", action="store_true", help="1 epoch and 1 seed: a smoke run")
    parser.add_argument(
        "--out", type=Path, help="default: RESULTS / priors.md (a temporary folder with --quick)"
    )
    args = parser.parse_args(argv)
    args.out = output_path(args.out, args.quick, RESULTS / "priors.md")
    seeds = [0] if args.quick else args.seeds
    rows = []
    for name in args.datasets:
        epochs = 1 if args.quick else args.epochs or EPOCHS.get(name, 30)
        rows += run(name, args.priors, seeds, epochs, args.data_dir)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report(rows, seeds, provenance(Path(__file__).name, argv)))
    return args.out


if __name__ == "__main__":
    path = main()
    print(path.read_text())
    print(f"Written to {path}")
