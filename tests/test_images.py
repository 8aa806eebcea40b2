"""Images from files: folders of image files (ImageFolder's layout) and CIFAR-10's batches.

Every file here is written by the test itself, with Pillow or pickle: nothing from the network.
"""

import logging
import os
import pickle
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from pyro_vae import DataConfig, UserInputError, load_dataset
from pyro_vae.data import image_files as images_module
from pyro_vae.data.datasets import DATASETS
from pyro_vae.data.image_files import load_cifar10, load_folder

RNG = np.random.default_rng(0)


def grey(height: int = 9, width: int = 13) -> np.ndarray:
    return RNG.integers(0, 256, (height, width)).astype(np.uint8)


def colour(height: int = 9, width: int = 13) -> np.ndarray:
    return RNG.integers(0, 256, (height, width, 3)).astype(np.uint8)


def save(path, pixels: np.ndarray, **options) -> np.ndarray:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, **options)
    return pixels


def folder_config(path, **options) -> DataConfig:
    return DataConfig(dataset="folder", path=str(path), **options)


# a folder of image files


def test_subfolders_are_classes_and_the_rest_is_skipped(tmp_path, caplog):
    """torchvision's ImageFolder convention: with class folders, image files directly in the
    root belong to no class and are skipped, with one note counting them (no class '')."""
    save(tmp_path / "top.png", grey())
    save(tmp_path / "top2.png", grey())
    cat = save(tmp_path / "cats" / "a.png", grey())
    save(tmp_path / "cats" / "nested" / "deeper" / "b.jpg", grey())  # still a cat
    dog = save(tmp_path / "dogs" / "c.PNG", grey())
    save(tmp_path / "dogs" / ".hidden.png", grey())
    save(tmp_path / ".cache" / "d.png", grey())
    save(tmp_path / "zebras" / ".e.png", grey())  # a class whose only image is hidden: none
    (tmp_path / "dogs" / "notes.txt").write_text("not an image")
    with caplog.at_level(logging.INFO, logger="pyro_vae"):
        raw = load_folder(folder_config(tmp_path))
    assert raw.x.dtype == torch.uint8 and raw.x.shape == (3, 9 * 13)
    assert raw.image_shape == (1, 9, 13) and raw.note == "" and raw.test is None
    # sorted paths: cats/a.png, cats/nested/deeper/b.jpg, dogs/c.PNG
    assert raw.labels.dtype == torch.int64 and raw.labels.tolist() == [0, 0, 1]
    assert raw.num_classes == 2
    for row, pixels in zip((0, 2), (cat, dog), strict=True):
        assert torch.equal(raw.x[row], torch.from_numpy(pixels.reshape(-1)))  # PNG is lossless
    skipped = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert len(skipped) == 1 and "2 image files directly in" in skipped[0], caplog.text
    assert "read 3 images of 2 classes" in caplog.text and "'cats'" in caplog.text
    assert "''" not in caplog.text
    assert torch.equal(load_folder(folder_config(tmp_path)).x, raw.x)  # the same order each time


def test_a_link_to_a_folder_above_is_followed_once(tmp_path):
    save(tmp_path / "images" / "cats" / "a.png", grey())
    (tmp_path / "images" / "cats" / "loop").symlink_to(tmp_path / "images")
    (tmp_path / "dogs").mkdir()
    save(tmp_path / "dogs" / "b.png", grey())
    (tmp_path / "images" / "dogs").symlink_to(tmp_path / "dogs")  # a class that is a link
    raw = load_folder(folder_config(tmp_path / "images"))
    assert raw.labels.tolist() == [0, 1]


def test_a_folder_without_subfolders_is_one_class(tmp_path):
    for name in ("b.bmp", "a.png", "c.tiff"):
        save(tmp_path / name, grey())
    raw = load_folder(folder_config(tmp_path))
    assert raw.labels.tolist() == [0, 0, 0] and raw.x.shape == (3, 117)


