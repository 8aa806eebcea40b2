"""Each option of ``train`` is declared once, beside its configuration field (core/*_config.py): its
option, its default, its check, its config-file key, its resume rule and the name errors give it
all come from that declaration."""

import json
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

import cli
from pyro_vae import ModelConfig, TrainConfig, UserInputError
from pyro_vae.cli.options import RUN_OPTIONS, WATCH_OPTIONS
from pyro_vae.core.config import RESUMABLE, SETTINGS
from pyro_vae.core.options import IMAGE_SIZE, LAYER_SIZES, check, declared, settings
from pyro_vae.runs import runner


def invoke(*args: object):
    return CliRunner().invoke(cli.app, [str(a) for a in args])


def test_every_declared_option_is_an_option_of_train_with_its_help_and_default():
    train = typer.main.get_command(cli.app).commands["train"]
    options = {param.opts[0]: param for param in train.params}
    declared_flags = {s.option.flag: s for s in SETTINGS if s.option.flag is not None}
    run_flags = {"--" + name.replace("_", "-") for name in {**RUN_OPTIONS, **WATCH_OPTIONS}}
    assert set(options) == set(declared_flags) | run_flags
    for flag, setting in declared_flags.items():
        param = options[flag]
        assert param.help == setting.option.help
        default = param.default.value if isinstance(param.default, Enum) else param.default
        if setting.option.key is None:  # a keyword's default is its component's own
            expected = setting.default
            assert (str(default) if isinstance(default, Path) else default) == expected, flag


def test_marked_names_and_flags_are_unique_so_that_each_names_one_option():
    names = [s.name for s in SETTINGS]
    flags = [s.option.flag for s in SETTINGS if s.option.flag is not None]
    assert len(set(names)) == len(names) and len(set(flags)) == len(flags)


@pytest.mark.parametrize(
    ("spelling", "text", "sizes"),
    [
        (LAYER_SIZES, "256,128", (256, 128)),
        (IMAGE_SIZE, "48x64", (48, 64)),
        (IMAGE_SIZE, "64", (64, 64)),
    ],
)
def test_a_tuples_spelling_reads_and_writes_the_same_sizes(spelling, text, sizes):
    assert spelling.parse(text) == sizes and spelling.parse(spelling.spell(sizes)) == sizes


def test_the_python_api_names_fields_and_the_command_line_names_options():
    with pytest.raises(UserInputError) as error:
        TrainConfig(lr_schedule="cosine", lr_min=0.1)
    assert str(error.value).startswith("lr_min (0.1) must be below lr (0.001)")
    with pytest.raises(UserInputError, match=r"^sigma \(likelihood_options\) must be a positive"):
        ModelConfig(likelihood_options={"sigma": -1.0})
    result = invoke("train", "--lr-schedule", "cosine", "--lr-min", "0.1")
    assert result.exit_code == 2
    assert "Error: --lr-min (0.1) must be below --lr (0.001)" in result.stderr


def test_a_config_files_values_are_named_as_its_keys(tmp_path):
    (tmp_path / "c.toml").write_text('[train]\nlr_schedule = "cosine"\nlr_min = 0.1\n')
    result = invoke("train", "--config", tmp_path / "c.toml", "--out", tmp_path / "run")
    assert result.exit_code == 2
    assert f"--config {tmp_path / 'c.toml'}: [train] lr_min (0.1) must be below --lr" in (
        result.stderr
    )


def test_an_option_replaces_a_config_files_value_unchecked(tmp_path):
    (tmp_path / "c.toml").write_text("[model]\nhidden_dims = [16]\n[train]\nepochs = 0\n")
    out = tmp_path / "run"
    result = invoke("train", "--config", tmp_path / "c.toml", "--out", out, "--epochs", "1")
    assert result.exit_code == 0, result.output
    assert json.loads((out / "config.json").read_text())["config"]["train"]["epochs"] == 1


def test_compile_is_unset_yes_or_no_on_the_command_line_and_in_a_config_file(tmp_path):
    """--compile/--no-compile, unset by default (the run decides), and `compile` in a config
    file's [train] table."""
    (tmp_path / "c.toml").write_text("[model]\nhidden_dims = [16]\n[train]\ncompile = false\n")
    for name, args, expected in (
        ("unset", ["--hidden-dims", "16"], None),
        ("no", ["--hidden-dims", "16", "--no-compile"], False),
        ("file", ["--config", tmp_path / "c.toml"], False),
    ):
        out = tmp_path / name
        result = invoke("train", "--epochs", "1", *args, "--out", out)
        assert result.exit_code == 0, result.output
        record = json.loads((out / "config.json").read_text())
        assert record["config"]["train"]["compile"] is expected, name


def test_the_resume_rule_is_the_declarations():
    assert set(RESUMABLE) == {"lr", "epochs", "device", "patience", "compile", "matmul_precision"}
    assert runner.RESUMABLE is RESUMABLE


def test_a_new_field_is_checked_and_found_by_its_declaration_alone():
    @dataclass(frozen=True)
    class Extra:
        grad_clip: float | None = field(
            default=None, metadata=declared("--grad-clip", low=0, strict=True, help="Clip.")
        )

        def __post_init__(self) -> None:
            check(self)

    with pytest.raises(UserInputError, match="grad_clip must be a positive finite number, got 0"):
        Extra(grad_clip=0)
    (setting,) = settings({"train": Extra})
    assert (setting.option.flag, setting.kind, setting.optional) == ("--grad-clip", float, True)
