"""A trained run's data transform: new data of the run's kind, made into the rows its model reads.

Training reads a whole dataset once (data/datasets.py); a trained model meets new data one file,
folder or array at a time. ``DataTransform`` holds what the run's own loading did to its images and
does the same to new ones:

- **arrays** (NumPy or torch, or a ``.npy`` / ``.npz`` file): (N, D), (N, H, W), (N, H, W, C) or
  (N, C, H, W), read as ``--dataset array`` reads them (8-bit pixels stay 8-bit, 16-bit ones are
  scaled to [0, 1], floats taken as they are); the digits' own arrays (values 0..16, as
  ``sklearn.datasets.load_digits`` gives them) are divided by 16 as their loader does, unless
  every value already lies in [0, 1] (rows the model reads, as ``load_dataset`` gives them);
- **image files** (one file, or a folder of them, with class subfolders as ``ImageFolder`` has
  them): decoded by Pillow to the run's channels and size, centre-cropped first where the run was;
- **IDX files** (``*-ubyte`` or ``*-ubyte.gz``, MNIST's format).

Then, for a run trained on binarized images, grey values are binarized (x ~ Bernoulli(grey value),
seeded, as the run's held-out images were); images already binary are kept as they are.
"""

import logging
from dataclasses import asdict, dataclass
from math import prod
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pyro_vae.components.networks import as_data_shape
from pyro_vae.core.config import DataConfig
from pyro_vae.core.errors import UserInputError
from pyro_vae.data.datasets import _quiet, as_float
from pyro_vae.data.image_files import (
    _class_labels,
    _decode,
    _image_files,
    _in_classes,
    _on_threads,
    _refuse_unreadable,
    _Target,
    image_extensions,
)
from pyro_vae.data.sources import _check_array, load_array, read_idx

log = logging.getLogger(__name__)
LOADERS_LOG = logging.getLogger("pyro_vae.data.sources")
DIGITS_SCALE = 16.0  # scikit-learn's digits hold pixel values 0..16 (loaders.load_digits)


@dataclass(frozen=True)
class NewData:
    """New data as the model reads them, with what came with them."""

    stored: torch.Tensor  # (N, D): uint8 pixel values, bool binary pixels, or float32
    labels: torch.Tensor | None  # (N,) int64 classes, where the data carry them
    names: list[str] | None  # each row's file (relative to the folder given), for image files

    def __len__(self) -> int:
        return self.stored.shape[0]

    @property
    def x(self) -> torch.Tensor:
        """The rows as float32, as the model reads them."""
        return as_float(self.stored)


