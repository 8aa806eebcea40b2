"""The whole command as a user times it: pyro-vae, NumPyro and a hand-written PyTorch script.

Each contestant is a fresh process, timed from its start to its exit (imports, data, compilation,
every epoch, its validation, whatever it writes), on the same MNIST images saved as one ``.npy``
(every image of ../shared/data's default split: 10,000 when it held only the test file, 70,000
with the whole MNIST): 784-400-20, Gaussian likelihood with σ = 1, batch 128, 15 epochs. Each
does the same work an epoch: the same 80 / 10 / 10 split, and a validation ELBO with one sample
of z per image (pyro-vae's default is 4, for a standard error: ``[train] val_particles = 1`` in a
``--config`` file here, as NumPyro's ``svi.evaluate`` and the hand-written script take one). Runs
alternate (A B C, B C A, ...), and the report gives the median of each and the ratios of the
medians.

    python benchmarks/whole_run.py         # 3 runs each; NumPyro needs pip install -e ".[bench]"
    python benchmarks/whole_run.py --runs 1 --epochs 2
    python benchmarks/whole_run.py --long  # MNIST's 60,000 training images, 10 epochs
    python benchmarks/whole_run.py --long --latent 50  # 784-400-50 (every contestant)
    python benchmarks/whole_run.py --long --compile  # and pyro-vae train --compile beside them
    python benchmarks/whole_run.py --long --bf16  # and --matmul-precision medium beside them
    python benchmarks/whole_run.py --long --bf16 --compile  # each lever, and both at once

With ``--long``, the ``.npy`` holds exactly the 60,000 images of MNIST's IDX training file (each
contestant splits them 48,000 / 6,000 / 6,000: 375 steps of 128 an epoch), 10 epochs unless
``--epochs`` says otherwise.

The steady state of each comes from its own per-epoch timings (epochs 2 onwards, all runs): the
epoch (steps and validation), the step (the epoch's steps over their number) and the step's
achieved GFLOP/s (its matrix products, forward and backward: ``step_flop``). pyro-vae's come from
its ``timing.jsonl``; the others print theirs.
"""

import argparse
import importlib.util
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"


def mnist_npy(folder: Path, long: bool = False) -> Path:
    """The MNIST images of ../shared/data as one .npy of grey values in [0, 1]: every image of
    the default split, or (``long``) exactly the 60,000 of the IDX training file, in its order."""
    sys.path.insert(0, str(ROOT))
    from pyro_vae import DataConfig, load_dataset
    from pyro_vae.data.sources import load_mnist_family

    config = DataConfig(dataset="mnist", data_dir=str(SHARED_DATA))
    if long:
        raw = load_mnist_family(config)
        if raw.test is None:  # only the test file there: its images came back as the "train"
            raise SystemExit(f"--long needs MNIST's training file in {SHARED_DATA}/MNIST/raw")
        images = raw.x.numpy().astype(np.float32) / 255  # uint8, as the IDX file stores them
    else:
        data = load_dataset(config)
        images = np.concatenate([data.train.x.numpy(), data.val.x.numpy(), data.test.x.numpy()])
    path = folder / "mnist.npy"
    np.save(path, images)
    return path


def contestants(
    data: Path,
    epochs: int,
    folder: Path,
    compiled: bool = False,
    bfloat16: bool = False,
    latent: int = 20,
) -> dict[str, list[str]]:
    python = sys.executable
    common = ["--epochs", str(epochs), "--batch-size", "128"]
    sizes = ["--hidden", "400", "--latent", str(latent)]
    # one sample of z per validation image, as the others take (the options override the rest)
    validation = folder / "validation.toml"
    validation.write_text("[train]\nval_particles = 1\n")
    pyro_vae = [
        python, str(ROOT / "cli.py"), "train", "--config", str(validation), "--data", str(data),
        *common, "--hidden-dims", "400", "--latent-dim", str(latent), "--overwrite",
    ]  # fmt: skip
    found = {
        "pyro-vae": [*pyro_vae, "--out", str(folder / "pyro-vae")],
        "hand-written PyTorch": [
            python, str(ROOT / "benchmarks" / "torch_vae.py"), str(data), *common, *sizes,
        ],
    }  # fmt: skip
    if importlib.util.find_spec("numpyro") and importlib.util.find_spec("jax"):
        found["NumPyro"] = [
            python, str(ROOT / "benchmarks" / "numpyro_vae.py"), str(data), *common, *sizes,
        ]  # fmt: skip
    else:
        print("NumPyro is not installed: its contestant is skipped (pip install -e '.[bench]')")
    if compiled:  # Inductor's cache is warm from the second run on (its first compile: cold)
        found["pyro-vae --compile"] = [
            *pyro_vae, "--compile", "--out", str(folder / "pyro-vae --compile"),
        ]  # fmt: skip
    if bfloat16:  # the steps' products in bfloat16 with float32 sums (AMX, where the CPU has it)
        found["pyro-vae --matmul-precision medium"] = [
            *pyro_vae, "--matmul-precision", "medium",
            "--out", str(folder / "pyro-vae --matmul-precision medium"),
        ]  # fmt: skip
    if bfloat16 and compiled:  # both levers at once
        name = "pyro-vae --compile --matmul-precision medium"
        found[name] = [
            *pyro_vae, "--compile", "--matmul-precision", "medium", "--out", str(folder / name)
        ]  # fmt: skip
    return found


