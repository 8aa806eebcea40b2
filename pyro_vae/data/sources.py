"""Where the images come from: scikit-learn's digits, the MNIST family, and the user's arrays.

Each loader takes the ``DataConfig`` and returns ``RawData``: all images flattened channel-major
to (N, D) (uint8 for 8-bit pixels, else float32), their labels, the image shape (C, H, W), and,
where the dataset's authors fixed one, the official test split. Image files and CIFAR-10 are in
``data/image_files.py``. ``data.DATASETS`` maps names to these functions.
"""

import gzip
import logging
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pyro_vae.core.config import DataConfig
from pyro_vae.core.errors import UserInputError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RawData:
    # (N, D), D = C·H·W flattened channel-major (as image.reshape(N, -1) from (N, C, H, W)):
    # uint8 pixel values 0..255 for 8-bit images (a quarter of float32's memory; data.Split
    # converts them to [0, 1] per batch), else float32.
    x: torch.Tensor
    labels: torch.Tensor  # (N,) int64 class labels 0..num_classes−1; zeros where none
    image_shape: tuple[int, int, int]  # (C, H, W) with C·H·W = D; (1, 1, D) for plain vectors
    test: tuple[torch.Tensor, torch.Tensor] | None = None  # the official test split, if any
    note: str = ""  # what the user should know about where the data came from
    num_classes: int = 0  # the labels' classes; 0: the data carry no labels
    class_names: tuple[str, ...] = ()  # their names where the data name them (a folder's)


def load_digits(config: DataConfig) -> RawData:
    """scikit-learn's 1,797 handwritten digits, 8×8 pixels; shipped with it, so offline."""
    from sklearn.datasets import load_digits as sklearn_digits  # slow import, needed only here

    bunch = sklearn_digits()
    x = torch.as_tensor(bunch.data, dtype=torch.float32) / 16.0  # pixel values are 0..16
    labels = torch.as_tensor(bunch.target, dtype=torch.int64)
    return RawData(x, labels, (1, 8, 8), num_classes=10)


# helper functions: IDX files


def read_idx(path: Path) -> torch.Tensor:
    """An IDX file (LeCun's format for MNIST), gzip-compressed or not, as a uint8 tensor.

    Checked rather than trusted: a truncated or foreign file is an error that names the file,
    not a tensor of the wrong size.
    """
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as file:
            data = file.read()
    except (OSError, EOFError, zipfile.BadZipFile) as error:  # gzip raises BadGzipFile (OSError)
        raise UserInputError(f"cannot read {path} ({error}): download it again") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise UserInputError(f"{path} is not an IDX file of unsigned bytes: download it again")
    ndim = data[3]
    header = 4 + 4 * ndim
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = header + int(np.prod(shape))
    if ndim == 0 or len(data) != expected:
        raise UserInputError(
            f"{path} is truncated or damaged: its header promises {expected} bytes of shape "
            f"{shape}, the file has {len(data)}; download it again"
        )
    if 0 in shape:
        raise UserInputError(f"{path} holds no images (shape {shape}): download it again")
    return torch.frombuffer(bytearray(data[header:]), dtype=torch.uint8).reshape(shape)


