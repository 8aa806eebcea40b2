"""MLP against conv: the same VAE with either encoder/decoder pair, at equal epochs and at equal
wall-clock time, with the inference gap each encoder leaves.

Every model trains on MNIST's papers' split (the first 50,000 training images for training, the
last 10,000 for validation, the 10,000 test images for testing), dynamically binarized, with a
Bernoulli likelihood, latent dimension 16, diagonal Gaussian guide, Trace_ELBO, Adam 1e-3
(constant), batch 128; the MLP 512-256 (the guides experiment's, so its diagonal guide is this
MLP), the conv 32-64 channels (two stride-2 stages, 28×28 → 7×7). "Equal epochs" trains both for
the same passes over the data; "equal time" trains the faster (the MLP) on to the seconds the
slower took for them, measured in the same run, per seed, in median epochs (the contest is
``equal_cost.py``, shared with the guides experiment).

Scores, from samples of z drawn from each model's guide: on 1,000 test images (every tenth, the
same for both, so that differences are paired image by image), with K = 1,000, the ELBO, the
IWAE bound and their difference (a lower bound on the inference gap); with K = 100, the ELBO of
1,000 training images less that of 1,000 validation images (overfitting); after every epoch the
ELBO of 1,000 validation images (K = 20), the curve of how far from convergence the budget
stopped.

    python experiments/networks.py              # ~65 minutes on 2 CPU cores
    python experiments/networks.py --quick      # seconds, for the test suite
"""

from pathlib import Path

from common import binarized, comparison, provenance
from equal_cost import Contest, Outcome, budgeting, run, scoring, tables

from pyro_vae import VAE
from pyro_vae.data.datasets import Dataset

RESULTS = Path(__file__).parent / "results"
LATENT_DIM = 16
BATCH_SIZE = 128
EPOCHS = 30
WIDTHS = {"mlp": (512, 256), "conv": (32, 64)}  # each network's --hidden-dims


def build(network: str):
    def vae(data: Dataset) -> VAE:
        return VAE(
            data.image_shape,
            LATENT_DIM,
            hidden_dims=WIDTHS[network],
            network=network,
            likelihood="bernoulli",
        )

    return vae


CONTESTANTS = {network: build(network) for network in WIDTHS}
CONTEST = Contest("network", CONTESTANTS, base="mlp", batch_size=BATCH_SIZE)


def report(outcomes: list[Outcome], setup, line: str) -> str:
    data = setup.data
    seeds = sorted({o.seed for o in outcomes})
    lines = [
        "# MLP against conv: held-out ELBO, IWAE bound and inference gap at equal epochs and time",
        "",
        line,
        "",
        f"MNIST ({len(data.train):,} / {len(data.val):,} / {len(data.test):,} images, "
        f"{binarized(data)} binarized), Bernoulli likelihood, latent dimension {LATENT_DIM}, "
        f"diagonal Gaussian guide, Trace_ELBO, Adam 1e-3 (constant), batch {BATCH_SIZE}; mlp "
        f"{'-'.join(map(str, WIDTHS['mlp']))} units, conv {'-'.join(map(str, WIDTHS['conv']))} "
        "channels (two stride-2 stages, 28×28 → 7×7); every step replayed from its recording "
        f"(none compiled); seeds {', '.join(map(str, seeds))}. {budgeting('network')} "
        f"{scoring(data, setup.samples)}",
        "",
        *tables(CONTEST, outcomes),
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> Path:
    setup = comparison(
        __doc__.split("\n")[0], RESULTS / "networks.md", argv, split="paper", epochs=EPOCHS
    )
    line = provenance(Path(__file__).name, argv)
    setup.out.parent.mkdir(parents=True, exist_ok=True)
    run(CONTEST, setup, lambda outcomes: setup.out.write_text(report(outcomes, setup, line)))
    return setup.out


if __name__ == "__main__":
    path = main()
    print(path.read_text())
    print(f"Written to {path}")
