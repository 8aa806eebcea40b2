"""train --tensorboard: events read back with TensorBoard's own reader."""

import io
import json
import sys

import matplotlib.image
import pytest
import torch
from typer.testing import CliRunner

import cli
from pyro_vae.core.config import RunConfig, TrainConfig
from pyro_vae.inference.trainer import EpochMetrics

# The optional extra (in dev): without it these tests skip, as the option refuses (tested below).
events_module = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
plugin_data_pb2 = pytest.importorskip("tensorboard.plugins.hparams.plugin_data_pb2")
EventAccumulator = events_module.EventAccumulator


def train(*args):
    result = CliRunner().invoke(cli.app, ["train", *map(str, args)])
    assert result.exit_code == 0, result.output
    return result


def test_tensorboard_events_hold_the_runs_numbers_and_pictures(tmp_path):
    common = ["--epochs", "3", "--hidden-dims", "16", "--sigma", "0.2", "--kl-warmup", "2"]
    result = train("--out", tmp_path / "board", *common, "--tensorboard")
    train("--out", tmp_path / "plain", *common)
    assert "events.out.tfevents" in result.output  # listed among the run's files
    events = EventAccumulator(str(tmp_path / "board"), size_guidance={"images": 0})
    events.Reload()
    metrics = [json.loads(line) for line in (tmp_path / "board" / "metrics.jsonl").open()]
    for key, tag in (
        ("val_elbo", "elbo/validation"),
        ("beta", "schedule/beta"),
        ("lr", "schedule/lr"),
    ):
        scalars = events.Scalars(tag)
        assert [s.step for s in scalars] == [1, 2, 3]
        assert [s.value for s in scalars] == pytest.approx([m[key] for m in metrics], rel=1e-6)
    assert [s.value for s in events.Scalars("schedule/beta")] == pytest.approx([0.5, 1, 1])
    for tag in ("samples", "reconstructions"):
        assert [image.step for image in events.Images(tag)] == [1, 2, 3]
    content = events.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    hparams = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info.hparams
    assert hparams["kl_warmup"].number_value == 2 and hparams["hidden_dims"].string_value == "(16,)"
    # Drawing the pictures takes no random number from the run: it trains as one without.
    for name in ("metrics.jsonl", "samples.png"):
        assert (tmp_path / "board" / name).read_bytes() == (tmp_path / "plain" / name).read_bytes()


class RedVAE:
    """Stands in for a VAE: its samples are plain red images (white when grey), its
    reconstructions the inputs unchanged."""

    def __init__(self, channels: int, pixels: int):
        self.channels, self.pixels = channels, pixels

    def generate(self, num_samples):
        red = torch.zeros(num_samples, self.channels, self.pixels)
        red[:, 0] = 1
        return red.flatten(1)  # channel-major, as the data are

    def reconstruct(self, x):
        return x


def test_colour_images_are_written_in_colour_and_grey_ones_in_grey(tmp_path):
    from pyro_vae.runs.tensorboard import TensorBoardLog

    config = RunConfig(train=TrainConfig(epochs=1))
    metrics = EpochMetrics(1, -50.0, -49.0, "closed-form", "closed-form")
    for name, image_shape, vae in (
        ("rgb", (3, 4, 4), RedVAE(3, 16)),
        ("grey", (4, 4), RedVAE(1, 16)),  # the shape of runs from before colour
        ("vectors", (1, 1, 48), RedVAE(1, 48)),
    ):
        board = TensorBoardLog(tmp_path / name, config, image_shape)
        board.epoch(metrics, vae, torch.rand(8, vae.channels * vae.pixels))
        board.close([metrics])
    pictures = {}
    for name in ("rgb", "grey", "vectors"):
        events = EventAccumulator(str(tmp_path / name), size_guidance={"images": 0})
        events.Reload()
        for tag in ("samples", "reconstructions"):
            (image,) = events.Images(tag)
            png = io.BytesIO(image.encoded_image_string)
            pictures[name, tag] = matplotlib.image.imread(png, format="png")[..., :3]
    # 8 columns of 4×4 tiles (48 pixels a row for vectors) with 1-pixel separators
    assert pictures["rgb", "samples"].shape == (8 * 5 + 1, 8 * 5 + 1, 3)
    assert pictures["rgb", "samples"][1, 1].tolist() == [1, 0, 0]  # red, where a sample starts
    assert (pictures["rgb", "reconstructions"].std(-1) > 0.1).any()  # random colours
    assert pictures["vectors", "samples"].shape == (8 * 2 + 1, 8 * 49 + 1, 3)
    for tag in ("samples", "reconstructions"):
        for name in ("grey", "vectors"):
            grey = pictures[name, tag]
            assert (grey[..., 0] == grey[..., 1]).all() and (grey[..., 1] == grey[..., 2]).all()


def test_without_the_extra_the_option_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails
    result = CliRunner().invoke(cli.app, ["train", "--out", str(tmp_path / "run"), "--tensorboard"])
    assert result.exit_code == 2
    assert "pip install 'pyro-vae[tensorboard]'" in result.output
    assert not (tmp_path / "run").exists()  # refused before any work
