"""Images from files: a folder of image files (torchvision's ImageFolder layout) and CIFAR-10.

Pillow decodes every file; nothing here parses an image format by hand. A folder is read in two
passes over its files, both on threads (Pillow releases the GIL while it decodes): the first reads
only each file's header (size and mode), which fixes the size and channels every image gets; the
second decodes each image and converts it straight to its final uint8 array. Memory so holds the
dataset once, at its final size, never a folder of full-size photos.

CIFAR-10's batches are Python pickles, read by an unpickler that builds NumPy arrays and nothing
else: a data file is never code to run.
"""

import codecs
import logging
import os
import pickle
import struct
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageFile

from pyro_vae.core.config import DataConfig
from pyro_vae.core.errors import UserInputError
from pyro_vae.data.sources import RawData, torchvision_datasets

log = logging.getLogger(__name__)

# What Pillow raises for a file it cannot decode: unknown format (UnidentifiedImageError, an
# OSError), truncated data (OSError), bad header values (ValueError, SyntaxError, struct.error,
# EOFError), an image too large to be honest (DecompressionBombError).
DECODE_ERRORS = (
    Image.UnidentifiedImageError,
    OSError,
    ValueError,
    SyntaxError,
    EOFError,
    struct.error,
    Image.DecompressionBombError,
)
SIXTEEN_BIT_MODES = ("I", "I;16", "I;16L", "I;16B", "I;16N")  # Pillow's modes for 16-bit grey
PALETTE_MODES = ("P", "PA")  # grey or colour, as their palette says
# Past this, a folder of photos read at their own size (12 megapixels, say), or at a size asked for
# by mistake, would fill the memory before anything could say so: a smaller size is asked for.
MAX_DECODED_BYTES = 4 * 2**30
COMMON_EXTENSIONS = ".png, .jpg, .jpeg, .bmp, .gif, .tif, .tiff, .webp"  # for messages only


# helper functions: finding the files


def image_extensions() -> set[str]:
    """The file extensions (".png") of the formats Pillow can decode by itself.

    Pillow also registers formats it only identifies: stubs that need a handler from elsewhere
    (HDF5, GRIB, BUFR, WMF off Windows), MPEG video, and EPS (which needs Ghostscript). A file of
    those in an image folder is more likely data of another kind than an image.
    """
    extensions = set()
    for extension, format_id in Image.registered_extensions().items():  # imports every plugin
        factory = Image.OPEN.get(format_id, (None,))[0]
        if factory is None or format_id in ("MPEG", "EPS"):
            continue  # write-only formats (PDF), and the two Pillow cannot decode itself
        if isinstance(factory, type) and issubclass(factory, ImageFile.StubImageFile):
            continue
        extensions.add(extension.lower())
    return extensions


def _image_files(root: Path, extensions: set[str]) -> list[Path]:
    """Image files under ``root``, hidden files and folders skipped, in sorted order."""
    files, seen = [], set()
    # followlinks, as ImageFolder does (class folders are often links), with a guard against a
    # link to a folder above it, which os.walk would follow forever
    for folder, subfolders, names in os.walk(root, followlinks=True):
        status = os.stat(folder)
        if (status.st_dev, status.st_ino) in seen:
            subfolders.clear()
            continue
        seen.add((status.st_dev, status.st_ino))
        subfolders[:] = [name for name in subfolders if not name.startswith(".")]
        files += [
            Path(folder, name)
            for name in names
            if not name.startswith(".") and Path(name).suffix.lower() in extensions
        ]
    return sorted(files)  # the images' order, and so the seeded split, never depends on the disk


def _in_classes(root: Path, files: list[Path]) -> list[Path]:
    """``files`` as torchvision's ImageFolder takes them: where some lie in subfolders (the
    classes), those; the ones directly in ``root`` belong to no class and are left out, with one
    note. With no subfolders at all, every file (one class)."""
    beside = [path for path in files if path.parent == root]
    if not beside or len(beside) == len(files):
        return files
    log.info(
        "skipped %d image %s directly in %s, beside its class folders: as in torchvision's "
        "ImageFolder, each class is a subfolder; move %s into one to train on %s",
        len(beside), "file" if len(beside) == 1 else "files", root,
        "it" if len(beside) == 1 else "them", "it" if len(beside) == 1 else "them",
    )  # fmt: skip
    return [path for path in files if path.parent != root]