def step_flop(batch: float, latent: int = 20) -> float:
    """One training step's matrix products, forward and backward, for the 784-400-L VAE: each
    layer 2·B·in·out forward, as much again for the weights' gradient and for the input's, except
    the first encoder layer's input (the data need no gradient)."""
    layers = [(784, 400), (400, 2 * latent), (latent, 400), (400, 784)]
    forward = sum(2 * batch * n_in * n_out for n_in, n_out in layers)
    return 3 * forward - 2 * batch * layers[0][0] * layers[0][1]


def epochs_of(name: str, output: str, run_dir: Path) -> list[tuple[float, int, float]]:
    """(seconds of the steps, number of steps, seconds of steps and validation) for each epoch
    after the first, which compiles or warms up."""
    if not name.startswith("pyro-vae"):
        found = re.findall(r"steps ([0-9.]+) s \((\d+)\), ([0-9.]+) s$", output, re.MULTILINE)
        return [(float(a), int(n), float(b)) for a, n, b in found][1:]
    record = json.loads((run_dir / "config.json").read_text())
    steps = -(-record["data"]["num_train"] // 128)
    lines = [json.loads(line) for line in (run_dir / "timing.jsonl").open()]
    return [(t["seconds"], steps, t["seconds"] + t["validation_seconds"]) for t in lines][1:]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--epochs", type=int, help="default: 15, or 10 with --long")
    parser.add_argument("--data", type=Path, help="a .npy of 784-pixel images (default: MNIST)")
    parser.add_argument("--latent", type=int, default=20, help="the latent width (default: 20)")
    parser.add_argument(
        "--compile",
        action="store_true",
        help="also pyro-vae train --compile (Inductor; its first run compiles with a cold cache)",
    )
    parser.add_argument(
        "--bf16",
        action="store_true",
        help="also pyro-vae train --matmul-precision medium (bfloat16 products, float32 sums: "
        "AMX where the CPU has it; NumPyro and the others stay float32)",
    )
    parser.add_argument(
        "--long",
        action="store_true",
        help="the 60,000 MNIST training images of ../shared/data as one .npy, 10 epochs",
    )
    args = parser.parse_args(argv)
    if args.long and args.data:
        parser.error("--long brings its own data (MNIST's 60,000 training images): drop --data")
    if args.epochs is None:
        args.epochs = 10 if args.long else 15
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        data = args.data or mnist_npy(folder, args.long)
        commands = contestants(data, args.epochs, folder, args.compile, args.bf16, args.latent)
        names = list(commands)
        seconds: dict[str, list[float]] = {name: [] for name in names}
        epochs: dict[str, list[tuple[float, int, float]]] = {name: [] for name in names}
        for run in range(args.runs):
            for name in names[run % len(names) :] + names[: run % len(names)]:
                start = time.perf_counter()
                done = subprocess.run(commands[name], capture_output=True, text=True, check=False)
                seconds[name].append(time.perf_counter() - start)
                if done.returncode != 0:
                    raise SystemExit(f"{name} failed:\n{done.stderr[-2000:]}")
                epochs[name] += epochs_of(name, done.stdout, folder / name)
    report(seconds, epochs, args)


def report(seconds: dict, epochs: dict, args: argparse.Namespace) -> None:
    medians = {name: statistics.median(values) for name, values in seconds.items()}
    print(
        f"whole run, 784-400-{args.latent}, {args.epochs} epochs, median of {args.runs} "
        "alternating runs (s):"
    )
    for name, median in medians.items():
        runs = ", ".join(f"{s:.2f}" for s in seconds[name])
        print(f"  {name:<44} {median:6.2f}  ({runs})")
    steady = {
        name: (
            statistics.median(total for *_, total in values),
            statistics.median(steps / count for steps, count, _ in values),
        )
        for name, values in epochs.items()
        if values
    }
    print("steady state, median over epochs 2 onwards and runs:")
    print(f"  {'contestant':<44} {'epoch (s)':>10} {'step (ms)':>10} {'GFLOP/s':>8}")
    for name, (epoch, step) in steady.items():
        # the mean batch of 48,000 or 56,000 images: 128 within 0.3%
        flop = step_flop(128, args.latent)
        print(f"  {name:<44} {epoch:10.3f} {step * 1e3:10.2f} {flop / step / 1e9:8.1f}")
    print("ratios (row ÷ column): whole run / steady epoch / step")
    for name in medians:
        for other in medians:
            if name == other or name not in steady or other not in steady:
                continue
            (epoch, step), (other_epoch, other_step) = steady[name], steady[other]
            print(
                f"  {name} ÷ {other}: {medians[name] / medians[other]:.2f} / "
                f"{epoch / other_epoch:.2f} / {step / other_step:.2f}"
            )


if __name__ == "__main__":
    main()