@dataclass(frozen=True)
class DataTransform:
    """What a run's loading did to its data (see the module's docstring)."""

    dataset: str  # the run's --dataset
    image_shape: tuple[int, int, int]  # (C, H, W) of the rows the model reads
    binarize: str = "none"  # the run's --binarize: "none", "static" or "dynamic"
    crop: bool = False  # image files were centre-cropped to a square before resizing
    layout: str = "auto"  # a 4-d array's axes (DataConfig.layout)
    # The classes' names where the run's data named them (an image folder's subfolders): a new
    # folder's subfolders are matched to them by name.
    class_names: tuple[str, ...] = ()

    @classmethod
    def of_run(
        cls, config: DataConfig, image_shape: tuple[int, ...], class_names: tuple[str, ...] = ()
    ) -> "DataTransform":
        return cls(
            dataset=config.dataset,
            image_shape=as_data_shape(image_shape),
            binarize=config.binarize,
            crop=config.crop,
            layout=config.layout,
            class_names=tuple(class_names),
        )

    def to_dict(self) -> dict[str, Any]:
        values = asdict(self)
        return {
            **values,
            "image_shape": list(self.image_shape),
            "class_names": list(values["class_names"]),
        }

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "DataTransform":
        try:
            return cls(
                **{
                    **values,
                    "image_shape": as_data_shape(values["image_shape"]),
                    "class_names": tuple(str(name) for name in values.get("class_names", ())),
                }
            )
        except (KeyError, TypeError, ValueError) as error:
            raise UserInputError(f"the data transform {values!r} is incomplete ({error})") from None

    @property
    def data_dim(self) -> int:
        return prod(self.image_shape)

    def __call__(
        self,
        data: "np.ndarray | torch.Tensor | str | Path",
        labels: "np.ndarray | torch.Tensor | None" = None,
        seed: int = 0,
    ) -> NewData:
        """``data`` as the model's rows: an array (with its ``labels``, if any), or the path of
        an array file, an image file, a folder of image files or an IDX file. ``seed``: the
        binarization's, for a run trained on binary images."""
        if isinstance(data, str | Path):
            new = self._read(Path(data))
        elif hasattr(data, "stored") and hasattr(data, "labels"):  # a Split of load_dataset's
            given = data.labels if labels is None else torch.as_tensor(labels)
            new = self._checked(data.stored, given, None, "the split", self.image_shape)
        else:
            array = _as_numpy(data)
            if self._one_image(array.shape):
                array = array[None]  # one image: a batch of one
            new = self._from_array(array, labels, "the array")
        return self._binarized(new, seed)

    def _one_image(self, shape: tuple[int, ...]) -> bool:
        """Whether an array of ``shape`` is one image of the run's rather than a batch."""
        channels, height, width = self.image_shape
        single = {self.image_shape, (self.data_dim,), (height, width, channels)}
        if channels == 1:
            single.add((height, width))
        return tuple(shape) in single

    # reading

    def _read(self, path: Path) -> NewData:
        if path.is_dir():
            return self._images(
                path, _in_classes(path, _image_files(path, image_extensions())), path
            )
        if not path.is_file():
            raise UserInputError(
                f"no file or folder at {path}: give an array (.npy, .npz), an image file or a "
                "folder of images"
            )
        if "ubyte" in path.name:
            return self._from_array(read_idx(path).numpy(), None, str(path))
        if path.suffix.lower() in (".npy", ".npz"):
            with _quiet(LOADERS_LOG):
                raw = load_array(DataConfig(dataset="array", path=str(path), layout=self.layout))
            labels = raw.labels if raw.num_classes else None
            return self._checked(raw.x, labels, None, str(path), raw.image_shape)
        if path.suffix.lower() in image_extensions():
            return self._images(path.parent, [path], path)
        raise UserInputError(
            f"{path} is neither an array (.npy, .npz), an IDX file nor an image file: give one "
            "of those, or a folder of images"
        )

    def _from_array(self, array: np.ndarray, labels: Any, where: str) -> NewData:
        with _quiet(LOADERS_LOG):  # how an array was read is the training run's note to give
            raw = _check_array(
                array, None if labels is None else _as_numpy(labels), Path(where), self.layout
            )
        given = None if labels is None else raw.labels
        return self._checked(raw.x, given, None, where, raw.image_shape)

    def _images(self, root: Path, files: list[Path], where: Path) -> NewData:
        if not files:
            raise UserInputError(
                f"no image files in {where}: images are recognised by their extension "
                "(.png, .jpg, ...); hidden files are skipped"
            )
        channels, height, width = self.image_shape
        if channels not in (1, 3):
            raise UserInputError(
                f"the run's data have {channels} channels, which no image file holds: give an "
                "array (.npy) of its shape instead"
            )
        target = _Target("L" if channels == 1 else "RGB", (width, height), self.crop)
        results = _on_threads(lambda path: _decode(path, target), files)
        _refuse_unreadable(root, files, results)
        changed = sum(1 for _, changes in results if changes)
        if changed:  # said, as training says it of the run's own images
            log.info(
                "converted %d of %d images in %s to the run's %s", changed, len(files), where,
                f"{channels}×{height}×{width} (channels × height × width)",
            )  # fmt: skip
        x = np.stack([pixels for pixels, _ in results]).reshape(len(files), -1)
        names = [str(path.relative_to(root)) for path in files]
        return NewData(torch.from_numpy(x), self._folder_labels(root, files, where), names)

    def _folder_labels(self, root: Path, files: list[Path], where: Path) -> torch.Tensor | None:
        """Labels from class subfolders: matched to the run's classes by name where the run's
        data named them, else numbered in sorted order (ImageFolder's); None without them."""
        if not where.is_dir() or all(path.parent == root for path in files):
            return None
        classes, labels = _class_labels(root, files)
        if not self.class_names:
            return torch.from_numpy(labels) if len(classes) > 1 else None
        unknown = [name for name in classes if name not in self.class_names]
        if unknown:
            raise UserInputError(
                f"{where} has class folders {', '.join(map(repr, unknown[:5]))} that the run "
                f"does not know (its classes: {', '.join(map(repr, self.class_names[:10]))}): "
                "name the folders as the run's classes, or put the images in one folder"
            )
        index = torch.tensor([self.class_names.index(name) for name in classes])
        return index[torch.from_numpy(labels)]

    def _checked(
        self,
        x: torch.Tensor,
        labels: torch.Tensor | None,
        names: list[str] | None,
        where: str,
        shape: tuple[int, ...],
    ) -> NewData:
        # Flat rows of the right length fit, whatever shape they were guessed to have (one row,
        # or a square: loaders._square_or_row).
        side = round(self.data_dim**0.5)
        flat = {(1, 1, self.data_dim), (1, side, side)}
        if x.shape[1] != self.data_dim or (shape != self.image_shape and shape not in flat):
            raise UserInputError(
                f"{where} holds data of shape {tuple(shape)} per row, but the run was trained "
                f"on {self.image_shape} (C, H, W): give data of the run's shape"
            )
        if self.dataset == "digits" and len(x) and 1 < x.max() <= DIGITS_SCALE:
            # the digits' own 0..16 (as floats or integers), as their loader scales them
            x = x.to(torch.float32) / DIGITS_SCALE
        return NewData(x, labels, names)

    def _binarized(self, new: NewData, seed: int) -> NewData:
        if self.binarize == "none" or new.stored.dtype == torch.bool:
            return new
        x = as_float(new.stored)
        if bool(((x == 0) | (x == 1)).all()):  # binary already: nothing to draw
            return NewData(x.bool(), new.labels, new.names)
        if bool((x < 0).any() or (x > 1).any()):
            raise UserInputError(
                f"the run binarizes grey values in [0, 1], but the data hold values in "
                f"[{x.min().item():g}, {x.max().item():g}] (after the run's scaling): give "
                "images on the run's scale"
            )
        generator = torch.Generator().manual_seed(seed)
        return NewData(torch.bernoulli(x, generator=generator).bool(), new.labels, new.names)


def _as_numpy(values: Any) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        return values.detach().cpu().numpy()
    return np.asarray(values)
