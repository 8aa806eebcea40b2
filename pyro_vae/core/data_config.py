"""The data's section of a run's configuration: which images, and how they are split into
train / validation / test; each field's option of ``pyro-vae train`` declared beside it."""

import os
from dataclasses import dataclass, field, replace
from pathlib import Path

from pyro_vae.core.options import IMAGE_SIZE, LOCATION, check, declared, require
from pyro_vae.core.train_config import MAX_SEED

BINARIZATIONS = ("none", "static", "dynamic")  # see data/datasets.py
SPLITS = ("seeded", "paper")  # how the held-out images are chosen (see data/datasets.py)
LAYOUTS = ("auto", "nchw", "nhwc")  # how a 4-d array's axes are read (see data/sources.py)


def _absolute(path: str) -> str:
    # abspath, not resolve: links stay as the user named them (and a loop of them is reported
    # where the file is read, as a missing file, instead of failing here)
    return os.path.abspath(os.path.expanduser(path))


@dataclass(frozen=True)
class DataConfig:
    """Which data, and how they are split into train / validation / test."""

    # a name from data.DATASETS; "array" and "folder" read `path`
    dataset: str = field(
        default="digits",
        metadata=declared(
            "--dataset",
            choices="datasets",
            help="Dataset to train on; --data picks 'array' or 'folder' for you.",
        ),
    )
    # the user's .npy / .npz file ("array") or image folder ("folder")
    path: str | None = field(
        default=None,
        metadata=declared(
            "--data",
            reads=Path,
            resume=LOCATION,
            follows="dataset",
            help="Your own images: a folder of image files (PNG, JPEG, ...; subfolders are "
            "classes), or a .npy/.npz array of shape (N, D), (N, H, W), (N, H, W, C) or "
            "(N, C, H, W).",
        ),
    )
    # holds <Class>/raw/*-ubyte(.gz) for the MNIST family (torchvision)
    data_dir: str = field(
        default="data",
        metadata=declared(
            "--data-dir",
            reads=Path,
            resume=LOCATION,
            help="Folder holding MNIST/raw/*-ubyte.gz and the like (torchvision's).",
        ),
    )
    # let torchvision fetch the MNIST family into data_dir first
    download: bool = field(
        default=False,
        metadata=declared("--download", help="Let torchvision fetch the MNIST family first."),
    )
    # shares of the images held out for the per-epoch validation ELBO, and for testing (unless
    # the dataset fixes its own)
    val_fraction: float = field(default=0.1, metadata=declared(low=0, high=1, strict=True))
    test_fraction: float = field(default=0.1, metadata=declared(low=0, high=1, strict=True))
    # apart from the training seed: --seed never changes the held-out images
    split_seed: int = field(default=0, metadata=declared(low=0, high=MAX_SEED))
    # "static": sample x ~ Bernoulli(pixel) once; "dynamic": every batch
    binarize: str = field(
        default="none",
        metadata=declared(
            "--binarize",
            choices=BINARIZATIONS,
            noun="binarization",
            help="Turn grey pixels into binary ones for the bernoulli likelihood: static (sampled "
            "once) or dynamic (resampled every batch).",
        ),
    )
    # "seeded": validation (and test, where the data fix none) drawn at random with split_seed;
    # "paper": the MNIST family's official test images, the last sixth of its training images for
    # validation and the rest for training, in order (MNIST: 50,000 / 10,000 / 10,000)
    split: str = field(
        default="seeded",
        metadata=declared(
            "--split",
            choices=SPLITS,
            help="Held-out images: seeded (drawn at random with a fixed seed) or paper (the MNIST "
            "family's official test images, its last 10,000 training images for validation, the "
            "first 50,000 for training).",
        ),
    )
    # Images from a folder: resized to (height, width) (None: their most common size), centre-
    # cropped to a square first where asked, converted to 1 (grey) or 3 (RGB) channels (None:
    # RGB if any image has colour).
    image_size: tuple[int, int] | None = field(
        default=None,
        metadata=declared(
            "--image-size",
            spelling=IMAGE_SIZE,
            follows="dataset",
            help="--data DIR: resize every image to this size, H or HxW.",
            shown_default="the images' most common size",
        ),
    )
    crop: bool = field(
        default=False,
        metadata=declared(
            "--crop",
            follows="dataset",
            help="--data DIR: centre-crop each image to a square first.",
        ),
    )
    channels: int | None = field(
        default=None,
        metadata=declared(
            "--channels",
            low=1,
            high=3,
            follows="dataset",
            help="--data DIR: 1 (grey) or 3 (RGB) channels.",
            shown_default="3 if any image has colour, else 1",
        ),
    )
    # a 4-d array's axes: "nchw", "nhwc", or "auto" (guessed, and said)
    layout: str = field(
        default="auto",
        metadata=declared(
            "--layout",
            choices=LAYOUTS,
            follows="dataset",
            help="--data FILE with a 4-d array: its axes, nchw or nhwc (auto guesses, and says "
            "what it assumed).",
        ),
    )

    def __post_init__(self) -> None:
        for name in ("path", "data_dir"):  # a pathlib.Path is as good as a string here
            value = getattr(self, name)
            if isinstance(value, os.PathLike):
                object.__setattr__(self, name, os.fspath(value))
        check(self)
        own = self.dataset in ("array", "folder")  # the user's own data, read from ``path``
        require(
            not own or self.path is not None,
            f"dataset {self.dataset!r} reads your own "
            f"{'images from a folder' if self.dataset == 'folder' else 'array file'}: give it "
            f"with `path` {'DIR' if self.dataset == 'folder' else 'FILE'} (which chooses the "
            "dataset itself: drop `dataset`)",
        )
        require(
            own or self.path is None,
            "`path` goes with dataset 'array' (`path` FILE) or 'folder' (`path` DIR), and only "
            "with them",
        )
        if self.image_size is not None:
            require(
                isinstance(self.image_size, list | tuple) and len(self.image_size) == 2,
                f"`image_size` must be (height, width), got {self.image_size!r}",
            )
            object.__setattr__(self, "image_size", tuple(self.image_size))  # JSON gives lists
            for size in self.image_size:
                require(
                    isinstance(size, int) and not isinstance(size, bool) and size >= 1,
                    f"each of `image_size` must be a whole number of at least 1, got {size!r}",
                )
        require(self.channels in (None, 1, 3), f"`channels` must be 1 or 3, got {self.channels!r}")
        # What only a folder of images, or only an array, has: refused elsewhere, not ignored.
        for name, applies in (("image_size", None), ("crop", False), ("channels", None)):
            require(
                getattr(self, name) == applies or self.dataset == "folder",
                f"`{name}` applies to `path` DIR (a folder of images), not to {self.dataset}: "
                "drop it",
            )
        require(
            self.layout == "auto" or self.dataset == "array",
            f"`layout` applies to `path` FILE, not to {self.dataset}: drop it",
        )
        require(
            self.val_fraction + self.test_fraction < 1,
            "`val_fraction` + `test_fraction` must leave some data for training",
        )

    def located(self, path: str | None = None, data_dir: str | None = None) -> "DataConfig":
        """The same data with absolute locations (a run stays readable from any folder), moved
        to ``path`` or ``data_dir`` where given (data that have moved since)."""
        path = path if path is not None else self.path
        data_dir = data_dir if data_dir is not None else self.data_dir
        return replace(
            self,
            path=None if path is None else _absolute(path),
            data_dir=_absolute(data_dir),
        )