def _class_labels(root: Path, files: list[Path]) -> tuple[list[str], np.ndarray]:
    """ImageFolder's labels: the top-level subfolder names the class, classes sorted; files
    directly in ``root`` (only where there are no subfolders, ``_in_classes``) get label 0."""
    names = [path.relative_to(root).parts[0] if path.parent != root else "" for path in files]
    classes = sorted(set(names))
    index = {name: label for label, name in enumerate(classes)}
    return classes, np.array([index[name] for name in names], dtype=np.int64)


# helper functions: decoding and converting, one image per call (run on threads)


@dataclass(frozen=True)
class _Header:
    mode: str  # Pillow's mode: "L", "RGB", "I;16", "P", ...
    size: tuple[int, int]  # (width, height), as Pillow gives sizes
    colour: bool  # whether the image has colour (a palette image: whether its pixels do)


@dataclass(frozen=True)
class _Target:
    mode: str  # "L" or "RGB"
    size: tuple[int, int]  # (width, height)
    crop: bool  # centre-crop to a square before resizing


def _reason(error: Exception, path: Path) -> str:
    """Why Pillow could not read ``path``, in a few words (its messages repeat the path)."""
    if isinstance(error, Image.UnidentifiedImageError):
        return "not an image format Pillow knows"
    if isinstance(error, Image.DecompressionBombError):
        return "too many pixels to be a real image"
    text = str(error).splitlines()[0] if str(error) else type(error).__name__
    return text.replace(f"'{path}'", "").replace(str(path), "").strip(" :") or type(error).__name__


def _read_header(path: Path) -> _Header | str:
    """The image's mode and size, or why it cannot be read; decodes only palette images."""
    try:
        with Image.open(path) as image:
            colour = Image.getmodebase(image.mode) == "RGB"
            if image.mode in PALETTE_MODES:
                # A palette says nothing of which of its colours are used: look at the pixels.
                rgb = np.asarray(image.convert("RGB"))
                colour = bool(
                    (rgb[..., 0] != rgb[..., 1]).any() or (rgb[..., 1] != rgb[..., 2]).any()
                )
            return _Header(image.mode, image.size, colour)
    except DECODE_ERRORS as error:
        return _reason(error, path)


def _cropped_size(size: tuple[int, int], crop: bool) -> tuple[int, int]:
    side = min(size)
    return (side, side) if crop else size


