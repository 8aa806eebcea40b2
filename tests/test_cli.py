"""The command line, end to end, in process (typer's runner) and once as a real subprocess."""

import json
import re
import subprocess
import sys
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import cli
from pyro_vae import load_checkpoint

ROOT = Path(__file__).resolve().parents[1]
FAST = ["--epochs", "2", "--hidden-dims", "32"]


def run(*args: str):
    return CliRunner().invoke(cli.app, [str(a) for a in args])


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "run"
    result = run("train", "--out", out, *FAST, "--sigma", "0.2", "--elbo", "analytic")
    assert result.exit_code == 0, result.output
    return out


def test_train_writes_every_artefact(run_dir):
    names = {p.name for p in run_dir.iterdir()}
    assert names == {
        "checkpoint.pt",
        "config.json",
        "metrics.jsonl",
        "timing.jsonl",
        "elbo_curve.png",
        "reconstructions.png",
        "samples.png",
    }
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in metrics] == [1, 2]
    assert set(metrics[0]) == {
        *("epoch", "train_elbo", "val_elbo", "train_kl", "val_kl", "val_elbo_se"),
        *("train_objective", "beta", "lr", "val_rate", "val_distortion", "val_error"),
    }
    # Trained on the ELBO itself: the objective is the ELBO, and its terms add up.
    for m in metrics:
        assert m["train_objective"] == m["train_elbo"] and m["beta"] == 1 and m["lr"] == 1e-3
        assert m["val_rate"] + m["val_distortion"] == pytest.approx(-m["val_elbo"])
    assert all(0 < m["val_elbo_se"] < 1 for m in metrics)
    timing = [json.loads(line) for line in (run_dir / "timing.jsonl").read_text().splitlines()]
    assert [t["epoch"] for t in timing] == [1, 2] and all(t["seconds"] > 0 for t in timing)
    assert metrics[0]["train_kl"] == metrics[0]["val_kl"] == "closed-form"
    record = json.loads((run_dir / "config.json").read_text())
    assert record["config"]["train"]["elbo"] == "analytic"
    assert record["config"]["model"]["likelihood_options"] == {"sigma": 0.2}
    assert record["environment"]["torch"] == str(torch.__version__)
    checkpoint = load_checkpoint(run_dir)
    assert len(checkpoint.trainer_state["history"]) == 2
    assert checkpoint.trainer_state["optimizer"]["state"]  # Adam's moments, to continue training
    for name in ("elbo_curve.png", "reconstructions.png", "samples.png"):
        height, width, _ = matplotlib.image.imread(run_dir / name).shape
        assert height > 50 and width > 50


def test_train_prints_a_summary(tmp_path):
    result = run("train", "--out", tmp_path / "run", *FAST)
    assert result.exit_code == 0
    assert "Validation ELBO:" in result.stdout
    assert f"Run directory: {tmp_path / 'run'}" in result.stdout
    assert re.search(
        r"ELBO: -[0-9.]+ ± [0-9.]+ nats per image \(closed-form KL, 4 samples of z "
        r"each; ± one standard error of sampling them\)",
        result.stdout,
    )
    # One sample of z per validation image: no spread to estimate, none shown.
    (tmp_path / "one.toml").write_text("[train]\nval_particles = 1\n")
    result = run("train", "--out", tmp_path / "one", "--config", tmp_path / "one.toml", *FAST)
    assert result.exit_code == 0
    assert re.search(
        r"ELBO: -[0-9.]+ nats per image \(closed-form KL, one sample of z each\)\.", result.stdout
    )


def test_an_existing_run_is_never_overwritten_silently(run_dir):
    before = (run_dir / "checkpoint.pt").read_bytes()
    result = run("train", "--out", run_dir, *FAST)
    assert result.exit_code == 2
    assert "holds a trained run" in result.stderr and "--overwrite" in result.stderr
    assert (run_dir / "checkpoint.pt").read_bytes() == before


