"""The experiment and benchmark scripts run as shipped (the docs' examples: test_docs.py)."""

import re
import sys
from pathlib import Path

import pytest
import torch

from pyro_vae.core.config_file import read_config_file

ROOT = Path(__file__).resolve().parents[1]


def test_posterior_collapse_experiment_quick_mode(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "experiments"))
    import posterior_collapse

    out = posterior_collapse.main(
        ["--quick", "--sigmas", "1.0", "0.1", "--out", str(tmp_path / "r.md")]
    )
    table = [line for line in out.read_text().splitlines() if line.startswith("| ")]
    assert len(table) == 1 + 2  # header and one row per σ
    # σ = 1: no eigenvalue of the digits' covariance exceeds σ²: PPCA predicts no latent direction
    assert table[1].startswith("| 1 | 0 |")
    sys.modules.pop("posterior_collapse", None)


def test_priors_experiment_quick_mode(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "experiments"))
    import priors

    out = priors.main(["--quick", "--priors", "standard", "vamp", "--out", str(tmp_path / "p.md")])
    text = out.read_text()
    rows = [line.split(" | ") for line in text.splitlines() if line.startswith("| ")]
    table = [row for row in rows if row[0] in ("| standard", "| vamp")]
    assert [row[0] for row in table[:2]] == ["| standard", "| vamp"]
    assert [row[5] for row in table[:2]] == ["yes", "no"]  # the KL in closed form
    assert table[0][6] == "88.56" and table[1][6] == "85.57"  # the paper's beside ours
    difference = table[2]  # vamp less standard, paired image by image on the same test images
    assert difference[1] == "-2.99"  # the paper's
    measured = float(difference[2].split(" ± ")[0])
    assert measured == pytest.approx(float(table[1][1]) - float(table[0][1]), abs=0.011)
    assert "| 1 | " in text  # the curve's one epoch
    assert "Command: `python experiments/priors.py --quick" in text
    sys.modules.pop("priors", None)


def test_iwae_benchmark_quick_mode(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import iwae

    result = iwae.main(["--quick"])
    assert result["images"] == 50 and result["num_samples"] == 10
    assert result["median_seconds"] > 0 and result["peak_rss_mib"] >= result["rss_before_mib"]
    sys.modules.pop("iwae", None)


def test_estimators_experiment_quick_mode_writes_every_section(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "experiments"))
    import estimators

    report = estimators.main(["--quick", "--datasets", "digits", "--out", str(tmp_path)])
    text = report.read_text()
    for heading in (
        "### 1. The estimate at fixed parameters",
        "### 2. The gradient at fixed parameters",
        "### 3. Training",
        "### 4. A prior without a closed-form KL",
    ):
        assert heading in text
    assert "Command: `python experiments/estimators.py --quick" in text
    assert (tmp_path / "training-digits.png").stat().st_size > 0
    decoder_rows = [line for line in text.splitlines() if "| decoder |" in line]
    assert decoder_rows and all(len(row.split("|")) == 13 for row in decoder_rows)
    assert "| stl | " in text  # a contestant of the training section too
    sys.modules.pop("estimators", None)