def _convert(image: Image.Image, target: _Target) -> tuple[np.ndarray, list[str]]:
    """The image as a (C, H, W) uint8 array of the target's mode and size, and what changed."""
    changes = []
    mode = image.mode
    if mode in SIXTEEN_BIT_MODES:
        # Scaled, not clipped: Pillow's own conversion to "L" clips every value above 255 to
        # white. round(v / 257) maps 0..65535 onto 0..255; (v + 128) // 257 is it in integers.
        wide = np.asarray(image).astype(np.int64)
        if wide.size and (wide.min() < 0 or wide.max() > 65535):  # mode I holds 32-bit integers
            raise ValueError(
                f"holds integer pixels from {wide.min()} to {wide.max()}, beyond 16 bits"
            )
        image = Image.fromarray(((wide + 128) // 257).clip(0, 255).astype(np.uint8))
        changes.append("16-bit")
        mode = "L"  # the reduction is the mode change (to grey; to RGB is counted below)
    if image.mode != target.mode:
        image = image.convert(target.mode)  # drops alpha; maps palettes, CMYK, YCbCr to RGB
    if mode != target.mode:
        changes.append(f"{mode}>{target.mode}")
    if target.crop and image.width != image.height:
        side = min(image.size)
        left, top = (image.width - side) // 2, (image.height - side) // 2
        image = image.crop((left, top, left + side, top + side))
        changes.append("cropped")
    if image.size != target.size:
        # BILINEAR rather than BOX: Pillow widens its filters when it shrinks, so bilinear is
        # antialiased downwards too, and it interpolates upwards, where BOX repeats pixels in
        # blocks. reducing_gap=None resamples exactly, in one step.
        image = image.resize(target.size, Image.Resampling.BILINEAR, reducing_gap=None)
        changes.append("resized")
    pixels = np.asarray(image)  # (H, W) or (H, W, 3)
    pixels = pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)  # (C, H, W)
    return np.ascontiguousarray(pixels), changes


def _decode(path: Path, target: _Target) -> tuple[np.ndarray, list[str]] | str:
    """The converted image (see ``_convert``), or why it cannot be read."""
    try:
        with Image.open(path) as image:
            # load() decodes now, so a truncated file fails here; LOAD_TRUNCATED_IMAGES stays
            # off, as a global setting would let truncated images through everywhere.
            image.load()
            return _convert(image, target)
    except DECODE_ERRORS as error:
        return _reason(error, path)


def _on_threads(function: Callable[[Any], Any], items: list[Any]) -> list[Any]:
    with ThreadPoolExecutor() as pool:
        return list(pool.map(function, items))  # in the order of items, whatever finishes first


def _refuse_unreadable(root: Path, files: list[Path], results: list[Any]) -> None:
    failed = [
        (path, result)
        for path, result in zip(files, results, strict=True)
        if isinstance(result, str)
    ]
    if not failed:
        return
    named = ", ".join(f"{path.relative_to(root)} ({why})" for path, why in failed[:3])
    more = f" and {len(failed) - 3} more" if len(failed) > 3 else ""
    raise UserInputError(
        f"{len(failed)} of {len(files)} image files in {root} cannot be decoded: {named}{more}; "
        "remove or replace them"
    )


def _note(root: Path, config: DataConfig, target: _Target, changes: list[list[str]]) -> str:
    """One line saying how many images were converted, and how; "" when none was."""
    converted = sum(1 for change in changes if change)
    if not converted:
        return ""
    counts = Counter(kind for change in changes for kind in change)
    width, height = target.size
    why = (
        "--image-size" if config.image_size is not None else "sizes differed; --image-size sets one"
    )
    parts = []
    if counts["resized"]:
        parts.append(f"{counts['resized']} resized to {height}×{width} ({why})")
    if counts["cropped"]:
        parts.append(f"{counts['cropped']} centre-cropped to a square (--crop)")
    if counts["16-bit"]:
        parts.append(f"{counts['16-bit']} from 16 to 8 bits (value / 257)")
    for kind, count in sorted(counts.items()):
        if ">" in kind:
            source, goal = kind.split(">")
            source = "1-bit" if source == "1" else source  # Pillow's name for black and white
            parts.append(f"{count} from {source} to {goal}")
    return f"converted {converted} of {len(changes)} images in {root}: {', '.join(parts)}"


# main loaders: a folder of image files


def load_folder(config: DataConfig) -> RawData:
    """Every image file under ``config.path``, labelled by its top-level subfolder (ImageFolder's
    convention), as uint8 (N, C·H·W) with image_shape (C, H, W).

    Files are recognised by extension and decoded by Pillow; hidden files and folders are skipped.
    Each image gets ``config.channels`` channels (by default 3 if any image has colour, else 1;
    alpha is dropped), 16-bit images are scaled to 8 bits, and all are resized to
    ``config.image_size`` (by default the most common size), centre-cropped to a square first
    with ``config.crop``. The note counts what was converted. EXIF orientation is not applied,
    as torchvision's ImageFolder does not apply it either.
    """
    root = Path(config.path or "")
    if not root.is_dir():
        raise UserInputError(
            f"{root} is not a folder: give a directory of image files (`path` DIR), with one "
            "subfolder per class if they have classes"
        )
    files = _image_files(root, image_extensions())
    if not files:
        raise UserInputError(
            f"no image files in {root} or its subfolders: images are recognised by their "
            f"extension ({COMMON_EXTENSIONS} and the other formats Pillow reads); hidden files "
            "are skipped"
        )
    files = _in_classes(root, files)
    classes, labels = _class_labels(root, files)

    headers = _on_threads(_read_header, files)  # a _Header, or why the file cannot be read
    good = [i for i, header in enumerate(headers) if isinstance(header, _Header)]
    if not good:
        _refuse_unreadable(root, files, headers)
    target = _choose_target(config, [headers[i] for i in good], [files[i] for i in good])
    width, height = target.size
    x = np.empty((len(files), len(target.mode), height, width), dtype=np.uint8)  # (N, C, H, W)

    def decode_into_x(i: int) -> list[str] | str:
        result = _decode(files[i], target)
        if isinstance(result, str):
            return result
        x[i], changes = result  # each thread writes its own rows: no lock needed
        return changes

    # Decoded even when some headers were unreadable, so that one error names every bad file
    # (a truncated file shows only now), not one kind of fault per run.
    results = list(headers)
    for i, result in zip(good, _on_threads(decode_into_x, good), strict=True):
        results[i] = result
    _refuse_unreadable(root, files, results)
    named = "" if classes == [""] else ": " + ", ".join(repr(name) for name in classes[:10])
    log.info(
        "read %d images of %d %s from %s%s%s", len(files), len(classes),
        "class" if len(classes) == 1 else "classes", root, named,
        ", ..." if len(classes) > 10 else "",
    )  # fmt: skip
    return RawData(
        x=torch.from_numpy(x.reshape(len(x), -1)),
        labels=torch.from_numpy(labels),
        image_shape=tuple(x.shape[1:]),
        note=_note(root, config, target, results),
        num_classes=len(classes) if len(classes) > 1 else 0,  # one class: no labels to learn
        class_names=tuple(classes) if len(classes) > 1 else (),
    )


def _choose_target(config: DataConfig, headers: list[_Header], files: list[Path]) -> _Target:
    """The mode and size every image gets, from the options or else from the images' headers."""
    floats = [path for path, header in zip(files, headers, strict=True) if header.mode == "F"]
    if floats:
        others = f" (and {len(floats) - 1} more)" if len(floats) > 1 else ""
        raise UserInputError(
            f"{floats[0]}{others} holds floating-point pixels (Pillow's mode F), which have no "
            "fixed range to map onto 0..255: save the images as 8- or 16-bit files, or as a "
            "float array in a .npy file (`path` FILE)"
        )
    channels = config.channels or (3 if any(header.colour for header in headers) else 1)
    if config.image_size is not None:
        height, width = config.image_size
        size = (width, height)
    else:  # ties go to the size met first in sorted order, so the choice is reproducible
        sizes = Counter(_cropped_size(header.size, config.crop) for header in headers)
        size = sizes.most_common(1)[0][0]
    decoded = len(headers) * channels * size[0] * size[1]  # bytes, as uint8
    if decoded > MAX_DECODED_BYTES:
        which = "`image_size`" if config.image_size is not None else "their own size"
        raise UserInputError(
            f"the {len(headers):,} images at {size[1]}×{size[0]} ({which}) would take "
            f"{decoded / 2**30:,.1f} GiB decoded: give a smaller `image_size` (64, say, with "
            "`crop` for a square)"
        )
    return _Target("L" if channels == 1 else "RGB", size, config.crop)


# main loaders: CIFAR-10 in torchvision's layout

CIFAR_FOLDER = "cifar-10-batches-py"  # <data_dir>/cifar-10-batches-py/, as torchvision extracts it
CIFAR_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR_TEST = "test_batch"
CIFAR_IMAGE_SHAPE = (3, 32, 32)


def _numpy_globals() -> dict[tuple[str, str], Any]:
    """What a pickled NumPy array may name, and nothing else.

    The functions are taken from NumPy itself, so one object answers both the NumPy 1.x name
    (``numpy.core``, as in CIFAR-10's own files) and the 2.x one (``numpy._core``), without
    importing the deprecated module.
    """
    reconstruct = np.zeros(1).__reduce__()[0]  # protocols 0 to 4
    frombuffer = np.zeros(1).__reduce_ex__(5)[0]  # protocol 5
    allowed = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype}
    for package in ("numpy.core", "numpy._core"):
        allowed[(f"{package}.multiarray", "_reconstruct")] = reconstruct
        allowed[(f"{package}.numeric", "_frombuffer")] = frombuffer
    # Python 3 writes bytes in protocols 0 to 2 as _codecs.encode(text, "latin1")
    allowed[("_codecs", "encode")] = codecs.encode
    return allowed