def test_colour_anywhere_makes_every_image_rgb_unless_channels_says(tmp_path):
    pixels = save(tmp_path / "a.png", colour())
    grey_pixels = save(tmp_path / "b.png", grey())
    raw = load_folder(folder_config(tmp_path))
    assert raw.image_shape == (3, 9, 13)
    assert torch.equal(raw.x[0], torch.from_numpy(pixels.transpose(2, 0, 1).reshape(-1)))
    assert torch.equal(raw.x[1].reshape(3, 9, 13), torch.from_numpy(grey_pixels).expand(3, 9, 13))
    assert raw.note.endswith("converted 1 of 2 images in " + str(tmp_path) + ": 1 from L to RGB")
    raw = load_folder(folder_config(tmp_path, channels=1))
    assert raw.image_shape == (1, 9, 13) and "1 from RGB to L" in raw.note
    assert torch.equal(raw.x[1], torch.from_numpy(grey_pixels.reshape(-1)))


def test_alpha_is_dropped_and_palettes_decide_by_their_pixels(tmp_path):
    rgba = np.dstack([colour(), np.full((9, 13), 7, np.uint8)])
    save(tmp_path / "rgba" / "a.png", rgba)
    raw = load_folder(folder_config(tmp_path / "rgba"))
    assert raw.image_shape == (3, 9, 13) and "1 from RGBA to RGB" in raw.note
    assert torch.equal(raw.x[0], torch.from_numpy(rgba[..., :3].transpose(2, 0, 1).reshape(-1)))

    (tmp_path / "grey-gif").mkdir()
    Image.fromarray(grey()).convert("P").save(tmp_path / "grey-gif" / "a.gif")
    raw = load_folder(folder_config(tmp_path / "grey-gif"))
    assert raw.image_shape == (1, 9, 13) and "1 from P to L" in raw.note

    (tmp_path / "colour-gif").mkdir()
    Image.fromarray(colour()).quantize(16).save(tmp_path / "colour-gif" / "a.gif")
    raw = load_folder(folder_config(tmp_path / "colour-gif"))
    assert raw.image_shape == (3, 9, 13) and "1 from P to RGB" in raw.note


def test_16_bit_images_are_scaled_to_8_bits_not_clipped(tmp_path):
    values = np.array([[0, 128, 129, 300, 32896, 65535]], dtype=np.uint16)
    save(tmp_path / "a.png", values)
    assert Image.open(tmp_path / "a.png").mode.startswith("I")  # a 16-bit PNG, read as such
    raw = load_folder(folder_config(tmp_path))
    assert raw.x.tolist() == [[0, 0, 1, 1, 128, 255]]  # round(v / 257)
    assert raw.note.endswith(": 1 from 16 to 8 bits (value / 257)")


def test_sizes_are_made_equal_and_the_note_counts_every_conversion(tmp_path):
    save(tmp_path / "a.png", grey(9, 13))
    save(tmp_path / "b.png", grey(9, 13))
    save(tmp_path / "c.jpg", grey(20, 11), quality=95)
    save(tmp_path / "d.png", np.dstack([grey(9, 13)] * 3 + [grey(9, 13)]))  # RGBA, right size
    raw = load_folder(folder_config(tmp_path, channels=1))
    assert raw.image_shape == (1, 9, 13)  # the most common size
    assert raw.note == (
        f"converted 2 of 4 images in {tmp_path}: 1 resized to 9×13 (sizes differed; "
        "--image-size sets one), 1 from RGBA to L"
    )
    raw = load_folder(folder_config(tmp_path, channels=1, image_size=(6, 5)))
    assert raw.image_shape == (1, 6, 5) and "4 resized to 6×5 (--image-size)" in raw.note
    raw = load_folder(folder_config(tmp_path, channels=1, crop=True))
    assert raw.image_shape == (1, 9, 9) and "4 centre-cropped to a square (--crop)" in raw.note
    assert "1 resized to 9×9" in raw.note  # the 11-wide image, cropped to 11×11


def test_a_centre_crop_keeps_the_middle(tmp_path):
    pixels = save(tmp_path / "a.png", grey(4, 8))
    raw = load_folder(folder_config(tmp_path, crop=True))
    assert torch.equal(raw.x[0], torch.from_numpy(pixels[:, 2:6].reshape(-1)))


def test_a_folder_is_a_dataset(tmp_path):
    assert DATASETS["folder"] is load_folder and DATASETS["cifar10"] is load_cifar10
    for i in range(20):
        save(tmp_path / f"class{i % 2}" / f"{i:02}.png", colour(5, 6))
    data = load_dataset(folder_config(tmp_path))
    assert data.image_shape == (3, 5, 6) and data.data_dim == 90