def test_experiments_are_reachable_from_the_cli():
    import subprocess

    result = subprocess.run(
        [sys.executable, str(ROOT / "cli.py"), "experiment", "--help"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "estimators" in result.stdout and "--quick" in result.stdout
    from pyro_vae.cli.train import ExperimentName

    scripts = {path.stem for path in (ROOT / "experiments").glob("*.py")}
    scripts -= {"common", "equal_cost"}  # what the experiments share
    assert {name.value for name in ExperimentName} == scripts  # every script, and no other


def test_iwae_step_benchmark_quick_mode(monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import iwae_step

    medians = iwae_step.main(["--quick"])
    assert set(medians) == {
        "VAE, k = 1",
        "IWAE, k = 3, recorded",
        "IWAE, k = 3, eager",
        "IWAE, k = 3, Pyro's RenyiELBO",
    }
    assert all(seconds > 0 for seconds in medians.values())
    assert "k = 3: the recorded step is" in capsys.readouterr().out
    sys.modules.pop("iwae_step", None)


def test_training_step_benchmark_quick_mode(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import training_step

    medians = training_step.main(["--quick"])
    assert {"hand-written PyTorch", "pyro-vae mc", "pyro-vae analytic", "tutorial SVI.step"} <= set(
        medians
    )
    assert all(seconds > 0 for seconds in medians.values())
    sys.modules.pop("training_step", None)


def test_m2_epoch_benchmark_quick_mode(monkeypatch, capsys):
    """Pyro's example and pyro-vae (recorded and eager) each train an M2 epoch on random images;
    pyro-vae's steps and validation are timed apart."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import m2_epoch

    medians = m2_epoch.main(["--quick", "--bf16"])
    expected = {"Pyro's example"}
    names = ["pyro-vae", "pyro-vae eager", "pyro-vae --matmul-precision medium"]
    if torch.backends.mkldnn.is_available():
        names.append("pyro-vae, MKL's products")
    for name in names:
        expected |= {name, f"{name} steps", f"{name} validation"}
    assert set(medians) == expected
    assert all(seconds > 0 for seconds in medians.values())
    assert medians["pyro-vae steps"] < medians["pyro-vae"]
    out = capsys.readouterr().out
    assert "Pyro's example: 8 batches (1 supervised, 7 not)" in out
    assert "floor: pyro-vae's steps multiply" in out and "(7 steps, forward and backward)" in out
    sys.modules.pop("m2_epoch", None)


def test_m2_floor_counts_the_backward_products(monkeypatch, capsys):
    """The floor's FLOP for a step: at least the decoder's last layer on every class's codes,
    forward and both gradients (the step's largest products), and less than twice that."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import m2_epoch

    data, batch = m2_epoch.synthetic(400, 100), 50
    step_flop = m2_epoch.products_floor(data, 50, batch, example_epoch=1.0, repeats=1)
    last_layer = 3 * 2 * (batch * data.num_classes) * m2_epoch.HIDDEN * data.data_dim
    assert last_layer <= step_flop < 2 * last_layer
    assert "floor: pyro-vae's steps multiply" in capsys.readouterr().out
    sys.modules.pop("m2_epoch", None)


def test_gemm_benchmark_quick_mode(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import gemm

    rates = gemm.main(["--quick", "--latent", "20"])
    assert len(rates) == 12  # four layers, three products each
    assert all(rows["MKL"] > 0 and rows.get("oneDNN", 1) > 0 for rows in rates.values())
    sys.modules.pop("gemm", None)


def test_distributed_benchmark_quick_mode(monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import distributed

    # two processes only: one process's run is the other tests' everyday training
    rates = distributed.main(["--quick", "--processes", "2"])
    assert set(rates) == {(2, 64)} and rates[(2, 64)] > 0
    printed = capsys.readouterr().out
    assert "images/s" in printed and "all-reduce over gloo among 2 processes" in printed
    sys.modules.pop("distributed", None)


@pytest.mark.slow
def test_whole_run_benchmark_times_each_contestant(tmp_path, monkeypatch, capsys):
    """Two epochs of tiny data: each contestant runs as a process and reports its steady state
    (NumPyro only where its extra is installed: the line saying so otherwise)."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import numpy as np
    import whole_run

    np.save(tmp_path / "tiny.npy", np.random.default_rng(0).random((300, 784), dtype=np.float32))
    whole_run.main(["--runs", "1", "--epochs", "2", "--data", str(tmp_path / "tiny.npy"), "--bf16"])
    printed = capsys.readouterr().out
    for name in ("pyro-vae", "hand-written PyTorch", "pyro-vae --matmul-precision medium"):
        assert re.search(rf"^  {re.escape(name)} +[0-9.]+ +[0-9.]+ +[0-9.]+$", printed, re.M)
    assert "pyro-vae ÷ hand-written PyTorch:" in printed
    # pyro-vae validates with one sample of z per image, as NumPyro and the script do
    command = whole_run.contestants(tmp_path / "tiny.npy", 2, tmp_path)["pyro-vae"]
    config = command[command.index("--config") + 1]
    assert read_config_file(config)["train"] == {"val_particles": 1}
    # --latent reaches every contestant
    commands = whole_run.contestants(tmp_path / "tiny.npy", 2, tmp_path, latent=50)
    for name, flag in [("pyro-vae", "--latent-dim"), ("hand-written PyTorch", "--latent")]:
        assert commands[name][commands[name].index(flag) + 1] == "50"
    sys.modules.pop("whole_run", None)


def test_recorded_checks_benchmark_measures_both_costs(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import recorded_checks

    result = recorded_checks.main(["--turns", "1"])
    assert result["check_us"] > 0 and result["step"] > 0 and result["validation pass"] > 0
    sys.modules.pop("recorded_checks", None)


def test_audit_cost_benchmark_compares_audited_and_plain_steps(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import audit_cost

    result = audit_cost.main(["--turns", "1", "--steps", "2"])
    assert result["step_ms"] > 0 and result["audited_step_ratio"] > 0
    assert {"steady_share", "quickstart_share"} <= set(result)  # noise may make either small
    sys.modules.pop("audit_cost", None)


def test_rate_distortion_experiment_quick_mode(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "experiments"))
    import rate_distortion

    # No MNIST in the data folder: the digits part alone, which every machine can run.
    out = rate_distortion.main(
        ["--quick", "--data-dir", str(tmp_path), "--out", str(tmp_path / "r.md")]
    )
    text = out.read_text()
    assert "## MNIST" not in text and "does warm-up or free bits prevent the collapse" in text
    for setting in ("plain ELBO", "warm-up 1", "free bits 0.25", "free bits 1"):
        assert f"| {setting} |" in text
    sys.modules.pop("rate_distortion", None)


def test_step_levers_benchmark_quick_mode(monkeypatch, capsys):
    """Quick mode times each lever beside what it would replace (Inductor's left out): the
    overheads of a step with no arithmetic, the three Adams and the three thread settings."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import step_levers

    if torch.get_num_threads() < 2:
        pytest.skip("the threads lever compares 2 threads with 1")
    results = step_levers.main(["--quick"])
    overhead = results["overhead of a step with no arithmetic (4-4-2 VAE, batch 2)"]
    assert overhead["graph's kernel calls"] > 0 and overhead["fused Adam (its Python)"] > 0
    assert set(results["Adam over the 784-400-20 VAE's parameters, alone"]) == {
        "fused", "foreach", "per tensor"
    }  # fmt: skip
    threads = results["threads, the 784-400-20 step and its update"]
    assert all(seconds > 0 for seconds in threads.values()) and len(threads) == 3
    assert "the 784-400-20 step and its update" in capsys.readouterr().out
    sys.modules.pop("step_levers", None)


def test_step_anatomy_benchmark_quick_mode(monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import step_anatomy

    step_anatomy.main(["--quick"])
    printed = capsys.readouterr().out
    assert "matrix products:" in printed and "GFLOP/s" in printed
    for particles in (1, 4, 16):
        assert f"validation, {particles:2d} samples of z" in printed
    sys.modules.pop("step_anatomy", None)


def test_training_step_benchmark_times_conv_networks_too(monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import training_step

    medians = training_step.main(["--quick", "--shape", "digits", "--network", "conv"])
    assert {"hand-written PyTorch", "pyro-vae mc", "pyro-vae analytic"} <= set(medians)
    assert "digits, conv: batch 32" in capsys.readouterr().out
    sys.modules.pop("training_step", None)


def test_networks_experiment_quick_mode(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "experiments"))
    import networks

    text = networks.main(["--quick", "--out", str(tmp_path / "r.md")]).read_text()
    rows = [line.split(" | ") for line in text.splitlines() if "(seed 0)" in line]
    assert [(row[0].removeprefix("| "), row[1]) for row in rows] == [
        ("mlp (seed 0)", "equal epochs"),
        ("mlp (seed 0)", "equal time"),
        ("conv (seed 0)", "equal epochs"),
        ("conv (seed 0)", "equal time"),
    ]
    parameters = {row[0]: int(row[5].replace(",", "")) for row in rows}
    assert parameters["| mlp (seed 0)"] != parameters["| conv (seed 0)"]
    assert all(float(row[-1].rstrip(" |")) >= 0 for row in rows)  # IWAE ≥ ELBO, image by image
    # the conv against the MLP, image by image, at both budgets
    paired = [r for r in text.splitlines() if r.startswith("| conv | ") and "equal" not in r]
    assert len(paired) == 2
    assert "Command: `python experiments/networks.py --quick" in text
    assert "{" not in text  # every placeholder filled in
    sys.modules.pop("networks", None)


def test_guides_experiment_quick_mode(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "experiments"))
    import guides

    text = guides.main(["--quick", "--out", str(tmp_path / "r.md")]).read_text()
    rows = [line.split(" | ") for line in text.splitlines() if "(seed 0)" in line]
    assert [(row[0].removeprefix("| "), row[1]) for row in rows[:3]] == [
        ("diagonal (seed 0)", "equal epochs"),
        ("diagonal (seed 0)", "equal time"),
        ("full (seed 0)", "equal epochs"),
    ]
    assert len(rows) == 2 * len(guides.CONTESTANTS)  # the slowest's equal time: its equal epochs
    assert all(float(row[-1].rstrip(" |")) >= 0 for row in rows)  # IWAE ≥ ELBO, image by image
    parameters = {row[0]: int(row[5].replace(",", "")) for row in rows}
    assert len(set(parameters.values())) == len(guides.CONTESTANTS)
    assert "Command: `python experiments/guides.py --quick" in text
    assert "{" not in text  # every placeholder filled in
    # a subset, named in any order, keeps the families' order: the base first
    chosen = guides.contest(["iaf K=4", "diagonal", "iaf K=1"], 3e-4)
    assert list(chosen.contestants) == ["diagonal", "iaf K=1", "iaf K=4"]
    assert (chosen.base, chosen.lr) == ("diagonal", 3e-4)
    with pytest.raises(ValueError, match="two guides or more"):
        guides.contest(["full"], 1e-3)
    # a user's mistake on the command line: exit 2 with argparse's one line, before any data
    for wrong in (["--guides", "full"], ["--guides", "full", "full"], ["--lr", "-1"]):
        with pytest.raises(SystemExit) as stopped:
            guides.main(["--quick", *wrong])
        assert stopped.value.code == 2
    sys.modules.pop("guides", None)


def test_semi_supervised_experiment_quick_mode(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "experiments"))
    import semi_supervised

    out = semi_supervised.main(["--quick", "--out", str(tmp_path / "r.md")])
    text = out.read_text()
    row = next(line for line in text.splitlines() if line.startswith("| 50 |"))
    cells = [cell.strip() for cell in row.strip("| ").split(" | ")]
    # labels; the classifier alone, M2, the classifier on M1's codes, M1+M2, Pyro's example;
    # Kingma's two
    assert len(cells) == 8
    assert all(0 <= float(cell.split(" ± ")[0]) <= 100 for cell in cells[1:6])
    assert "Command: `python experiments/semi_supervised.py --quick" in text
    sys.modules.pop("semi_supervised", None)


def test_label_weight_experiment_quick_mode(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "experiments"))
    import label_weight

    out = label_weight.main(["--quick", "--out", str(tmp_path / "r.md")])
    rows = [line for line in out.read_text().splitlines() if line.startswith("| 50 |")]
    assert len(rows) == 2 + len(label_weight.QUICK_GRID)  # the two classifiers alone
    errors = [float(row.strip("|").split("|")[5]) for row in rows]
    assert all(0 <= error <= 100 for error in errors)
    assert "Command: `python experiments/label_weight.py --quick" in out.read_text()
    sys.modules.pop("label_weight", None)
    sys.modules.pop("semi_supervised", None)


def test_conditional_experiment_quick_mode(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "experiments"))
    import conditional

    text = conditional.main(["--quick", "--out", str(tmp_path / "c.md")]).read_text()
    row = next(line for line in text.splitlines() if line.startswith("| 2 |"))
    agreement = float(row.split(" | ")[1].rstrip("%"))
    assert 0 <= agreement <= 100
    assert (tmp_path / "c_latent2.png").is_file() and "![samples](c_latent2.png)" in text
    assert "Command: `python experiments/conditional.py --quick" in text
    sys.modules.pop("conditional", None)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_graph_benchmark_says_it_needs_a_gpu(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import cuda_graph

    with pytest.raises(SystemExit, match="measures a GPU, and this machine has none"):
        cuda_graph.main([])
    sys.modules.pop("cuda_graph", None)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_graph_benchmark_times_the_captured_step(monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import cuda_graph

    results = cuda_graph.main(["--batch", "16", "--turns", "1", "--steps", "4"])
    medians = results[16]["medians"]
    assert medians["pyro-vae mc (CUDA graph)"] > 0 and medians["hand-written PyTorch, eager"] > 0
    printed = capsys.readouterr().out
    assert "pyro-vae mc (CUDA graph): 1 graph(s) captured, failure None" in printed
    sys.modules.pop("cuda_graph", None)


def test_anomaly_experiment_quick_mode(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "experiments"))
    import anomaly

    out = anomaly.main(["--quick", "--out", str(tmp_path / "a.md")])
    rows = [line for line in out.read_text().splitlines() if line.startswith("| ")]
    assert [row.split(" | ")[0] for row in rows[1:]] == ["| 0", "| 1", "| mean"]
    aurocs = [float(cell.split(" ±")[0]) for cell in rows[1].split(" | ")[2:]]
    assert len(aurocs) == 3 and all(0 <= a <= 1 for a in aurocs)
    assert "Nalisnick" in out.read_text()
    sys.modules.pop("anomaly", None)


def test_importance_weighted_experiment_quick_mode(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "experiments"))
    import importance_weighted

    out = importance_weighted.main(["--quick", "--out", str(tmp_path / "r.md")])
    text = out.read_text()
    table, paired = text.split("Ordering by test NLL")
    rows = [line.split(" | ") for line in table.splitlines() if "AE, k = " in line]
    assert [row[0] for row in rows] == ["| VAE, k = 1", "| IWAE, k = 5", "| IWAE, k = 50"]
    for row in rows:
        nll, elbo = float(row[1]), float(row[3])
        assert nll <= -elbo  # the IWAE bound is never below the ELBO from the same samples
    differences = [line for line in paired.splitlines() if line.startswith("| IWAE, k = ")]
    assert len(differences) == 2 and all(" ± " in line for line in differences)
    assert "| 1 | " in paired  # the curve's first epoch
    assert "Command: `python experiments/importance_weighted.py --quick" in text
    sys.modules.pop("importance_weighted", None)


def test_a_reports_command_pastes_back(monkeypatch):
    """An argument with spaces (a semi-supervised method, a guide) is quoted in the report's
    command line, so that the command regenerates the report when pasted into a shell."""
    monkeypatch.syspath_prepend(str(ROOT / "experiments"))
    import shlex

    from common import provenance

    line = provenance("guides.py", ["--guides", "diagonal", "iaf K=4", "--seeds", "0"])
    command = line.split("`")[1]
    assert shlex.split(command)[2:] == ["--guides", "diagonal", "iaf K=4", "--seeds", "0"]
    sys.modules.pop("common", None)


def test_an_equal_time_run_is_the_longer_run(monkeypatch):
    """A contestant trained on after others trained and after it was scored ends where the same
    run trained straight through does: each run draws on random streams of its own."""
    monkeypatch.syspath_prepend(str(ROOT / "experiments"))
    import equal_cost
    import guides

    from pyro_vae import DataConfig, load_dataset

    data = load_dataset(DataConfig(binarize="static"))
    names = ("diagonal", "full")
    contest = equal_cost.Contest(
        "guide", {n: guides.CONTESTANTS[n] for n in names}, "diagonal", 256
    )
    interrupted = equal_cost.Run(contest, data, "diagonal", seed=3, curve_samples=2)
    interrupted.epoch()
    equal_cost.Run(contest, data, "full", seed=3, curve_samples=2).epoch()
    fit_x = torch.cat([data.train.x[:8], data.val.x[:8]])
    interrupted.score("equal epochs", data.test.x[:16], fit_x, samples=4)
    interrupted.epoch()
    straight = equal_cost.Run(contest, data, "diagonal", seed=3, curve_samples=2)
    straight.epoch()
    straight.epoch()
    assert interrupted.curve == straight.curve
    pairs = zip(interrupted.vae.parameters(), straight.vae.parameters(), strict=True)
    assert all(torch.equal(a, b) for a, b in pairs)
    for name in ("equal_cost", "guides", "common"):
        sys.modules.pop(name, None)


def test_the_experiment_command_passes_the_scripts_own_options_on(monkeypatch):
    import subprocess

    from typer.testing import CliRunner

    import cli
    import pyro_vae.cli.train as train

    ran = []

    def run(command, check):
        ran.append(command)
        return subprocess.CompletedProcess(command, 0)

    monkeypatch.setattr(train.subprocess, "run", run)
    result = CliRunner().invoke(
        cli.app, ["experiment", "priors", "--seeds", "0", "1", "--quick", "--epochs", "2"]
    )
    assert result.exit_code == 0, result.output
    (command,) = ran
    assert Path(command[1]) == ROOT / "experiments" / "priors.py"
    assert command[2:] == ["--quick", "--seeds", "0", "1", "--epochs", "2"]
