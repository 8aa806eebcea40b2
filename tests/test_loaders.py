"""Data from files: IDX folders in torchvision's layout and the user's .npy / .npz arrays.

Every file here is written by the test itself: nothing is read from shared data or the network.
"""

import gzip
import json
import logging
import sys
from dataclasses import replace

import numpy as np
import pytest
import torch

from pyro_vae import DataConfig, UserInputError, load_dataset
from pyro_vae.data.sources import _read_idx_split, load_array, load_mnist_family, read_idx


def write_idx(path, array: np.ndarray, compress: bool = True) -> None:
    """LeCun's IDX format: zero bytes, type 0x08 (unsigned byte), rank, big-endian sizes, data."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
        int(n).to_bytes(4, "big") for n in array.shape
    )
    payload = header + array.astype(np.uint8).tobytes()
    if compress:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(payload))
    else:
        path.write_bytes(payload)


def write_mnist(root, splits=("train", "t10k"), n=(40, 20), folder="MNIST", compress=True):
    raw = root / folder / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for split, count in zip(splits, n, strict=False):
        write_idx(
            raw / f"{split}-images-idx3-ubyte", rng.integers(0, 256, (count, 28, 28)), compress
        )
        write_idx(raw / f"{split}-labels-idx1-ubyte", rng.integers(0, 10, count), compress)
    return raw


def test_read_idx_round_trip(tmp_path):
    array = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / "a", array, compress=False)
    write_idx(tmp_path / "b", array, compress=True)
    for name in ("a", "b.gz"):
        assert torch.equal(read_idx(tmp_path / name), torch.as_tensor(array))


@pytest.mark.parametrize("compress", [True, False])
def test_mnist_with_both_splits_keeps_the_official_test_split(tmp_path, compress):
    write_mnist(tmp_path, compress=compress)
    data = load_dataset(DataConfig(dataset="mnist", data_dir=str(tmp_path), val_fraction=0.25))
    assert data.image_shape == (1, 28, 28) and data.note == ""
    assert (data.train.x.shape[0], data.val.x.shape[0], data.test.x.shape[0]) == (30, 10, 20)
    assert data.train.x.min() >= 0 and data.train.x.max() <= 1
    assert data.test.x.shape[1] == 784
    raw = load_mnist_family(DataConfig(dataset="mnist", data_dir=str(tmp_path)))
    assert raw.x.dtype == torch.uint8 and raw.test[0].dtype == torch.uint8  # 0..255, not scaled


def test_only_the_test_split_on_disk_is_said_and_split(tmp_path, caplog):
    write_mnist(tmp_path, splits=("t10k",), n=(50,), folder="FashionMNIST")
    data = load_dataset(DataConfig(dataset="fashion-mnist", data_dir=str(tmp_path)))
    assert "only the test split" in data.note and "only the test split" in caplog.text
    assert (data.train.x.shape[0], data.val.x.shape[0], data.test.x.shape[0]) == (40, 5, 5)


def test_missing_idx_files_name_the_folder(tmp_path):
    with pytest.raises(UserInputError, match=r"no kmnist IDX files in .*KMNIST/raw.*data_dir"):
        load_dataset(DataConfig(dataset="kmnist", data_dir=str(tmp_path)))


def test_truncated_and_foreign_idx_files_are_refused(tmp_path):
    raw = write_mnist(tmp_path, compress=False)
    images = raw / "t10k-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[:-100])
    with pytest.raises(UserInputError, match="truncated or damaged"):
        load_dataset(DataConfig(dataset="mnist", data_dir=str(tmp_path)))
    images.write_bytes(b"PK\x03\x04 not an idx file at all")
    with pytest.raises(UserInputError, match="not an IDX file"):
        load_dataset(DataConfig(dataset="mnist", data_dir=str(tmp_path)))
    broken_gzip = raw / "train-images-idx3-ubyte.gz"
    (raw / "train-images-idx3-ubyte").unlink()
    broken_gzip.write_bytes(b"\x1f\x8b\x08 broken")
    with pytest.raises(UserInputError, match="cannot read"):
        load_dataset(DataConfig(dataset="mnist", data_dir=str(tmp_path)))


def test_images_and_labels_must_agree(tmp_path):
    raw = write_mnist(tmp_path)
    write_idx(raw / "t10k-labels-idx1-ubyte", np.zeros(7))
    with pytest.raises(UserInputError, match="do not describe the same images"):
        load_dataset(DataConfig(dataset="mnist", data_dir=str(tmp_path)))


def test_download_without_a_usable_torchvision_says_why(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torchvision", None)  # import torchvision now fails
    with pytest.raises(UserInputError, match="torchvision, which cannot be imported"):
        load_dataset(DataConfig(dataset="mnist", data_dir=str(tmp_path), download=True))


def array_config(path) -> DataConfig:
    return DataConfig(dataset="array", path=str(path))


def test_user_arrays_of_every_accepted_shape(tmp_path):
    rng = np.random.default_rng(0)
    np.save(tmp_path / "flat.npy", rng.random((50, 36)).astype(np.float32))
    assert load_dataset(array_config(tmp_path / "flat.npy")).image_shape == (1, 6, 6)
    np.save(tmp_path / "row.npy", rng.random((50, 5)))
    assert load_dataset(array_config(tmp_path / "row.npy")).image_shape == (1, 1, 5)
    np.save(tmp_path / "images.npy", rng.integers(0, 256, (50, 4, 7)).astype(np.uint8))
    data = load_dataset(array_config(tmp_path / "images.npy"))
    assert data.image_shape == (1, 4, 7) and data.train.x.max() <= 1.0  # uint8 scaled to [0, 1]
    np.savez(tmp_path / "named.npz", x=rng.random((50, 9)), y=np.arange(50) % 3)
    data = load_dataset(array_config(tmp_path / "named.npz"))
    assert set(torch.cat([data.train.labels, data.val.labels]).tolist()) == {0, 1, 2}


@pytest.mark.parametrize(
    "array, message",
    [
        (np.array([[0.1, np.nan], [0.2, 0.3]] * 10), "NaN or infinite values"),
        (np.array([[0.1, np.inf]] * 20), "NaN or infinite values"),
        (np.zeros((0, 4)), "holds no data"),
        (np.zeros((10, 0)), "holds no data"),
        (np.zeros(10), r"expected \(N, D\), \(N, H, W\)"),
        (np.zeros((2, 3, 4, 5, 6)), r"expected \(N, D\), \(N, H, W\)"),
        (np.array([["a", "b"]] * 10), "expected numbers"),
    ],
    ids=["nan", "inf", "no-rows", "no-columns", "rank-1", "rank-5", "strings"],
)
def test_bad_user_arrays_get_one_line_errors(tmp_path, array, message):
    np.save(tmp_path / "bad.npy", array)
    with pytest.raises(UserInputError, match=message):
        load_dataset(array_config(tmp_path / "bad.npy"))


def test_unreadable_or_ambiguous_files(tmp_path):
    with pytest.raises(UserInputError, match="no data file at"):
        load_dataset(array_config(tmp_path / "absent.npy"))
    (tmp_path / "junk.npy").write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(UserInputError, match="not a readable"):
        load_dataset(array_config(tmp_path / "junk.npy"))
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}] * 3, dtype=object))
    with pytest.raises(UserInputError, match="holds Python objects") as error:
        load_dataset(array_config(tmp_path / "objects.npy"))
    assert "allow_pickle" not in str(error.value)  # NumPy's advice is never passed on
    np.savez(tmp_path / "two.npz", a=np.zeros((5, 2)), b=np.zeros((5, 2)))
    with pytest.raises(UserInputError, match="name the images 'x'"):
        load_dataset(array_config(tmp_path / "two.npz"))


@pytest.mark.parametrize(
    ("write", "message"),
    [
        (lambda p: p.write_text("0.1, 0.2\n0.3, 0.4\n"), "not a NumPy .npy or .npz file"),
        (
            lambda p: np.savez(p, x=np.array([[1, "a"]] * 20, dtype=object)),
            "holds Python objects",
        ),
        (lambda p: np.save(p, np.ones((20, 4)) * (1 + 2j)), "holds complex numbers"),
        (lambda p: np.savez(p, x=np.ones((20, 4)), y=np.zeros(19, int)), "do not label the 20"),
        (lambda p: np.savez(p, x=np.ones((20, 4)), y=np.zeros(20)), "one integer label per"),
        (lambda p: np.save(p, np.full((20, 4), -3, dtype=np.int32)), "not pixel intensities"),
        (lambda p: np.save(p, np.full((20, 4), 1e300)), "beyond float32's range"),
    ],
    ids=["text", "objects-in-npz", "complex", "labels-too-few", "float-labels", "signed", "huge"],
)
def test_arrays_that_cannot_be_images_are_refused_with_their_own_line(tmp_path, write, message):
    write(tmp_path / "data.npy")  # np.savez makes it data.npy.npz: either way, the one file
    (path,) = tmp_path.iterdir()
    with pytest.raises(UserInputError, match=message):
        load_dataset(array_config(path))


@pytest.mark.parametrize(
    ("array", "expected_max"),
    [
        (np.arange(0, 256, dtype=np.int64).reshape(16, 16) % 256, 1.0),  # 8-bit in int64
        (np.full((16, 16), 65535, dtype=np.uint16), 1.0),  # 16-bit by its type
        (np.full((16, 16), 128, dtype=np.uint8), 128 / 255),
        (np.full((16, 16), 1000, dtype=np.int32), 1000 / 65535),  # above 255: 16-bit
    ],
)
def test_integer_images_are_scaled_by_their_bit_depth(tmp_path, array, expected_max):
    np.save(tmp_path / "images.npy", array)
    data = load_dataset(array_config(tmp_path / "images.npy"))
    x = torch.cat([data.train.x, data.val.x, data.test.x])
    assert x.max().item() == pytest.approx(expected_max, rel=1e-6)
    assert x.min() >= 0


def test_an_npz_without_x_says_which_array_it_used(tmp_path, caplog):
    np.savez(tmp_path / "one.npz", images=np.random.default_rng(0).random((20, 4)))
    with caplog.at_level(logging.INFO, logger="pyro_vae"):
        load_dataset(array_config(tmp_path / "one.npz"))
    assert "'images'" in caplog.text


def load_raw(tmp_path, array: np.ndarray, layout: str = "auto"):
    np.save(tmp_path / "images.npy", array)
    return load_array(DataConfig(dataset="array", path=str(tmp_path / "images.npy"), layout=layout))


@pytest.mark.parametrize(
    ("dtype", "expected"),
    [(np.uint8, torch.uint8), (np.int64, torch.uint8), (np.uint16, torch.float32)],
)
def test_8_bit_arrays_stay_uint8_and_others_become_float(tmp_path, dtype, expected):
    raw = load_raw(tmp_path, (np.arange(20 * 16).reshape(20, 4, 4) % 256).astype(dtype))
    assert raw.x.dtype == expected and raw.image_shape == (1, 4, 4)
    if expected == torch.uint8:
        assert raw.x.max().item() == 255  # pixel values, not scaled


@pytest.mark.parametrize(
    ("shape", "layout", "image_shape", "said"),
    [
        ((6, 5, 7, 3), "auto", (3, 5, 7), "(N, H, W, C)"),
        ((6, 3, 5, 7), "auto", (3, 5, 7), "(N, C, H, W)"),
        ((6, 5, 7, 1), "auto", (1, 5, 7), "(N, H, W, C)"),
        ((6, 3, 8, 3), "auto", (3, 8, 3), "--layout nhwc"),  # either axis could be the channels
        ((6, 3, 8, 3), "nhwc", (3, 3, 8), None),
        ((6, 3, 8, 5), "nchw", (3, 8, 5), None),
    ],
)
def test_4d_arrays_follow_the_layout_or_say_the_guess(
    tmp_path, caplog, shape, layout, image_shape, said
):
    array = np.random.default_rng(0).integers(0, 256, shape).astype(np.uint8)
    with caplog.at_level(logging.INFO, logger="pyro_vae"):
        raw = load_raw(tmp_path, array, layout)
    assert raw.image_shape == image_shape
    # channel-major rows: (N, C, H, W).reshape(N, -1), whichever order the file had
    channels_last = image_shape != shape[1:]
    expected = array.transpose(0, 3, 1, 2) if channels_last else array
    assert torch.equal(raw.x, torch.from_numpy(expected.reshape(6, -1)))
    if said is None:
        assert "layout" not in caplog.text
    else:
        assert said in caplog.text


@pytest.mark.parametrize(
    ("shape", "layout", "message"),
    [
        ((6, 5, 7, 4), "auto", r"4 channels .*RGBA.*x\[\.\.\., :3\]"),
        ((6, 4, 7, 5), "auto", r"4 channels .*x\[:, :3\]"),
        ((6, 5, 7, 4), "nhwc", r"x\[\.\.\., :3\]"),
        ((6, 5, 7, 6), "auto", "cannot be told.*with layout"),
        ((6, 3, 7, 5), "nhwc", "axis 3 has 5 channels.*check layout"),
    ],
)
def test_4d_arrays_without_1_or_3_channels_are_refused(tmp_path, shape, layout, message):
    with pytest.raises(UserInputError, match=message):
        load_raw(tmp_path, np.zeros(shape, dtype=np.float32), layout)


def test_square_rows_are_read_as_grey_images_and_said(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="pyro_vae"):
        raw = load_raw(tmp_path, np.zeros((5, 49), dtype=np.float32))
    assert raw.image_shape == (1, 7, 7) and "7×7 grey images" in caplog.text


def test_the_papers_split_is_fixed_and_in_order(tmp_path):
    write_mnist(tmp_path, n=(60, 20))  # a tiny MNIST: 60 training images, 20 test images
    config = DataConfig(dataset="mnist", data_dir=str(tmp_path), split="paper")
    data = load_dataset(config)
    train_x, _ = _read_idx_split(tmp_path / "MNIST" / "raw", "train")
    # the first five sixths for training, the last sixth for validation, in order; the official
    # test images for testing; and the same whatever the split seed
    assert torch.equal(data.train.stored, train_x[:50]) and torch.equal(
        data.val.stored, train_x[50:]
    )
    assert len(data.test) == 20
    again = load_dataset(replace(config, split_seed=7))
    assert torch.equal(again.val.stored, data.val.stored)
    binary = load_dataset(replace(config, binarize="dynamic"))
    assert torch.equal(binary.train.stored, train_x[:50])  # grey, binarized per batch
    assert binary.val.stored.dtype == torch.bool


def test_the_papers_split_needs_the_official_files(tmp_path):
    write_mnist(tmp_path, splits=("t10k",), n=(20,))
    with pytest.raises(UserInputError, match="use split seeded"):
        load_dataset(DataConfig(dataset="mnist", data_dir=str(tmp_path), split="paper"))
    with pytest.raises(UserInputError, match="digits does not have"):
        load_dataset(DataConfig(split="paper"))
    with pytest.raises(ValueError, match="unknown split"):
        DataConfig(split="papers")


def test_train_on_the_papers_split_and_resume_keeps_it(tmp_path):
    from typer.testing import CliRunner

    import cli

    def run(*args):
        return CliRunner().invoke(cli.app, [str(a) for a in args])

    write_mnist(tmp_path, n=(60, 20))
    out = tmp_path / "run"
    fast = ["--epochs", "1", "--hidden-dims", "16", "--data-dir", tmp_path, "--dataset", "mnist"]
    result = run("train", "--out", out, *fast, "--split", "paper")
    assert result.exit_code == 0, result.output
    assert json.loads((out / "config.json").read_text())["config"]["data"]["split"] == "paper"
    result = run("train", "--resume", out, "--split", "seeded", "--epochs", "2")
    assert result.exit_code == 2 and "--split" in result.output
    result = run("train", "--out", tmp_path / "digits", "--split", "paper", "--epochs", "1")
    assert result.exit_code == 2 and "use --split seeded" in result.output
