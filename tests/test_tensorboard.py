"""train --tensorboard: events read back with TensorBoard's own reader."""

import json
import sys

import pytest
from typer.testing import CliRunner

import cli

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


def test_without_the_extra_the_option_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails
    result = CliRunner().invoke(cli.app, ["train", "--out", str(tmp_path / "run"), "--tensorboard"])
    assert result.exit_code == 2
    assert "pip install 'pyro-vae[tensorboard]'" in result.output
    assert not (tmp_path / "run").exists()  # refused before any work
