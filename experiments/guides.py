"""Guide families against each other: diagonal, full-covariance and IAF posteriors (K = 1, 2, 4
flows), at equal epochs and at equal wall-clock time, with the inference gap each one leaves.

Every model trains on MNIST's papers' split (the first 50,000 training images for training, the
last 10,000 for validation, the 10,000 test images for testing), dynamically binarized, with a
Bernoulli likelihood, MLP 512-256, latent dimension 16, Trace_ELBO, Adam 1e-3, batch 128: the
networks experiment's MLP, with only the guide family changed. "Equal epochs" trains every guide
for the same passes over the data; "equal time" trains every faster guide on to the seconds the
slowest took for those epochs, measured in the same run, per seed: the whole number of its own
epochs nearest to them (the contest is ``equal_cost.py``, shared with the networks experiment).
Seconds are counted in median epochs (steps and the epoch's validation), the steady state, so
that a passing load on the machine moves no budget. The learning rate is constant (``--lr``), so
a guide's equal-time run is its equal-epochs run trained on: the same as a longer run, at half
the cost.

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
    python experiments/guides.py --guides diagonal "iaf K=4" --lr 3e-4 --seeds 0 --out ...
                                              # two guides at another learning rate
"""

import argparse
import math
from pathlib import Path

from common import binarized, comparison, provenance
from equal_cost import Contest, Outcome, budgeting, run, scoring, tables

from pyro_vae import VAE
from pyro_vae.data.datasets import Dataset

RESULTS = Path(__file__).parent / "results"
LATENT_DIM = 16
BATCH_SIZE = 128
WIDTHS = (512, 256)
EPOCHS = 30
# name -> (guide, guide options), the simplest first
GUIDES: dict[str, tuple[str, dict]] = {
    "diagonal": ("diagonal", {}),
    "full": ("full", {}),
    "iaf K=1": ("iaf", {"flows": 1}),
    "iaf K=2": ("iaf", {"flows": 2}),
    "iaf K=4": ("iaf", {"flows": 4}),
}


def build(name: str):
    guide, options = GUIDES[name]

    def vae(data: Dataset) -> VAE:
        return VAE(
            data.image_shape,
            LATENT_DIM,
            hidden_dims=WIDTHS,
            likelihood="bernoulli",
            guide=guide,
            guide_options=options,
        )

    return vae


CONTESTANTS = {name: build(name) for name in GUIDES}


class _TwoOrMore(argparse.Action):
    """--guides: a contest needs two, refused on the command line (exit 2) before any data."""

    def __call__(self, parser, namespace, values, option_string=None):
        if len(set(values)) < 2:
            parser.error(f"{option_string} needs two guides or more, got {' '.join(values)}")
        setattr(namespace, self.dest, values)


def learning_rate(text: str) -> float:
    value = float(text)
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--guides",
        nargs="+",
        action=_TwoOrMore,
        choices=list(GUIDES),
        default=list(GUIDES),
        metavar="GUIDE",
        help=f"two or more, kept in this order: {', '.join(map(repr, GUIDES))}; the first is the "
        "base of the paired differences",
    )
    parser.add_argument(
        "--lr", type=learning_rate, default=1e-3, help="Adam's (constant) learning rate"
    )


def contest(chosen: list[str], lr: float) -> Contest:
    names = [name for name in GUIDES if name in chosen]
    contestants = {name: CONTESTANTS[name] for name in names}
    return Contest("guide", contestants, names[0], BATCH_SIZE, lr)


def report(outcomes: list[Outcome], setup, contest: Contest, line: str) -> str:
    data = setup.data
    seeds = sorted({o.seed for o in outcomes})
    lines = [
        "# Guide families: held-out ELBO, IWAE bound and inference gap at equal epochs and time",
        "",
        line,
        "",
        f"MNIST ({len(data.train):,} / {len(data.val):,} / {len(data.test):,} images, "
        f"{binarized(data)} binarized), Bernoulli likelihood, MLP {'-'.join(map(str, WIDTHS))}, "
        f"latent dimension {LATENT_DIM}, Trace_ELBO, Adam {contest.lr:g} (constant), batch "
        f"{BATCH_SIZE}, every step replayed from its recording (none compiled); "
        f"seeds {', '.join(map(str, seeds))}. {budgeting('guide')} "
        f"{scoring(data, setup.samples)}",
        "",
        *tables(contest, outcomes),
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> Path:
    description = __doc__.split("\n")[0]
    setup = comparison(description, RESULTS / "guides.md", argv, "paper", EPOCHS, options)
    chosen = contest(setup.options.guides, setup.options.lr)
    line = provenance(Path(__file__).name, argv)
    setup.out.parent.mkdir(parents=True, exist_ok=True)
    run(chosen, setup, lambda outcomes: setup.out.write_text(report(outcomes, setup, chosen, line)))
    return setup.out


if __name__ == "__main__":
    path = main()
    print(path.read_text())
    print(f"Written to {path}")