def _idx_file(raw: Path, stem: str) -> Path | None:
    for candidate in (raw / stem, raw / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _read_idx_split(raw: Path, prefix: str) -> tuple[torch.Tensor, torch.Tensor] | None:
    images = _idx_file(raw, f"{prefix}-images-idx3-ubyte")
    labels = _idx_file(raw, f"{prefix}-labels-idx1-ubyte")
    if images is None or labels is None:
        return None
    x, y = read_idx(images), read_idx(labels)
    if x.ndim != 3 or y.ndim != 1 or x.shape[0] != y.shape[0]:
        raise UserInputError(
            f"{images.name} ({tuple(x.shape)}) and {labels.name} ({tuple(y.shape)}) do not "
            "describe the same images: download them again"
        )
    return x.reshape(
        x.shape[0], -1
    ), y.long()  # uint8 pixels: data/datasets.py scales them per batch


# main loaders: the MNIST family through torchvision's folder layout

# name -> the torchvision class, whose name is also its folder: <data-dir>/<Class>/raw/*-ubyte.gz
TORCHVISION_CLASSES = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST", "kmnist": "KMNIST"}


def torchvision_datasets(files: str = "the IDX files"):
    """torchvision.datasets, for --download; ``files`` names what the user could fetch instead."""
    try:
        import torchvision.datasets
    except Exception as error:  # ImportError, or torchvision built against another torch
        raise UserInputError(
            f"`download` needs torchvision, which cannot be imported ({error}): install torch "
            "and torchvision together (pip install --force-reinstall torch torchvision), or "
            f"put {files} under `data_dir` yourself"
        ) from None
    return torchvision.datasets


def load_mnist_family(config: DataConfig) -> RawData:
    """MNIST, Fashion-MNIST or KMNIST (28×28) from ``<data_dir>/<Class>/raw``, torchvision's layout.

    With ``download``, torchvision fetches the files first. They are read here rather than by
    torchvision's classes, which need both splits extracted: this reads ``.gz`` files as shipped
    and works when only the test split is on disk.
    """
    class_name = TORCHVISION_CLASSES[config.dataset]
    root = Path(config.data_dir)
    if config.download:
        datasets = torchvision_datasets()
        for train in (True, False):
            try:
                getattr(datasets, class_name)(root, train=train, download=True)
            except Exception as error:  # URLError, RuntimeError, OSError: all mean "not fetched"
                reason = str(error).splitlines()[0] if str(error) else type(error).__name__
                raise UserInputError(
                    f"could not download {config.dataset} into {root} ({reason}): connect to "
                    f"the internet and try again, or put the IDX files in {root / class_name}/raw "
                    "yourself and drop `download`"
                ) from None
    raw = root / class_name / "raw"
    train, test = _read_idx_split(raw, "train"), _read_idx_split(raw, "t10k")
    if train is not None and test is not None:
        return RawData(*train, image_shape=(1, 28, 28), test=test, num_classes=10)
    if test is not None:
        return RawData(
            *test,
            image_shape=(1, 28, 28),
            num_classes=10,
            note=f"only the test split of {config.dataset} is in {raw} ({len(test[0])} images): "
            "training on a seeded train / validation / test split of it",
        )
    raise UserInputError(
        f"no {config.dataset} IDX files in {raw}: point `data_dir` at the folder that holds "
        f"{class_name}/raw/, or pass `download` when online"
    )


# main loaders: the user's arrays

NPY_MAGIC = b"\x93NUMPY"  # every .npy file, and every member of a .npz archive, starts so
ZIP_MAGIC = b"PK"


def load_array(config: DataConfig) -> RawData:
    """A .npy or .npz array of images: (N, D), (N, H, W), (N, H, W, C) or (N, C, H, W).

    In a .npz, the images are its only array or the one named ``x``; labels, if any, ``y``.
    A 4-d array's channel axis follows ``config.layout``, or is guessed (and said). 8-bit pixels
    stay uint8; other integers are scaled by their bit depth and floats taken as they are (see
    ``_pixel_values``).
    """
    path = Path(config.path or "")
    if not path.is_file():
        raise UserInputError(f"no data file at {path}: give a .npy or .npz file (`path` FILE)")
    with open(path, "rb") as file:
        start = file.read(len(NPY_MAGIC))
    if not start.startswith((NPY_MAGIC, ZIP_MAGIC)):
        raise UserInputError(
            f"{path} is not a NumPy .npy or .npz file (it does not start with NumPy's header): "
            "save the images with numpy.save or numpy.savez"
        )
    try:
        # allow_pickle=False: a data file is never code to execute, whatever it asks for
        loaded = np.load(path, allow_pickle=False)
        labels = None
        if isinstance(loaded, np.lib.npyio.NpzFile):
            keys = list(loaded.keys())
            if "x" not in keys and len(keys) != 1:
                raise UserInputError(
                    f"{path} holds arrays {keys}: name the images 'x' (and any labels 'y')"
                )
            name = "x" if "x" in keys else keys[0]
            if name != "x":
                log.info("%s has one array, %r: using it as the images", path, name)
            array = loaded[name]
            labels = loaded["y"] if "y" in keys else None
        else:
            array = loaded
    except UserInputError:
        raise
    except ValueError as error:
        if "pickle" in str(error):  # NumPy's words here advise allow_pickle: never follow them
            raise UserInputError(
                f"{path} holds Python objects, not numbers: save the images as a numeric array "
                "(numpy.asarray(images, dtype=numpy.float32))"
            ) from None
        raise UserInputError(f"{path} is not a readable .npy/.npz array ({error})") from None
    except (OSError, EOFError, zipfile.BadZipFile) as error:
        raise UserInputError(f"{path} is not a readable .npy/.npz array ({error})") from None
    if not isinstance(array, np.ndarray):  # a member of the archive that is no .npy
        raise UserInputError(f"{path} does not hold NumPy arrays: save it with numpy.savez")
    return _check_array(array, labels, path, config.layout)


def _check_array(array: np.ndarray, labels: np.ndarray | None, path: Path, layout: str) -> RawData:
    if array.ndim not in (2, 3, 4):
        raise UserInputError(
            f"{path} holds an array of shape {array.shape}: expected (N, D), (N, H, W), "
            "(N, H, W, C) or (N, C, H, W)"
        )
    if array.shape[0] == 0 or array.size == 0:
        raise UserInputError(f"{path} holds no data (shape {array.shape})")
    if np.iscomplexobj(array):
        raise UserInputError(
            f"{path} holds complex numbers: save the part the images are made of "
            "(numpy.real(x) or numpy.abs(x)) as a real array"
        )
    if array.dtype.kind not in "biuf":  # booleans, integers, floats: not times or text
        raise UserInputError(f"{path} holds {array.dtype} values: expected numbers")
    if array.ndim == 4:
        if _channel_layout(array.shape, layout, path) == "nhwc":
            array = array.transpose(0, 3, 1, 2)  # (N, H, W, C) -> (N, C, H, W)
        image_shape = tuple(array.shape[1:])
    elif array.ndim == 3:
        image_shape = (1, *array.shape[1:])
    else:
        image_shape = _square_or_row(array.shape[1], path)
    pixels = np.ascontiguousarray(_pixel_values(array, path))  # (N, C, H, W) channel-major
    x = torch.from_numpy(pixels).reshape(array.shape[0], -1)
    if x.is_floating_point() and not torch.isfinite(x).all():
        row = int((~torch.isfinite(x)).any(dim=1).nonzero()[0])
        if np.isfinite(array[row]).all():  # finite in float64, not once in float32
            raise UserInputError(
                f"{path} holds values beyond float32's range (±3.4e38, first in row {row}): "
                "rescale the data"
            )
        raise UserInputError(f"{path} holds NaN or infinite values (first in row {row})")
    if labels is None:
        return RawData(x, torch.zeros(len(x), dtype=torch.int64), image_shape)
    if labels.ndim != 1 or len(labels) != len(x) or not np.issubdtype(labels.dtype, np.integer):
        raise UserInputError(
            f"{path}: the labels 'y' ({labels.dtype}, shape {labels.shape}) do not label the "
            f"{len(x)} images: save one integer label per image, or no 'y'"
        )
    y = torch.as_tensor(labels.astype(np.int64))
    # Classes 0..max; a label out of that range (negative) is refused by the models that read
    # labels (data/labels.py), not here: a plain VAE only colours pictures with them.
    return RawData(x, y, image_shape, num_classes=int(y.max()) + 1 if len(y) else 0)


def _channel_layout(shape: tuple[int, ...], layout: str, path: Path) -> str:
    """Which axis of a 4-d array holds the channels: "nchw" (axis 1) or "nhwc" (axis 3).

    ``layout`` decides when the user gave one; under "auto" the axis of size 1 or 3 (grey or RGB)
    does, and the guess is logged, since a wrong one gives images that look like noise.
    """
    sizes = {"nchw": shape[1], "nhwc": shape[3]}
    if layout == "auto":
        fits = [name for name, size in sizes.items() if size in (1, 3)]
        if len(fits) == 2:
            # Either reading makes images 1 or 3 pixels wide (or high): PyTorch's order is the
            # likelier one for a library built on it, but the user must know it was a guess.
            layout = "nchw"
            log.info(
                "%s: both axis 1 and axis 3 of shape %s could hold the channels; assumed "
                "(N, C, H, W) (pass --layout nhwc if the channels come last)", path, shape,
            )  # fmt: skip
        elif len(fits) == 1:
            layout = fits[0]
            log.info(
                "%s: read shape %s as %s (the channel axis has 1 or 3 entries; --layout sets it)",
                path, shape, "(N, C, H, W)" if layout == "nchw" else "(N, H, W, C)",
            )  # fmt: skip
        elif 4 in sizes.values():
            layout = "nhwc" if sizes["nhwc"] == 4 else "nchw"  # refused as RGBA just below
        else:
            raise UserInputError(
                f"{path} holds an array of shape {shape} whose channel axis cannot be told: "
                "neither axis 1 nor axis 3 has 1 (grey) or 3 (RGB) entries; save the images as "
                "(N, C, H, W) or (N, H, W, C) with C 1 or 3, and name the order with `layout`"
            )
    channels = sizes[layout]
    if channels == 4:
        drop = "x[:, :3]" if layout == "nchw" else "x[..., :3]"
        raise UserInputError(
            f"{path} holds images with 4 channels (shape {shape}, RGBA?): drop the alpha channel "
            f"({drop}) and save the array again"
        )
    if channels not in (1, 3):
        axis = 1 if layout == "nchw" else 3
        raise UserInputError(
            f"{path} holds an array of shape {shape}, read as {layout}: its axis {axis} has "
            f"{channels} channels, but images have 1 (grey) or 3 (RGB); check `layout`"
        )
    return layout


def _pixel_values(array: np.ndarray, path: Path) -> np.ndarray:
    """The images as uint8 pixel values 0..255 if they are 8-bit, else float32.

    uint8 stays as it is (data/datasets.py scales it per batch, at a quarter of float32's memory).
    uint16 is scaled by its range (65,535) to [0, 1], as image files are. Signed integers carry no
    bit depth, so their values decide: 0..255 is taken as 8-bit and 0..65,535 as 16-bit (with a
    note), anything else is refused. Booleans are 0.0 and 1.0. Floats are kept as they are: a
    real-valued likelihood can model any scale, but see ``scale_note``.
    """
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.bool_:
        return array.astype(np.float32)
    if not np.issubdtype(array.dtype, np.integer):
        with np.errstate(over="ignore"):  # values beyond float32's range are refused after
            return array.astype(np.float32)
    if np.issubdtype(array.dtype, np.unsignedinteger) and array.dtype.itemsize == 2:
        return array.astype(np.float32) / np.float32(65535)
    low, high = int(array.min()), int(array.max())
    if low < 0 or high > 65535:
        raise UserInputError(
            f"{path} holds {array.dtype} values from {low} to {high}, which are not pixel "
            "intensities of 8 or 16 bits: save them as floats on the scale you mean"
        )
    log.info(
        "%s holds %s values from %d to %d: read as %s", path, array.dtype, low, high,
        "8-bit images" if high <= 255 else "16-bit images, scaled to [0, 1]",
    )  # fmt: skip
    if high <= 255:
        return array.astype(np.uint8)
    return array.astype(np.float32) / np.float32(65535)


def _square_or_row(dim: int, path: Path) -> tuple[int, int, int]:
    """How to draw a flat vector: a square grey image if D is a square number, else one row."""
    side = round(dim**0.5)
    if side * side != dim:
        return (1, 1, dim)
    log.info("%s: read rows of %d values as %d×%d grey images", path, dim, side, side)
    return (1, side, side)
