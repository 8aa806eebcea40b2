"""Datasets as tensors: loaded once, split once with a fixed seed, batched by shuffled index.

Each dataset is a loader function in ``DATASETS``; adding a dataset means writing one such function.
Images are flattened to (N, D) rows, D = C·H·W channel-major; ``image_shape`` remembers (C, H, W)
for the networks and the pictures. 8-bit images are held as uint8, on the device too (a quarter of
float32's memory: 200,000 RGB images of 64×64 take 2.5 GB instead of 9.8 GB), and become float32
in [0, 1] a batch at a time; other data are float32 as they are.

Binarization, for the Bernoulli likelihood, follows the IWAE literature: ``static`` draws every
pixel x ~ Bernoulli(grey value) once, with a fixed seed; ``dynamic`` draws the training images
afresh in every batch (a regulariser) and the validation and test images once.
"""

import itertools
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from math import prod

import torch

from pyro_vae.components.networks import as_data_shape
from pyro_vae.core.config import DataConfig
from pyro_vae.core.errors import UserInputError
from pyro_vae.data.image_files import load_cifar10, load_folder
from pyro_vae.data.sources import (
    TORCHVISION_CLASSES,
    RawData,
    load_array,
    load_digits,
    load_mnist_family,
)


def as_float(stored: torch.Tensor) -> torch.Tensor:
    """Stored rows as the model sees them: uint8 pixel values k as k/255, floats as they are."""
    if stored.dtype == torch.uint8:
        return stored.to(torch.float32).div_(255.0)
    if stored.dtype == torch.bool:  # binarized images
        return stored.to(torch.float32)
    return stored


@dataclass(frozen=True)
class Split:
    stored: torch.Tensor  # (N, D): uint8 pixel values 0..255, bool binary pixels, or float32
    labels: torch.Tensor  # (N,) int64 class labels (zeros where the data have none)

    def __len__(self) -> int:
        return self.stored.shape[0]

    @property
    def x(self) -> torch.Tensor:
        """All rows as float32 (a new tensor for uint8 data: take ``rows`` or ``chunks`` where
        the split may be large)."""
        return as_float(self.stored)

    def rows(self, index: torch.Tensor | slice) -> torch.Tensor:
        """The rows at ``index`` as float32."""
        return as_float(self.stored[index])

    def chunks(self, size: int = 4096) -> Iterator[torch.Tensor]:
        """All rows as float32, ``size`` at a time."""
        for chunk in self.stored.split(size):
            yield as_float(chunk)


@dataclass(frozen=True)
class Dataset:
    name: str
    image_shape: tuple[int, int, int]  # (C, H, W); prod(image_shape) == D
    train: Split
    val: Split
    test: Split
    binarize: str = "none"  # under "dynamic", train.x holds grey values, binarized per batch
    note: str = ""  # what the user should know about the data's origin (see RawData.note)
    num_classes: int = 0  # the labels' classes, 0..num_classes−1; 0: the data have no labels
    class_names: tuple[str, ...] = ()  # the classes' names, where the data name them

    @property
    def data_dim(self) -> int:
        return prod(self.image_shape)

    def to(self, device: torch.device) -> "Dataset":
        """The same dataset with every tensor on ``device`` (done once, not per batch)."""

        def move(split: Split) -> Split:
            return Split(split.stored.to(device), split.labels.to(device))

        return replace(self, train=move(self.train), val=move(self.val), test=move(self.test))

    def train_batch(self, index: torch.Tensor) -> torch.Tensor:
        """The training images at ``index``, binarized afresh under ``dynamic``."""
        batch = self.train.rows(index)
        return torch.bernoulli(batch) if self.binarize == "dynamic" else batch

    def modelled_splits(self) -> list[Split]:
        """The splits as the model sees them (a dynamically binarized train split never is)."""
        if self.binarize == "dynamic":
            return [self.val, self.test]
        return [self.train, self.val, self.test]


log = logging.getLogger(__name__)

# The one place to add a dataset: a name and a function from DataConfig to RawData
# (data/sources.py).
DATASETS: dict[str, Callable[[DataConfig], RawData]] = {
    "digits": load_digits,
    **dict.fromkeys(TORCHVISION_CLASSES, load_mnist_family),
    "array": load_array,
    "folder": load_folder,
    "cifar10": load_cifar10,
}


def load_dataset(config: DataConfig) -> Dataset:
    """Load ``config.dataset`` and split it as ``config.split`` says.

    Seeded (the default), the validation split, and the test split unless the dataset comes with
    its own, are drawn from the images at random with ``config.split_seed``, the same way for
    every training seed; ``paper`` is the papers' fixed split of the MNIST family.
    """
    if config.dataset not in DATASETS:
        raise UserInputError(
            f"unknown dataset {config.dataset!r}: choose one of {', '.join(DATASETS)}"
        )
    raw = DATASETS[config.dataset](config)
    if raw.note:
        log.warning(raw.note)
    if config.split == "paper":
        val, test, train = _paper_split(raw, config)
    else:
        val, test, train = _seeded_split(raw, config)
    grey, x = raw.x, raw.x
    test_x, test_labels = raw.test if raw.test is not None else (None, raw.labels[test])
    if config.binarize != "none":
        # Its own generator: the binary images depend on the split seed only, never on --seed.
        # Binary images are stored as bool (a byte each); grey ones stay as they are stored.
        generator = torch.Generator().manual_seed(config.split_seed)
        x = _binarize(as_float(grey), config, generator)
        test_x = None if test_x is None else _binarize(as_float(test_x), config, generator)
    return Dataset(
        name=config.dataset,
        image_shape=raw.image_shape,
        train=Split((grey if config.binarize == "dynamic" else x)[train], raw.labels[train]),
        val=Split(x[val], raw.labels[val]),
        test=Split(x[test] if test_x is None else test_x, test_labels),
        binarize=config.binarize,
        note=raw.note,
        num_classes=raw.num_classes,
        class_names=raw.class_names,
    )


