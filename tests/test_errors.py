"""Every mistake a user can make gets one line, exit status 2, no traceback, nothing overwritten.

One table lists them all: the command line (built in a fresh folder, beside a copy of a trained
run) and the words the error must contain.
"""

import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from test_loaders import write_mnist
from typer.testing import CliRunner

import cli
from pyro_vae.checkpoint import FORMAT_VERSION

Setup = Callable[[Path, Path], list]  # (empty folder, a trained run copied into it) -> arguments


def edited_checkpoint(run: Path, edit: Callable[[dict], None]) -> Path:
    payload = torch.load(run / "checkpoint.pt", weights_only=True)
    edit(payload)
    torch.save(payload, run / "checkpoint.pt")
    return run


def npy(tmp: Path, array: np.ndarray) -> Path:
    np.save(tmp / "data.npy", array)
    return tmp / "data.npy"


def corrupt_idx(tmp: Path, cut: bool) -> Path:
    raw = write_mnist(tmp / "data", compress=False)
    images = raw / "t10k-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[:-5] if cut else b"\x89PNG not an IDX file")
    return tmp / "data"


CASES: dict[str, tuple[Setup, str]] = {
    # options
    "unknown ELBO": (lambda t, r: ["train", "--elbo", "foo"], "'--elbo'"),
    "zero epochs": (lambda t, r: ["train", "--epochs", "0"], "'--epochs'"),
    "zero batch size": (lambda t, r: ["train", "--batch-size", "0"], "'--batch-size'"),
    "negative latent size": (lambda t, r: ["train", "--latent-dim", "-1"], "'--latent-dim'"),
    "zero learning rate": (lambda t, r: ["train", "--lr", "0"], "'--lr'"),
    "negative learning rate": (lambda t, r: ["train", "--lr", "-0.1"], "'--lr'"),
    "zero particles": (lambda t, r: ["train", "--num-particles", "0"], "'--num-particles'"),
    "bad layer sizes": (lambda t, r: ["train", "--hidden-dims", "64,x"], "'--hidden-dims'"),
    "zero sigma": (lambda t, r: ["train", "--sigma", "0"], "'--sigma'"),
    "sigma without gaussian": (
        lambda t, r: ["train", "--likelihood", "bernoulli", "--sigma", "0.5"],
        "--sigma applies to --likelihood gaussian",
    ),
    "unknown prior": (lambda t, r: ["train", "--prior", "nope"], "'--prior'"),
    "components without mixture": (
        lambda t, r: ["train", "--components", "3"],
        "--components applies to --prior mog or vamp",
    ),
    "unknown binarization": (lambda t, r: ["train", "--binarize", "sometimes"], "'--binarize'"),
    "unknown device": (lambda t, r: ["train", "--device", "tpu"], "'--device'"),
    "cuda without a GPU": (lambda t, r: ["train", "--device", "cuda"], "CUDA is not available"),
    "two data sources": (
        lambda t, r: ["train", "--data", npy(t, np.ones((30, 4))), "--dataset", "mnist"],
        "give one of them",
    ),
    # output
    "run directory in use": (lambda t, r: ["train", "--out", r], "already holds files"),
    "output is a file": (lambda t, r: ["train", "--out", r / "config.json"], "is a file"),
    "picture over a data file": (
        lambda t, r: ["sample", r, "--out", npy(t, np.ones((3, 4)))],
        "must name a .png file",
    ),
    # checkpoints
    "missing checkpoint": (lambda t, r: ["sample", t / "nowhere"], "no checkpoint at"),
    "truncated checkpoint": (
        lambda t, r: ["sample", _truncate(r / "checkpoint.pt", 2000)],
        "not a readable checkpoint",
    ),
    "corrupted checkpoint": (
        lambda t, r: ["reconstruct", _overwrite(r / "checkpoint.pt", b"\x00" * 4096)],
        "not a readable checkpoint",
    ),
    "foreign checkpoint": (
        lambda t, r: ["sample", _foreign(t / "weights.pt")],
        "not a pyro-vae checkpoint",
    ),
    "newer checkpoint format": (
        lambda t, r: [
            "sample",
            edited_checkpoint(r, lambda p: p.update(format_version=FORMAT_VERSION + 1)),
        ],
        "upgrade pyro-vae",
    ),
    "checkpoint config and weights disagree": (
        lambda t, r: [
            "sample",
            edited_checkpoint(r, lambda p: p["config"]["model"].update(latent_dim=5)),
        ],
        "do not fit its own configuration",
    ),
    # resuming
    "resume changes the model": (
        lambda t, r: ["train", "--resume", r, "--epochs", "3", "--latent-dim", "2"],
        "--latent-dim cannot change",
    ),
    "resume a finished run": (lambda t, r: ["train", "--resume", r], "has finished its 1 epochs"),
    "resume with --out": (lambda t, r: ["train", "--resume", r, "--out", t / "x"], "drop --out"),
    "resume nothing": (lambda t, r: ["train", "--resume", t / "nowhere"], "no checkpoint at"),
    # data
    "corrupted IDX file": (
        lambda t, r: ["train", "--dataset", "mnist", "--data-dir", corrupt_idx(t, cut=False)],
        "not an IDX file",
    ),
    "truncated IDX file": (
        lambda t, r: ["train", "--dataset", "mnist", "--data-dir", corrupt_idx(t, cut=True)],
        "truncated or damaged",
    ),
    "no IDX files": (
        lambda t, r: ["train", "--dataset", "kmnist", "--data-dir", t],
        "no kmnist IDX files",
    ),
    "NaN in the array": (
        lambda t, r: ["train", "--data", npy(t, np.array([[0.5, np.nan]] * 30))],
        "NaN or infinite",
    ),
    "infinity in the array": (
        lambda t, r: ["train", "--data", npy(t, np.array([[0.5, np.inf]] * 30))],
        "NaN or infinite",
    ),
    "array of rank 1": (lambda t, r: ["train", "--data", npy(t, np.ones(30))], "(N, D)"),
    "array with no rows": (lambda t, r: ["train", "--data", npy(t, np.ones((0, 4)))], "no data"),
    "grey data, binary likelihood": (
        lambda t, r: ["train", "--likelihood", "bernoulli"],
        "binary (0 or 1)",
    ),
    "data above 1, continuous Bernoulli": (
        lambda t, r: [
            "train",
            "--data",
            npy(t, np.full((30, 4), 2.0)),
            "--likelihood",
            "continuous-bernoulli",
        ],
        "in [0, 1]",
    ),
    # training
    "diverging learning rate": (
        lambda t, r: ["train", "--lr", "5", "--sigma", "0.1", "--out", t / "run"],
        "learning rate",
    ),
}


