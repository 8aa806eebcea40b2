"""Datasets as tensors: loaded once, split once with a fixed seed, batched by shuffled index.

Each dataset is a loader function in ``DATASETS``; adding a dataset means writing one such function.
Images are flattened to (N, D) float32 tensors with values in [0, 1]; ``image_shape`` remembers
their height and width for pictures.

Binarization, for the Bernoulli likelihood, follows the IWAE literature: ``static`` draws every
pixel x ~ Bernoulli(grey value) once, with a fixed seed; ``dynamic`` draws the training images
afresh in every batch (a regulariser) and the validation and test images once.
"""

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from math import prod

import torch

from pyro_vae.config import DataConfig
from pyro_vae.errors import UserInputError


@dataclass(frozen=True)
class Split:
    x: torch.Tensor  # (N, D) float32 in [0, 1]
    labels: torch.Tensor  # (N,) int64 class labels, for pictures only


@dataclass(frozen=True)
class Dataset:
    name: str
    image_shape: tuple[int, ...]  # (H, W); prod(image_shape) == D
    train: Split
    val: Split
    test: Split
    binarize: str = "none"  # under "dynamic", train.x holds grey values, binarized per batch

    @property
    def data_dim(self) -> int:
        return prod(self.image_shape)

    def to(self, device: torch.device) -> "Dataset":
        """The same dataset with every tensor on ``device`` (done once, not per batch)."""

        def move(split: Split) -> Split:
            return Split(split.x.to(device), split.labels.to(device))

        splits = move(self.train), move(self.val), move(self.test)
        return Dataset(self.name, self.image_shape, *splits, binarize=self.binarize)

    def train_batches(self, batch_size: int) -> Iterator[torch.Tensor]:
        """One epoch of shuffled training mini-batches, binarized afresh under ``dynamic``."""
        for batch in shuffled_batches(self.train.x, batch_size):
            yield torch.bernoulli(batch) if self.binarize == "dynamic" else batch

    def modelled_splits(self) -> list[Split]:
        """The splits as the model sees them (a dynamically binarized train split never is)."""
        if self.binarize == "dynamic":
            return [self.val, self.test]
        return [self.train, self.val, self.test]


# A loader returns all images (N, D) in [0, 1], their labels (N,), and the image shape (H, W).
Loader = Callable[[DataConfig], tuple[torch.Tensor, torch.Tensor, tuple[int, ...]]]


def load_digits(config: DataConfig) -> tuple[torch.Tensor, torch.Tensor, tuple[int, ...]]:
    """scikit-learn's 1,797 handwritten digits, 8×8 pixels; shipped with it, so offline."""
    from sklearn.datasets import load_digits as sklearn_digits  # slow import, needed only here

    bunch = sklearn_digits()
    x = torch.as_tensor(bunch.data, dtype=torch.float32) / 16.0  # pixel values are 0..16
    return x, torch.as_tensor(bunch.target, dtype=torch.int64), (8, 8)


DATASETS: dict[str, Loader] = {
    "digits": load_digits,
}


def load_dataset(config: DataConfig) -> Dataset:
    """Load ``config.dataset``; split it into train / validation / test by ``config.split_seed``."""
    if config.dataset not in DATASETS:
        raise UserInputError(
            f"unknown dataset {config.dataset!r}: choose one of {', '.join(DATASETS)}"
        )
    x, labels, image_shape = DATASETS[config.dataset](config)
    n = x.shape[0]
    order = torch.randperm(n, generator=torch.Generator().manual_seed(config.split_seed))
    n_val, n_test = round(n * config.val_fraction), round(n * config.test_fraction)
    if min(n_val, n_test, n - n_val - n_test) < 1:
        raise UserInputError(
            f"{n} images are too few for a train / validation / test split with fractions "
            f"{config.val_fraction} and {config.test_fraction}"
        )
    val, test, train = order[:n_val], order[n_val : n_val + n_test], order[n_val + n_test :]
    binary = _binarize(x, config) if config.binarize != "none" else x
    return Dataset(
        name=config.dataset,
        image_shape=image_shape,
        train=Split((x if config.binarize == "dynamic" else binary)[train], labels[train]),
        val=Split(binary[val], labels[val]),
        test=Split(binary[test], labels[test]),
        binarize=config.binarize,
    )


def _binarize(x: torch.Tensor, config: DataConfig) -> torch.Tensor:
    """x ~ Bernoulli(grey value) per pixel, drawn from the split seed's own generator."""
    low, high = x.min().item(), x.max().item()
    if low < 0 or high > 1:
        raise UserInputError(
            f"binarizing needs grey values in [0, 1], but {config.dataset} holds values in "
            f"[{low:g}, {high:g}]: rescale the data or drop the binarization"
        )
    # Its own generator: the binary images depend on the split seed only, never on --seed.
    return torch.bernoulli(x, generator=torch.Generator().manual_seed(config.split_seed))


def shuffled_batches(x: torch.Tensor, batch_size: int) -> Iterator[torch.Tensor]:
    """Mini-batches of ``x`` in a fresh random order drawn from torch's global RNG on x's device.

    Indexing a tensor that already sits on the device replaces a per-sample DataLoader: no
    collation, no worker processes, no host-to-device copy per step. The last batch may be smaller.
    """
    for index in torch.randperm(x.shape[0], device=x.device).split(batch_size):
        yield x[index]