Indices = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # validation, test, training rows


def _seeded_split(raw: RawData, config: DataConfig) -> Indices:
    """Validation (and test, where the data fix none) drawn at random with the split seed."""
    n = raw.x.shape[0]
    order = torch.randperm(n, generator=torch.Generator().manual_seed(config.split_seed))
    n_val = round(n * config.val_fraction)
    n_test = 0 if raw.test is not None else round(n * config.test_fraction)
    # Two held-out images at least: one has no standard error (and no spread for a picture).
    if n_val < 2 or n - n_val - n_test < 1 or (raw.test is None and n_test < 2):
        # round(m·f) ≥ 2 from about m = 1.5/f on: start there, not at n (f may be tiny)
        own_test = raw.test is None
        smallest = min(config.val_fraction, config.test_fraction if own_test else 1.0)
        start = max(n, int(1.5 / smallest) - 1)
        needed = next(m for m in itertools.count(start) if _split_sizes_fit(m, config, own_test))
        raise UserInputError(
            f"{n} images are too few for a train / validation / test split with fractions "
            f"{config.val_fraction} and {config.test_fraction}, which needs at least 2 "
            f"validation and 2 test images: give at least {needed} images"
        )
    return order[:n_val], order[n_val : n_val + n_test], order[n_val + n_test :]


def _paper_split(raw: RawData, config: DataConfig) -> Indices:
    """The papers' split of the MNIST family: the official test images for testing, the last
    sixth of the training images for validation (MNIST's last 10,000 of 60,000), the rest in
    order for training (the first 50,000)."""
    if config.dataset not in TORCHVISION_CLASSES or raw.test is None:
        where = f" in {config.data_dir}" if config.dataset in TORCHVISION_CLASSES else ""
        raise UserInputError(
            f"`split` paper takes the MNIST family's official training and test files, which "
            f"{config.dataset}{where} does not have: use `split` seeded"
            + (", or put both splits' IDX files there" if where else "")
        )
    n = raw.x.shape[0]
    n_val = n // 6
    if n_val < 2:
        raise UserInputError(
            f"{n} training images are too few for `split` paper, which keeps a sixth of them "
            "(2 at least) for validation: give 12 at least, or use `split` seeded"
        )
    rows = torch.arange(n)
    return rows[n - n_val :], rows[:0], rows[: n - n_val]


@contextmanager
def _quiet(*loggers: logging.Logger) -> Iterator[None]:
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def _split_sizes_fit(n: int, config: DataConfig, own_test: bool) -> bool:
    n_val = round(n * config.val_fraction)
    n_test = round(n * config.test_fraction) if own_test else 0
    return n_val >= 2 and n - n_val - n_test >= 1 and (not own_test or n_test >= 2)


def _binarize(x: torch.Tensor, config: DataConfig, generator: torch.Generator) -> torch.Tensor:
    """x ~ Bernoulli(grey value) per pixel."""
    low, high = x.min().item(), x.max().item()
    if low < 0 or high > 1:
        raise UserInputError(
            f"binarizing needs grey values in [0, 1], but {config.dataset} holds values in "
            f"[{low:g}, {high:g}]: rescale the data or drop the binarization"
        )
    return torch.bernoulli(x, generator=generator).bool()


def shuffled_batches(x: torch.Tensor, batch_size: int) -> Iterator[torch.Tensor]:
    """Mini-batches of ``x`` in a fresh random order drawn from torch's global RNG on x's device.

    Indexing a tensor that already sits on the device replaces a per-sample DataLoader: no
    collation, no worker processes, no host-to-device copy per step. The last batch may be smaller.
    """
    for index in torch.randperm(x.shape[0], device=x.device).split(batch_size):
        yield x[index]


def load_run_data(
    config: DataConfig,
    image_shape: tuple[int, ...],
    path: str | None = None,
    data_dir: str | None = None,
    num_images: int | None = None,
) -> Dataset:
    """A trained run's dataset, from where its config says or from where it has moved to
    (``path`` for a data file, ``data_dir`` for the MNIST family), checked to be images of the
    shape the run was trained on."""
    if path is not None and config.dataset not in ("array", "folder"):
        raise UserInputError(
            f"the run was trained on {config.dataset}, not on a data file or folder: drop --data"
            + (" (point --data-dir at its folder)" if config.dataset != "digits" else "")
        )
    # The notes of reading the data (sizes converted, a layout assumed) were the training run's
    # to give; every later command that reads them again would only repeat them.
    with _quiet(
        log,
        logging.getLogger("pyro_vae.data.sources"),
        logging.getLogger("pyro_vae.data.image_files"),
    ):
        data = load_dataset(config.located(path, data_dir))
    if tuple(data.image_shape) != as_data_shape(image_shape):
        where = path or data_dir or config.path or config.data_dir
        raise UserInputError(
            f"the data at {where} are images of shape {tuple(data.image_shape)}, but the run was "
            f"trained on shape {as_data_shape(image_shape)}: point --data or --data-dir at the "
            "run's data"
        )
    held = len(data.train) + len(data.val) + len(data.test)
    if num_images is not None and held != num_images:
        where = path or data_dir or config.path or config.data_dir
        raise UserInputError(
            f"the data at {where} hold {held} images, but the run was trained on {num_images}: "
            "their split would differ (test images among the training ones); point --data or "
            "--data-dir at the run's images as they were"
        )
    return data