class _BatchUnpickler(pickle.Unpickler):
    """An unpickler that builds NumPy arrays, dicts, lists and numbers, and refuses any other
    class or function: an unrestricted one would run whatever code the file names."""

    allowed = _numpy_globals()

    def __init__(self, file: Any, path: Path) -> None:
        # latin1, as torchvision reads them: CIFAR-10 was pickled by Python 2, whose byte strings
        # NumPy expects decoded so
        super().__init__(file, encoding="latin1")
        self.path = path

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self.allowed:
            return self.allowed[(module, name)]
        raise UserInputError(
            f"{self.path} is not a CIFAR-10 batch: it asks for {module}.{name}, which image data "
            "never need (it is not run); download it again"
        )


def _read_cifar_batch(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """One batch file as (N, 3072) uint8 images, channel-major, and (N,) int64 labels."""
    try:
        with open(path, "rb") as file:
            batch = _BatchUnpickler(file, path).load()
    except UserInputError:
        raise
    except (
        pickle.UnpicklingError, EOFError, OSError, ValueError, TypeError, AttributeError,
        IndexError, KeyError, OverflowError, MemoryError,
    ) as error:  # fmt: skip
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise UserInputError(
            f"{path} is truncated or damaged ({reason}): download it again"
        ) from None
    if isinstance(batch, dict):  # Python 2's keys are bytes or text, as the file was written
        batch = {
            key.decode("latin1") if isinstance(key, bytes) else key: batch[key] for key in batch
        }
    else:
        batch = {}
    data, labels = batch.get("data"), batch.get("labels")
    try:
        labels = np.asarray(labels, dtype=np.int64)
    except (TypeError, ValueError, OverflowError):
        labels = None
    if (
        not isinstance(data, np.ndarray)
        or data.dtype != np.uint8
        or data.shape[1:] != (int(np.prod(CIFAR_IMAGE_SHAPE)),)
        or labels is None
        or labels.shape != (len(data),)
        or not ((labels >= 0) & (labels < 10)).all()
    ):
        raise UserInputError(
            f"{path} is not a CIFAR-10 batch (expected 'data', N×3072 bytes, and N 'labels' "
            "from 0 to 9): download it again"
        )
    # a copy where NumPy built a read-only array on the file's bytes (torch wants to own it)
    data = np.require(data, requirements=["C_CONTIGUOUS", "WRITEABLE"])
    return torch.from_numpy(data), torch.from_numpy(labels)


def load_cifar10(config: DataConfig) -> RawData:
    """CIFAR-10 (50,000 training and 10,000 test images, 32×32 RGB, 10 classes) from
    ``<data_dir>/cifar-10-batches-py``, torchvision's layout; its official test split as ``test``.

    With ``download``, torchvision fetches and checks the archive first.
    """
    root = Path(config.data_dir)
    if config.download:
        datasets = torchvision_datasets(f"{CIFAR_FOLDER}/")
        try:
            # One archive holds both splits; train=False makes torchvision read the smaller one
            # (it reads what it fetched, after checking the files' checksums).
            datasets.CIFAR10(root, train=False, download=True)
        except Exception as error:  # URLError, RuntimeError, OSError: all mean "not fetched"
            reason = str(error).splitlines()[0] if str(error) else type(error).__name__
            raise UserInputError(
                f"could not download cifar10 into {root} ({reason}): connect to the internet "
                f"and try again, or put {CIFAR_FOLDER}/ in {root} yourself and drop `download`"
            ) from None
    folder = root / CIFAR_FOLDER
    missing = [name for name in (*CIFAR_TRAIN, CIFAR_TEST) if not (folder / name).is_file()]
    if missing:
        which = "batches" if len(missing) == len(CIFAR_TRAIN) + 1 else ", ".join(missing)
        raise UserInputError(
            f"no CIFAR-10 {which} in {folder}: pass `download` when online, or "
            f"point `data_dir` at the folder holding {CIFAR_FOLDER}/"
        )
    train = [_read_cifar_batch(folder / name) for name in CIFAR_TRAIN]
    return RawData(
        x=torch.cat([x for x, _ in train]),
        labels=torch.cat([y for _, y in train]),
        image_shape=CIFAR_IMAGE_SHAPE,
        test=_read_cifar_batch(folder / CIFAR_TEST),
        num_classes=10,
    )
