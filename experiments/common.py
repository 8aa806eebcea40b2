"""What every experiment shares: where its numbers came from (provenance), where its report
goes, the data of an equal-cost comparison, and the images and formats its scores use."""

import argparse
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pyro
import torch

from pyro_vae import DataConfig, load_dataset
from pyro_vae.data.datasets import Dataset


def provenance(script: str, argv: list[str] | None) -> str:
    """One markdown line: the command that reproduces the report, versions, machine and date."""
    args = shlex.join(sys.argv[1:] if argv is None else argv)  # quoted: it must paste back
    command = f"python experiments/{script} {args}".strip()
    return (
        f"Command: `{command}` · torch {torch.__version__}, pyro {pyro.__version__}, "
        f"Python {platform.python_version()} · {cpu_model()}, "
        f"{os.cpu_count()} cores, {torch.get_num_threads()} torch threads · "
        f"{time.strftime('%Y-%m-%d')}"
    )


def cpu_model() -> str:
    """The processor's name (Linux's /proc/cpuinfo), else the machine's architecture."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return f"{platform.machine()} CPU"


def output_path(out: Path | None, quick: bool, committed: Path) -> Path:
    """Where a report goes: ``out`` if given; a quick (smoke) run's into a new temporary folder,
    so that it never replaces the committed report; else the committed report's place."""
    if out is not None:
        return out
    if quick:
        return Path(tempfile.mkdtemp(prefix="pyro-vae-quick-")) / committed.name
    return committed


SHARED_DATA = Path(__file__).parents[1].parent / "shared" / "data"  # beside the checkout
IWAE_SAMPLES = 1000  # K of the IWAE bound the equal-cost comparisons score with


@dataclass(frozen=True)
class Comparison:
    """What an equal-cost comparison runs on: its data, seeds, epochs, samples of z per test
    image, and where its report goes."""

    data: Dataset
    seeds: list[int]
    epochs: int
    samples: int
    out: Path
    split: str = "seeded"
    options: argparse.Namespace = field(default_factory=argparse.Namespace)  # its own options


def comparison(
    description: str,
    report: Path,
    argv: list[str] | None,
    split: str = "seeded",
    epochs: int = 20,
    configure: Callable[[argparse.ArgumentParser], None] | None = None,
) -> Comparison:
    """The command line of an equal-cost comparison on MNIST, and its data: ``--split paper``
    the papers' 50,000 / 10,000 / 10,000 images, dynamically binarized as the papers do;
    ``seeded`` the split on disk, statically binarized (the 10,000 test images split 8,000 /
    1,000 / 1,000 when only they are there). ``--quick``: the digits, one seed, one epoch, 10
    samples of z. ``configure`` adds the experiment's own options, handed back as ``options``."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--data-dir", type=Path, default=SHARED_DATA)
    parser.add_argument("--split", choices=("seeded", "paper"), default=split)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=epochs)
    parser.add_argument("--quick", action="store_true", help="the digits, 1 epoch, 1 seed")
    parser.add_argument(
        "--out", type=Path, help=f"default: {report} (a temporary folder with --quick)"
    )
    if configure is not None:
        configure(parser)
    args = parser.parse_args(argv)
    out = output_path(args.out, args.quick, report)
    if args.quick:
        data = load_dataset(DataConfig(binarize="static"))
        return Comparison(data, [0], 1, 10, out, options=args)
    binarize = "dynamic" if args.split == "paper" else "static"
    config = DataConfig(
        dataset="mnist", data_dir=str(args.data_dir), split=args.split, binarize=binarize
    )
    data = load_dataset(config)
    return Comparison(data, args.seeds, args.epochs, IWAE_SAMPLES, out, args.split, args)


def binarized(data: Dataset) -> str:
    """How the report says the images were binarized."""
    return "dynamically" if data.binarize == "dynamic" else "statically"


def every_nth(x: torch.Tensor, count: int) -> torch.Tensor:
    """``count`` rows spread evenly over ``x`` (every n-th): MNIST's first 5,000 test digits
    are the cleaner, easier half, so the first ``count`` would flatter every model."""
    step = max(1, x.shape[0] // count)
    return x[::step][:count]


def training_images(data: Dataset, count: int, seed: int = 0) -> torch.Tensor:
    """``count`` training images spread over the split, as the model sees them: binarized once,
    with ``seed``, where the data are binarized afresh in every batch (for the train–test gap)."""
    step = max(1, len(data.train) // count)
    index = torch.arange(0, len(data.train), step)[:count]
    rows = data.train.rows(index)
    if data.binarize != "dynamic":
        return rows
    return torch.bernoulli(rows, generator=torch.Generator().manual_seed(seed))


def mean_and_spread(values: list[float], digits: int = 2) -> str:
    """ "mean ± standard deviation" over seeds (the value alone for one seed)."""
    if len(values) < 2:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.fmean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def paired(a: torch.Tensor, b: torch.Tensor) -> str:
    """ "mean ± standard error" of a − b over the images both were scored on, image by image."""
    difference = a - b
    se = (difference.std() / difference.numel() ** 0.5).item()
    return f"{difference.mean().item():+.2f} ± {se:.2f}"


def paired_table(
    kind: str, by_seed: dict[str, dict[int, torch.Tensor]], base: str, paper: dict[str, str]
) -> list[str]:
    """A table of each contestant's per-image score less ``base``'s, a column per seed of
    ``base``'s (``by_seed[name][seed]``: the scores of the same images), with the paper's
    figure (``paper[name]``, already a cell) beside them; "—" where an interrupted report lacks
    a run."""
    seeds = list(by_seed[base])
    lines = [
        f"| {kind} | paper | " + " | ".join(f"seed {s}" for s in seeds) + " |",
        "|---|---:|" + "---:|" * len(seeds),
    ]
    for name, runs in by_seed.items():
        if name == base:
            continue
        cells = [
            paired(runs[s], by_seed[base][s]) if s in runs else "—"  # an interrupted report
            for s in seeds
        ]
        lines.append(f"| {name} | {paper[name]} | " + " | ".join(cells) + " |")
    return lines