def test_overwrite_replaces_the_run(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert run("train", "--out", out, *FAST, "--overwrite").exit_code == 0
    assert (out / "checkpoint.pt").is_file() and (out / "notes.txt").read_text() == "mine"


def test_a_prior_without_closed_form_kl_is_reported_and_sampled_from(tmp_path):
    out = tmp_path / "run"
    result = run(
        "train",
        "--out",
        out,
        *FAST,
        "--prior",
        "vamp",
        "--components",
        "5",
        "--likelihood",
        "bernoulli",
        "--binarize",
        "static",
        "--elbo",
        "analytic",
    )
    assert result.exit_code == 0, result.output
    assert "monte-carlo KL" in result.stdout
    assert "guide has no closed-form KL to the vamp prior" in result.stdout
    metrics = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert metrics["train_kl"] == metrics["val_kl"] == "monte-carlo"
    result = run("sample", out, "--num", "8")
    assert result.exit_code == 0, result.output
    assert Path(result.stdout.strip()).stat().st_size > 0
    # evaluate's table: one ELBO row, labelled with the KL it computed (not the same row twice)
    result = run("evaluate", out, "--num-samples", "4")
    assert result.exit_code == 0, result.output
    rows = [line for line in result.stdout.splitlines() if line.startswith("ELBO")]
    assert len(rows) == 1 and "monte-carlo KL" in rows[0], result.stdout
    assert "closed-form" not in result.stdout


def test_debug_shows_the_traceback_of_a_user_error(tmp_path):
    result = run("--debug", "sample", tmp_path / "missing")
    assert result.exit_code != 0
    assert "no checkpoint at" in str(result.exception)


def test_sample_and_reconstruct_write_pngs(run_dir, tmp_path):
    result = run("sample", run_dir, "--num", "12", "--seed", "3")
    assert result.exit_code == 0, result.output
    path = Path(result.stdout.strip())
    assert path == run_dir / "samples-seed3.png" and path.stat().st_size > 0

    out = tmp_path / "recon.png"
    result = run("reconstruct", run_dir / "checkpoint.pt", "--num", "4", "--out", out)
    assert result.exit_code == 0, result.output
    height, width, _ = matplotlib.image.imread(out).shape
    # one row of four inputs above one row of their reconstructions, plus the title band: two
    # lines at this width (0.4 inches and a line of 1.25 × 9 points, at 100 pixels an inch)
    assert width == (4 * 9 + 1) * 8 and height == (2 * 9 + 1) * 8 + int(40 + 1.25 * 9 / 72 * 100)


def test_evaluate_writes_json_and_prints_a_table(run_dir):
    result = run("evaluate", run_dir, "--num-samples", "20")
    assert result.exit_code == 0, result.output
    path = run_dir / "evaluation-test-k20.json"
    assert str(path) in result.stdout and "IWAE, K = 20" in result.stdout
    record = json.loads(path.read_text())
    assert record["images"] == 180 and record["analytic_kl"] == "closed-form"
    bounds = record["bounds"]
    assert set(bounds) == {"elbo_analytic_kl", "elbo_mc_kl", "iwae"}
    assert bounds["iwae"]["nats"] >= bounds["elbo_mc_kl"]["nats"]
    assert set(bounds["iwae"]) == {"nats", "standard_error", "bits_per_dim"}


@pytest.mark.parametrize(
    "command, args, name, tiles",
    [
        ("interpolate", ["--pairs", "3", "--steps", "5"], "interpolations.png", (3, 7)),
    ],
)
def test_grid_pictures_have_one_tile_per_image(run_dir, tmp_path, command, args, name, tiles):
    out = tmp_path / name
    result = run(command, run_dir, *args, "--out", out)
    assert result.exit_code == 0, result.output
    rows, columns = tiles
    height, width, _ = matplotlib.image.imread(out).shape
    # 8×8 tiles, 1-pixel separators, 8 screen pixels per image pixel, a 40-pixel title band
    assert (height, width) == ((rows * 9 + 1) * 8 + 40, (columns * 9 + 1) * 8)


@pytest.mark.parametrize(("grid", "dims"), [(6, "0,1"), (4, "2,0")])
def test_the_manifold_decodes_a_labelled_grid_at_normal_quantiles(run_dir, tmp_path, grid, dims):
    from pyro_vae.runs import figures as plots

    seen = {}
    save = plots.save_latent_grid

    def spy(images, image_shape, path, values, axis_labels, title):
        seen.update(images=images, values=values, axis_labels=axis_labels)
        return save(images, image_shape, path, values, axis_labels, title)

    out = tmp_path / "manifold.png"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(plots, "save_latent_grid", spy)
        result = run("manifold", run_dir, "--grid", grid, "--dims", dims, "--out", out)
    assert result.exit_code == 0, result.output
    assert seen["images"].shape == (grid * grid, 64)
    quantiles = torch.distributions.Normal(0.0, 1.0).icdf(torch.arange(1, grid + 1) / (grid + 1))
    assert seen["values"] == pytest.approx(quantiles.tolist(), abs=1e-5)
    i, j = dims.split(",")
    assert seen["axis_labels"] == (f"z_{i}", f"z_{j}")
    assert matplotlib.image.imread(out).shape[:2] == (740, 700)


def test_latent_scatter(run_dir):
    result = run("latent", run_dir, "--split", "val")
    assert result.exit_code == 0, result.output
    height, width, _ = matplotlib.image.imread(run_dir / "latent-val.png").shape
    assert (height, width) == (550, 600)


def test_manifold_needs_two_distinct_coordinates(run_dir):
    for dims, message in (("0,0", "two different latent coordinates"), ("a,b", "--dims takes")):
        result = run("manifold", run_dir, "--dims", dims)
        assert result.exit_code == 2 and message in result.stderr


def test_training_on_a_users_array(tmp_path):
    images = np.random.default_rng(0).random((120, 5, 6)).astype(np.float32)
    np.save(tmp_path / "mine.npy", images)
    out = tmp_path / "run"
    result = run("train", "--data", tmp_path / "mine.npy", "--out", out, *FAST)
    assert result.exit_code == 0, result.output
    assert load_checkpoint(out).image_shape == (1, 5, 6)
    result = run("reconstruct", out, "--num", "2", "--out", tmp_path / "r.png")
    assert result.exit_code == 0, result.output
    result = run("train", "--data", tmp_path / "mine.npy", "--dataset", "mnist")
    assert result.exit_code == 2 and "give one of them" in result.stderr
    np.save(tmp_path / "wide.npy", images * 3)
    result = run("train", "--data", tmp_path / "wide.npy", "--likelihood", "continuous-bernoulli")
    assert result.exit_code == 2 and "in [0, 1]" in result.stderr


def test_mnist_from_a_data_dir_says_when_only_the_test_split_is_there(tmp_path):
    from test_loaders import write_mnist

    write_mnist(tmp_path / "data", splits=("t10k",), n=(60,))
    out = tmp_path / "run"
    result = run(
        "train", "--dataset", "mnist", "--data-dir", tmp_path / "data", "--out", out, *FAST
    )
    assert result.exit_code == 0, result.output
    assert "Note: only the test split of mnist" in result.stderr
    record = json.loads((out / "config.json").read_text())
    assert "only the test split" in record["data"]["note"]
    assert record["data"]["image_shape"] == [1, 28, 28]


def test_cli_py_runs_as_a_script():
    result = subprocess.run(
        [sys.executable, str(ROOT / "cli.py"), "train", "--help"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "--elbo" in result.stdout and "analytic" in result.stdout


def test_installed_console_command_runs_the_same_app():
    script = Path(sys.executable).with_name("pyro-vae")
    if not script.exists():
        pytest.skip("pyro-vae is not installed in this environment (pip install -e .)")
    result = subprocess.run([script, "--help"], capture_output=True, text=True, check=True)
    assert all(command in result.stdout for command in ("train", "sample", "reconstruct"))


def test_data_far_from_unit_scale_get_a_note_naming_the_range_and_the_fix(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (60, 16)).astype(np.float64)
    np.save(tmp_path / "bytes-as-floats.npy", images)
    result = run("train", "--data", tmp_path / "bytes-as-floats.npy", "--out", tmp_path / "run",
                 "--epochs", "1", "--hidden-dims", "8")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "Note: the data span [0, 255], far from the unit scale that σ = 1 suits" in result.output
    assert "--likelihood gaussian-learned" in result.output


def test_reconstruct_says_when_it_shows_fewer_images_than_asked(run_dir, tmp_path):
    result = run("reconstruct", run_dir, "--num", "5000", "--out", tmp_path / "r.png")
    assert result.exit_code == 0, result.output
    assert "the test split has 180 images: showing all of them, not 5000" in result.output


def test_the_command_exits_cleanly_with_its_output_closed():
    """The command ends the process itself (cli._exit_now): a closed stdout is no traceback."""
    done = subprocess.run(
        f"{sys.executable} {ROOT / 'cli.py'} --help >&-", shell=True, capture_output=True, text=True
    )
    assert done.returncode == 0 and "Traceback" not in done.stderr


def test_activation_tanh_trains_resumes_and_loads(tmp_path):
    out = tmp_path / "run"
    result = run(
        "train", "--out", out, "--epochs", "1", "--hidden-dims", "16", "--activation", "tanh"
    )
    assert result.exit_code == 0, result.output
    assert run("train", "--resume", out, "--epochs", "2").exit_code == 0
    checkpoint = load_checkpoint(out)
    assert (
        checkpoint.config.model.activation == "tanh"
        and len(checkpoint.trainer_state["history"]) == 2
    )
    from pyro_vae import load_run

    modules = list(load_run(out).vae.modules())
    assert any(isinstance(m, torch.nn.Tanh) for m in modules)
    assert not any(isinstance(m, torch.nn.ReLU) for m in modules)
    refused = run("train", "--out", tmp_path / "other", "--activation", "sigmoid")
    assert refused.exit_code == 2 and "sigmoid" in refused.output