def test_folders_without_images_are_refused(tmp_path):
    with pytest.raises(UserInputError, match="is not a folder: give a directory"):
        load_folder(folder_config(tmp_path / "absent"))
    (tmp_path / "file.png").write_bytes(b"")
    with pytest.raises(UserInputError, match="is not a folder"):
        load_folder(folder_config(tmp_path / "file.png"))
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "sub" / "readme.txt").write_text("hello")
    save(tmp_path / "empty" / ".hidden.png", grey())
    with pytest.raises(UserInputError, match=r"no image files in .*empty.*\.png, \.jpg"):
        load_folder(folder_config(tmp_path / "empty"))


def test_undecodable_files_are_named_and_counted(tmp_path):
    save(tmp_path / "good.png", grey())
    (tmp_path / "a-corrupt.png").write_bytes(b"this is no PNG")
    colour_png = tmp_path / "b-truncated.png"
    save(colour_png, colour(40, 40))
    colour_png.write_bytes(colour_png.read_bytes()[:200])  # header intact, pixel data cut
    with pytest.raises(UserInputError) as error:
        load_folder(folder_config(tmp_path))
    message = str(error.value)
    assert "2 of 3 image files" in message and "remove or replace them" in message
    assert "a-corrupt.png (not an image format Pillow knows)" in message
    assert "b-truncated.png" in message and "\n" not in message
    for name in ("c.jpg", "d.gif", "e.bmp"):
        (tmp_path / name).write_bytes(b"\x00" * 10)
    with pytest.raises(UserInputError, match=r"5 of 6 image files.* and 2 more; remove or"):
        load_folder(folder_config(tmp_path))


def test_float_images_are_refused(tmp_path):
    save(tmp_path / "a.tif", np.linspace(0, 3, 12, dtype=np.float32).reshape(3, 4))
    save(tmp_path / "b.png", grey())
    with pytest.raises(UserInputError, match=r"a\.tif holds floating-point pixels .*mode F"):
        load_folder(folder_config(tmp_path))


# CIFAR-10's pickled batches

CIFAR_NAMES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]


def write_cifar(root, protocol: int = pickle.DEFAULT_PROTOCOL, text_keys: bool = False):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for index, name in enumerate(CIFAR_NAMES):
        batch = {
            "data": np.full((10, 3072), index, dtype=np.uint8),
            "labels": [(index + i) % 10 for i in range(10)],  # a list, as in the real files
            "batch_label": f"batch {index}",
        }
        if not text_keys:
            batch = {key.encode(): value for key, value in batch.items()}
        with open(folder / name, "wb") as file:
            pickle.dump(batch, file, protocol=protocol)
    return folder


def cifar_config(root, **options) -> DataConfig:
    return DataConfig(dataset="cifar10", data_dir=str(root), **options)


@pytest.mark.parametrize(("protocol", "text_keys"), [(2, False), (4, False), (5, False), (4, True)])
def test_cifar10_batches_are_read_with_the_official_test_split(tmp_path, protocol, text_keys):
    write_cifar(tmp_path, protocol, text_keys)
    raw = load_cifar10(cifar_config(tmp_path))
    assert raw.image_shape == (3, 32, 32) and raw.x.shape == (50, 3072)
    assert raw.x.dtype == torch.uint8 and raw.labels.dtype == torch.int64
    assert raw.x[::10, 0].tolist() == [0, 1, 2, 3, 4] and raw.labels[:3].tolist() == [0, 1, 2]
    test_x, test_labels = raw.test
    assert test_x.shape == (10, 3072) and test_x.dtype == torch.uint8 and test_x[0, 0] == 5
    assert test_labels.tolist() == [(5 + i) % 10 for i in range(10)]


