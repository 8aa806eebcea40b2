"""Run directories and the advice the tool gives: what it prints must work when followed, a folder
is reused or cleared only where nothing of the user's is lost, one process writes a run, moved
data are found again, and SIGTERM stops a run as Ctrl-C does."""

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import cli
from pyro_vae import load_checkpoint
from pyro_vae.runs.rundir import run_lock

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["--hidden-dims", "16", "--sigma", "0.1"]


def run(*args: object):
    return CliRunner().invoke(cli.app, [str(a) for a in args])


def printed_command(output: str) -> list[str]:
    """The ``pyro-vae ...`` command at the end of the error line, as arguments to the app."""
    (line,) = [line for line in output.splitlines() if line.startswith("Error")]
    command = line[line.index("pyro-vae ") :]
    return shlex.split(command)[1:]


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    """Commands run in a folder of their own, as a user's would (relative paths included)."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_divergence_before_a_checkpoint_prints_a_command_that_trains(in_tmp):
    result = run("train", "--out", "run", "--epochs", "2", *SMALL, "--lr", "5")
    assert result.exit_code == 2
    assert "no checkpoint had been saved, so there is nothing to resume" in result.output
    assert not (in_tmp / "run" / "checkpoint.pt").exists()
    again = printed_command(result.output)
    assert again[:1] == ["train"] and "--lr" in again and "--out" in again
    assert again[again.index("--lr") + 1] == "0.001"  # from a rate above 1, Adam's usual one
    # The run directory holds the failed run's files, and the printed command may use it.
    followed = run(*again)
    assert followed.exit_code == 0, followed.output
    assert "holds no checkpoint, only the files of a run that stopped" in followed.output
    assert len(load_checkpoint(in_tmp / "run").trainer_state["history"]) == 2


def test_divergence_in_a_resumed_run_prints_a_resume_command_that_runs(in_tmp):
    """The resumed run's target (3 epochs) is not yet in the checkpoint on disk (1 of 1): the
    advice must carry --epochs, or following it would stop at 'has finished its 1 epochs'."""
    assert run("train", "--out", "run", "--epochs", "1", *SMALL).exit_code == 0
    result = run("train", "--resume", "run", "--epochs", "3", "--lr", "1")
    assert result.exit_code == 2
    assert "holds the last good state (after epoch 1)" in result.output
    again = printed_command(result.output)
    assert again == ["train", "--resume", "run", "--lr", "0.1", "--epochs", "3"]
    followed = run(*again)
    assert followed.exit_code == 0, followed.output
    assert len(load_checkpoint(in_tmp / "run").trainer_state["history"]) == 3


def test_resume_accepts_options_given_at_their_stored_values(in_tmp):
    assert run("train", "--out", "run", "--epochs", "1", *SMALL, "--latent-dim", "4").exit_code == 0
    same = run("train", "--resume", "run", "--epochs", "2", *SMALL, "--latent-dim", "4")
    assert same.exit_code == 0, same.output
    changed = run("train", "--resume", "run", "--epochs", "3", "--sigma", "0.2")
    assert changed.exit_code == 2 and "--sigma (the run has 0.1) cannot change" in changed.output


def test_a_run_on_moved_data_is_evaluated_and_resumed_from_anywhere(in_tmp, monkeypatch):
    images = np.random.default_rng(0).random((60, 36)).astype(np.float32)
    np.save(in_tmp / "images.npy", images)
    assert (
        run("train", "--out", "run", "--epochs", "1", *SMALL, "--data", "images.npy").exit_code == 0
    )
    record = json.loads((in_tmp / "run" / "config.json").read_text())
    assert record["config"]["data"]["path"] == str(in_tmp / "images.npy")  # absolute
    elsewhere = in_tmp / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert run("reconstruct", "../run", "--num", "4").exit_code == 0  # from another folder
    (in_tmp / "moved").mkdir()
    (in_tmp / "images.npy").rename(in_tmp / "moved" / "images.npy")
    lost = run("evaluate", "../run", "--num-samples", "4")
    assert lost.exit_code == 2 and "(--data FILE)" in lost.output
    for command in (["evaluate", "../run", "--num-samples", "4"], ["reconstruct", "../run"]):
        found = run(*command, "--data", "../moved/images.npy")
        assert found.exit_code == 0, found.output
    resumed = run("train", "--resume", "../run", "--epochs", "2", "--data", "../moved/images.npy")
    assert resumed.exit_code == 0, resumed.output
    record = json.loads((in_tmp / "run" / "config.json").read_text())
    assert record["config"]["data"]["path"] == str(in_tmp / "moved" / "images.npy")
    np.save(in_tmp / "other.npy", np.ones((60, 49), dtype=np.float32))
    wrong = run("evaluate", "../run", "--data", "../other.npy")
    assert wrong.exit_code == 2 and "images of shape (1, 7, 7)" in wrong.output


def test_overwrite_replaces_a_runs_files_and_keeps_the_users(in_tmp):
    assert run("train", "--out", "run", "--epochs", "1", *SMALL).exit_code == 0
    assert run("evaluate", "run", "--num-samples", "2").exit_code == 0
    assert run("sample", "run", "--seed", "3").exit_code == 0
    (in_tmp / "run" / "my-notes.txt").write_text("mine")
    old_id = json.loads((in_tmp / "run" / "config.json").read_text())["run_id"]
    result = run("train", "--out", "run", "--epochs", "1", "--overwrite", *SMALL)
    assert result.exit_code == 0, result.output
    assert "removed the previous run's files" in result.output
    names = {path.name for path in (in_tmp / "run").iterdir()}
    assert "evaluation-test-k2.json" not in names and "samples-seed3.png" not in names
    assert (in_tmp / "run" / "my-notes.txt").read_text() == "mine"
    new_id = json.loads((in_tmp / "run" / "config.json").read_text())["run_id"]
    assert new_id != old_id and load_checkpoint(in_tmp / "run").run_id == new_id


def test_the_run_lock_is_one_writer_and_goes_with_its_holder(tmp_path):
    out = tmp_path / "run"
    assert run("train", "--out", out, "--epochs", "1", *SMALL).exit_code == 0
    with run_lock(out):  # as a training process holds it
        second = run("train", "--resume", out, "--epochs", "2")
        assert second.exit_code == 2 and f"process {os.getpid()}" in second.output
    # A killed holder leaves the file, not the lock: the kernel released it.
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK.format(folder=str(out))], stdout=subprocess.PIPE
    )
    assert holder.stdout.readline().strip() == b"locked"
    busy = run("train", "--out", out, "--overwrite", *SMALL, "--epochs", "1")
    assert busy.exit_code == 2 and f"process {holder.pid}" in busy.output
    holder.kill()
    holder.wait(timeout=30)
    assert (out / ".lock").exists()  # killed: nobody removed it
    resumed = run("train", "--resume", out, "--epochs", "2")
    assert resumed.exit_code == 0, resumed.output
    assert not (out / ".lock").exists()


HOLD_LOCK = """
import sys, time
from pathlib import Path
from pyro_vae.runs.rundir import run_lock
with run_lock(Path({folder!r})):
    print("locked", flush=True)
    time.sleep(600)
"""


def test_a_quick_experiment_leaves_the_committed_report_alone(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "experiments"))
    import posterior_collapse

    committed = ROOT / "experiments" / "results" / "posterior_collapse.md"
    before = committed.read_bytes()
    out = posterior_collapse.main(["--quick", "--sigmas", "1.0"])
    assert out != committed and out.is_file() and committed.read_bytes() == before
    sys.modules.pop("posterior_collapse", None)


@pytest.mark.slow
def test_sigterm_stops_after_a_step_saves_and_prints_how_to_continue(tmp_path):
    out = tmp_path / "run"
    command = ["train", "--out", str(out), "--epochs", "200", "--hidden-dims", "16"]
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "cli.py"), *command],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    deadline = time.monotonic() + 120
    metrics = out / "metrics.jsonl"
    while not (metrics.exists() and metrics.read_text()) and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 128 + signal.SIGTERM, stderr
    assert "SIGTERM: stopping after this step" in stderr
    assert f"Continue with: pyro-vae train --resume {out}" in stdout
    checkpoint = load_checkpoint(out)
    assert 1 <= len(checkpoint.trainer_state["history"]) < 200
    assert not (out / ".lock").exists()
