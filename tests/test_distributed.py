"""Data-parallel training with torch.distributed: two processes started by torchrun, gloo on the
loopback interface, against one process trained on the same global batches."""

import copy
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pyro
import pytest
import torch
from typer.testing import CliRunner

import cli
from pyro_vae import (
    DataConfig,
    ModelConfig,
    Replicas,
    TrainConfig,
    load_checkpoint,
    load_dataset,
    resume_run,
)
from pyro_vae.inference.distributed import (
    ORDER_STREAM,
    TRAINING_STREAM,
    VALIDATION_STREAM,
    derived_seed,
)
from pyro_vae.inference.evaluate import elbo_estimate, elbo_sums
from pyro_vae.inference.objectives import loss_and_backward, make_elbo
from pyro_vae.models.build import build_model
from pyro_vae.runs import rundir as runs

ROOT = Path(__file__).parents[1]
# 1,437 training digits = 4 × 359 + 1: the last batch of each epoch leaves one process without
# a single image, which must still take part in the step.
SEED, BATCH, LR = 3, 359, 1e-3
# Learnable prior and likelihood parameters besides the networks: every kind must stay in sync.
MODEL = ModelConfig(hidden_dims=(16,), prior="mog", likelihood="gaussian-learned")
TRAIN_OPTIONS = [
    "--hidden-dims", "16", "--prior", "mog", "--likelihood", "gaussian-learned",
    "--seed", str(SEED), "--batch-size", str(BATCH), "--lr", str(LR),
]  # fmt: skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun_command(
    *arguments: str,
    cwd: Path,
    launch: list[str] | None = None,
    script: Path = ROOT / "cli.py",
    logs: str = "logs",
) -> tuple[list[str], dict[str, str]]:
    """``torchrun LAUNCH script arguments`` on 127.0.0.1, each process's output in its own file
    under cwd/logs: the command and its environment. LAUNCH is two processes by default."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    if sys.platform.startswith("linux"):
        env["GLOO_SOCKET_IFNAME"] = "lo"  # the loopback interface, whatever the host's network
    if launch is None:
        launch = ["--nproc_per_node=2", "--master-addr=127.0.0.1", f"--master-port={free_port()}"]
    command = [
        sys.executable, "-m", "torch.distributed.run", *launch,
        "--redirects", "3", "--log-dir", str(cwd / logs), str(script), *arguments,
    ]  # fmt: skip
    return command, env


def torchrun(*arguments: str, cwd: Path, **options: object) -> subprocess.CompletedProcess:
    command, env = torchrun_command(*arguments, cwd=cwd, **options)  # type: ignore[arg-type]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=240)


def process_output(cwd: Path, rank: int) -> str:
    (folder,) = (cwd / "logs").glob(f"*/attempt_0/{rank}")
    return (folder / "stdout.log").read_text() + (folder / "stderr.log").read_text()


@pytest.fixture(scope="module")
def one_process_reference() -> list[dict]:
    """One process, the same global batches, each cut in the two replicas' shards whose gradients
    accumulate before the Adam step, each shard's noise from its replica's seed: after each of two
    epochs, the parameters, Adam's state and the epoch's metrics.

    Adam's update hardly changes when every gradient is scaled alike; its moments, the summed
    loss and the ELBOs do: they catch an all-reduce that averages where it must sum."""
    pyro.set_rng_seed(SEED)
    data = load_dataset(DataConfig())
    num_train = data.train.x.shape[0]
    assert num_train % BATCH == 1  # see BATCH
    vae = build_model(MODEL, data.data_dim)
    elbo = make_elbo("mc")
    optimizer = torch.optim.Adam(vae.parameters(), lr=LR, fused=True)
    states = []
    for epoch in range(2):
        generator = torch.Generator().manual_seed(derived_seed(SEED, ORDER_STREAM, epoch))
        order = torch.randperm(num_train, generator=generator)
        loss_sum = torch.zeros(())
        for step, index in enumerate(order.split(BATCH)):
            optimizer.zero_grad(set_to_none=True)
            for rank, shard in enumerate(index.tensor_split(2)):
                if not len(shard):
                    continue
                torch.manual_seed(derived_seed(SEED, TRAINING_STREAM, epoch, step, rank))
                loss_sum += loss_and_backward(
                    elbo, vae.generative_model, vae.inference_guide, data.train.x[shard]
                )[0]
            optimizer.step()
        val_sums = torch.zeros(3, dtype=torch.float64)
        for rank, shard in enumerate(data.val.x.tensor_split(2)):
            torch.manual_seed(derived_seed(SEED, VALIDATION_STREAM, epoch, rank))
            val_sums += elbo_sums(vae, shard, num_particles=TrainConfig.val_particles)
        val = elbo_estimate(val_sums, data.val.x.shape[0])
        states.append(
            {
                "model": {k: v.clone() for k, v in vae.state_dict().items()},
                "optimizer": copy.deepcopy(optimizer.state_dict()),
                "train_elbo": -loss_sum.item() / num_train,
                "val_elbo": val.value,
                "val_elbo_se": val.standard_error,
            }
        )
    return states


def assert_parameters_match(run: Path, expected: dict) -> None:
    """The run's parameters, Adam's moments and metrics are those of ``expected``."""
    checkpoint = load_checkpoint(run)
    trained = checkpoint.model_state
    assert trained.keys() == expected["model"].keys()
    for name, tensor in expected["model"].items():
        torch.testing.assert_close(trained[name], tensor, rtol=1e-5, atol=1e-6, msg=name)
    adam = checkpoint.trainer_state["optimizer"]["state"]
    for index, moments in expected["optimizer"]["state"].items():
        for key in ("exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(adam[index][key], moments[key], rtol=1e-4, atol=1e-9)
    history = checkpoint.trainer_state["history"][-1]
    assert history["train_elbo"] == pytest.approx(expected["train_elbo"], rel=1e-5)
    assert history["val_elbo"] == pytest.approx(expected["val_elbo"], rel=1e-5)
    assert history["val_elbo_se"] == pytest.approx(expected["val_elbo_se"], rel=1e-4)
    metrics = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert metrics["train_elbo"] == pytest.approx(expected["train_elbo"], rel=1e-5)


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory) -> tuple[Path, Path]:
    """The folder of a one-epoch two-process run, and a copy of the run directory."""
    cwd = tmp_path_factory.mktemp("torchrun")
    done = torchrun("train", "--out", "run", "--epochs", "1", *TRAIN_OPTIONS, cwd=cwd)
    assert done.returncode == 0, done.stderr + process_output(cwd, 0) + process_output(cwd, 1)
    copy = shutil.copytree(cwd / "run", tmp_path_factory.mktemp("copy") / "run")
    return cwd, copy


def test_two_processes_train_as_one_on_the_same_global_batches(
    two_process_run, one_process_reference
):
    cwd, _ = two_process_run
    assert_parameters_match(cwd / "run", one_process_reference[0])
    record = json.loads((cwd / "run" / "config.json").read_text())
    assert record["processes"] == 2


def test_two_machines_rendezvous_and_train_as_one(tmp_path, one_process_reference):
    """Two launchers of one process each, as on two machines, meeting through torchrun's c10d
    rendezvous (the README's multi-machine command, with 127.0.0.1 for the first machine)."""
    endpoint = f"127.0.0.1:{free_port()}"
    launch = ["--nnodes=2", "--nproc_per_node=1", "--rdzv-id=test", "--rdzv-backend=c10d"]
    arguments = ("train", "--out", "run", "--epochs", "1", *TRAIN_OPTIONS)
    machines = []
    for machine in range(2):
        command, env = torchrun_command(
            *arguments, cwd=tmp_path, launch=[*launch, f"--rdzv-endpoint={endpoint}"],
            logs=f"logs-{machine}",
        )  # fmt: skip
        machines.append(subprocess.Popen(command, cwd=tmp_path, env=env, stderr=subprocess.PIPE))
    for launcher in machines:
        _, stderr = launcher.communicate(timeout=240)
        assert launcher.returncode == 0, stderr
    assert_parameters_match(tmp_path / "run", one_process_reference[0])


def test_only_rank_0_writes_and_reports(two_process_run):
    cwd, _ = two_process_run
    assert sorted(p.name for p in cwd.iterdir()) == ["logs", "run"]
    run_files = {runs.CHECKPOINT, runs.CONFIG, runs.METRICS, runs.TIMING}
    pictures = {runs.ELBO_CURVE, runs.RECONSTRUCTIONS, runs.SAMPLES}
    assert {p.name for p in (cwd / "run").iterdir()} == run_files | pictures
    assert "Trained 1 epochs" in process_output(cwd, 0)
    assert process_output(cwd, 1) == ""  # no progress bar, no notes, no summary


def test_a_distributed_run_resumes_exactly(two_process_run, one_process_reference):
    cwd, _ = two_process_run
    done = torchrun("train", "--resume", "run", "--epochs", "2", cwd=cwd)
    assert done.returncode == 0, done.stderr + process_output(cwd, 0)
    assert_parameters_match(cwd / "run", one_process_reference[1])
    lines = (cwd / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2]


def test_one_process_continues_a_two_process_run(two_process_run):
    """Another number of processes continues from the same state (with other noise)."""
    _, copy = two_process_run
    result = resume_run(copy, {"epochs": 2})
    assert result.finished and [m.epoch for m in result.history] == [1, 2]
    record = json.loads((copy / "config.json").read_text())
    assert record["processes"] == 1 and record["resumed_after_epoch"] == 1


def test_ctrl_c_stops_every_process_after_the_same_step(tmp_path):
    command, env = torchrun_command(
        "train", "--out", "run", "--epochs", "500", "--hidden-dims", "16", cwd=tmp_path
    )
    job = subprocess.Popen(
        command, cwd=tmp_path, env=env, start_new_session=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    metrics = tmp_path / "run" / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while not (metrics.exists() and len(metrics.read_text().splitlines()) >= 2):
        assert job.poll() is None and time.monotonic() < deadline, job.communicate()
        time.sleep(0.05)
    os.killpg(job.pid, signal.SIGINT)  # as Ctrl-C in a terminal: torchrun and both processes
    job.communicate(timeout=120)
    assert "Stopped after epoch" in process_output(tmp_path, 0)
    assert process_output(tmp_path, 1) == ""  # stopped quietly, not killed or crashed
    stopped = load_checkpoint(tmp_path / "run").trainer_state
    assert 2 <= len(stopped["history"]) < 500
    result = resume_run(tmp_path / "run", {"epochs": len(stopped["history"]) + 1})
    assert result.finished


FAILING_RANK = """
import sys
import cli
from pyro_vae.inference.trainer import Trainer

honest = Trainer._backward

def failing(self, batch):
    if self.replicas.rank == 1 and self.steps_done == 3:
        raise RuntimeError("injected failure in rank 1")
    return honest(self, batch)

Trainer._backward = failing
sys.argv[0] = "cli.py"
cli.main()
"""


def test_a_failing_rank_fails_the_job_with_its_error(tmp_path):
    script = tmp_path / "failing_rank.py"
    script.write_text(FAILING_RANK)
    done = torchrun("train", "--out", "run", "--epochs", "1", "--hidden-dims", "16",
                    cwd=tmp_path, script=script)  # fmt: skip
    assert done.returncode != 0
    assert "injected failure in rank 1" in process_output(tmp_path, 1)
    assert "injected failure in rank 1" in done.stderr  # torchrun's summary names the error
    assert not (tmp_path / "run" / "metrics.jsonl").read_text()  # no epoch finished


def test_a_user_error_on_rank_0_stops_every_process_and_keeps_the_files(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.json").write_text("precious")  # the user's, not a run's record
    done = torchrun("train", "--out", "run", "--epochs", "1", cwd=tmp_path)
    assert done.returncode != 0
    output = process_output(tmp_path, 0)
    assert "Error: " in output and "would write over (config.json)" in output
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["config.json"]
    assert (tmp_path / "run" / "config.json").read_text() == "precious"
    # rank 1, still at the rendezvous, ended at torchrun's SIGTERM, not its SIGKILL 30 s later
    assert "SIGKILL" not in done.stderr


# Without torchrun: the pieces.


def test_derived_seeds_are_fixed_distinct_and_in_range():
    seeds = {
        derived_seed(0, TRAINING_STREAM, 0, step, rank) for step in range(50) for rank in (0, 1)
    }
    assert len(seeds) == 100
    assert derived_seed(0, 1, 2) == derived_seed(0, 1, 2) != derived_seed(1, 1, 2)
    assert all(0 <= seed < 2**63 for seed in seeds)


def test_replicas_come_from_torchruns_environment(monkeypatch):
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert Replicas.from_environment() == Replicas() and not Replicas().distributed
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "29500")
    replicas = Replicas.from_environment()
    assert (replicas.rank, replicas.world_size, replicas.local_rank) == (3, 4, 1)
    assert replicas.distributed and not replicas.is_main


@pytest.mark.parametrize("rows", [64, 29, 1])
def test_shards_cover_a_batch_once(rows):
    batch = torch.arange(rows)
    shards = [Replicas(rank, 2).shard(batch) for rank in range(2)]
    assert torch.equal(torch.cat(shards), batch)
    assert abs(len(shards[0]) - len(shards[1])) <= 1


def test_torchrun_without_an_output_directory_is_refused(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "29500")
    result = CliRunner().invoke(cli.app, ["train", "--epochs", "1"])
    assert result.exit_code == 2
    assert "pass --out DIR" in result.output