def python2_batch(data: np.ndarray, labels: list[int]) -> bytes:
    """A batch pickled as CIFAR-10's own files were, by Python 2: byte strings as STRING opcodes
    (read back as latin-1 text) and NumPy 1.x's module names (numpy.core)."""

    def string(raw: bytes) -> bytes:  # BINSTRING: 'T', a 4-byte little-endian length, the bytes
        return b"T" + len(raw).to_bytes(4, "little") + raw

    rows, columns = data.shape
    array = (
        b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85" + string(b"b")
        + b"\x87R(K\x01J" + rows.to_bytes(4, "little") + b"J" + columns.to_bytes(4, "little")
        + b"\x86cnumpy\ndtype\n" + string(b"u1") + b"K\x00K\x01\x87R(K\x03" + string(b"|")
        + b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb\x89" + string(data.tobytes()) + b"tb"
    )  # fmt: skip
    label_list = b"](" + b"".join(b"K" + bytes([label]) for label in labels) + b"e"
    return b"\x80\x02}(" + string(b"data") + array + string(b"labels") + label_list + b"u."


def test_cifar10_batches_pickled_by_python_2_are_read(tmp_path):
    folder = write_cifar(tmp_path)
    pixels = np.arange(10 * 3072).reshape(10, 3072).astype(np.uint8)
    (folder / "test_batch").write_bytes(python2_batch(pixels, list(range(10))))
    test_x, test_labels = load_cifar10(cifar_config(tmp_path)).test
    assert torch.equal(test_x, torch.from_numpy(pixels)) and test_labels.tolist() == list(range(10))


class RunsACommand:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_a_pickle_that_asks_for_code_is_refused_unrun(tmp_path):
    folder = write_cifar(tmp_path)
    marker = tmp_path / "ran"
    with open(folder / "data_batch_3", "wb") as file:
        pickle.dump({b"data": RunsACommand(marker), b"labels": []}, file)
    with pytest.raises(UserInputError, match=r"data_batch_3 is not a CIFAR-10 batch: .*system"):
        load_cifar10(cifar_config(tmp_path))
    assert not marker.exists()


@pytest.mark.parametrize(
    ("batch", "message"),
    [
        ({b"labels": [0] * 10}, "not a CIFAR-10 batch"),
        ({b"data": np.zeros((10, 3072), np.float32), b"labels": [0] * 10}, "not a CIFAR-10 batch"),
        ({b"data": np.zeros((10, 3072), np.uint8), b"labels": [0] * 9}, "not a CIFAR-10 batch"),
        ({b"data": np.zeros((10, 3072), np.uint8), b"labels": [10] * 10}, "from 0 to 9"),
        ([1, 2, 3], "not a CIFAR-10 batch"),
    ],
    ids=["no-data", "floats", "too-few-labels", "label-10", "a-list"],
)
def test_foreign_pickles_are_not_cifar10_batches(tmp_path, batch, message):
    folder = write_cifar(tmp_path)
    with open(folder / "test_batch", "wb") as file:
        pickle.dump(batch, file)
    with pytest.raises(UserInputError, match=message):
        load_cifar10(cifar_config(tmp_path))


def test_truncated_cifar10_batches_are_named(tmp_path):
    folder = write_cifar(tmp_path)
    batch = folder / "data_batch_2"
    batch.write_bytes(batch.read_bytes()[:1000])
    with pytest.raises(UserInputError, match=r"data_batch_2 is truncated or damaged .*download"):
        load_cifar10(cifar_config(tmp_path))


def test_missing_cifar10_batches_say_where_they_were_looked_for(tmp_path):
    with pytest.raises(UserInputError, match=r"cifar-10-batches-py.*download.*data_dir"):
        load_cifar10(cifar_config(tmp_path))
    folder = write_cifar(tmp_path)
    (folder / "test_batch").unlink()
    with pytest.raises(UserInputError, match=r"no CIFAR-10 test_batch in"):
        load_cifar10(cifar_config(tmp_path))


def test_cifar10_download_failures_are_one_line(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torchvision", None)  # import torchvision now fails
    with pytest.raises(UserInputError, match=r"torchvision, which cannot be imported.*cifar-10"):
        load_cifar10(cifar_config(tmp_path, download=True))
    monkeypatch.undo()

    class Offline:
        def CIFAR10(self, *args, **kwargs):  # torchvision's name
            raise OSError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(images_module, "torchvision_datasets", lambda files: Offline())
    with pytest.raises(UserInputError, match=r"could not download cifar10 .*name resolution"):
        load_cifar10(cifar_config(tmp_path, download=True))