def _truncate(path: Path, size: int) -> Path:
    path.write_bytes(path.read_bytes()[:size])
    return path


def _overwrite(path: Path, content: bytes) -> Path:
    path.write_bytes(content)
    return path


def _foreign(path: Path) -> Path:
    torch.save({"weights": torch.zeros(3)}, path)
    return path


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("trained") / "run"
    result = CliRunner().invoke(
        cli.app, ["train", "--out", str(out), "--epochs", "1", "--hidden-dims", "16"]
    )
    assert result.exit_code == 0, result.output
    return out


def snapshot(folder: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.mark.parametrize("setup, message", CASES.values(), ids=CASES.keys())
def test_user_mistakes_get_one_line_and_exit_status_2(setup, message, trained_run, tmp_path):
    if message == "CUDA is not available" and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    run = tmp_path / "trained"
    shutil.copytree(trained_run, run)
    args = [str(a) for a in setup(tmp_path, run)]
    before = snapshot(tmp_path)
    default_runs = Path.cwd() / "runs"  # where train writes without --out
    runs_before = set(default_runs.iterdir()) if default_runs.is_dir() else set()
    result = CliRunner().invoke(cli.app, args)
    assert result.exit_code == 2, result.output
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("Error")]
    assert len(error_lines) == 1, result.stderr
    assert message in error_lines[0]
    assert "Traceback" not in result.output
    assert all(path.read_bytes() == content for path, content in before.items())
    runs_after = set(default_runs.iterdir()) if default_runs.is_dir() else set()
    assert runs_after == runs_before  # no run directory was started
