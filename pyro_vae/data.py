"""Datasets as tensors: loaded once, split once with a fixed seed, batched by shuffled index.

Each dataset is a loader function in ``DATASETS``; adding a dataset means writing one such function.
Images are flattened to (N, D) float32 tensors with values in [0, 1]; ``image_shape`` remembers
their height and width for pictures.
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

    @property
    def data_dim(self) -> int:
        return prod(self.image_shape)

    def to(self, device: torch.device) -> "Dataset":
        """The same dataset with every tensor on ``device`` (done once, not per batch)."""

        def move(split: Split) -> Split:
            return Split(split.x.to(device), split.labels.to(device))

        splits = move(self.train), move(self.val), move(self.test)
        return Dataset(self.name, self.image_shape, *splits)


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
    return Dataset(
        name=config.dataset,
        image_shape=image_shape,
        train=Split(x[train], labels[train]),
        val=Split(x[val], labels[val]),
        test=Split(x[test], labels[test]),
    )


def shuffled_batches(x: torch.Tensor, batch_size: int) -> Iterator[torch.Tensor]:
    """Mini-batches of ``x`` in a fresh random order drawn from torch's global RNG on x's device.

    Indexing a tensor that already sits on the device replaces a per-sample DataLoader: no
    collation, no worker processes, no host-to-device copy per step. The last batch may be smaller.
    """
    for index in torch.randperm(x.shape[0], device=x.device).split(batch_size):
        yield x[index]
