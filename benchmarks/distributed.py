"""Training throughput of one process against N data-parallel processes started by torchrun.

Each contestant is a whole ``torchrun --nproc_per_node=N cli.py train`` run on the 10,000 MNIST
test images (784-400-50, Bernoulli likelihood, static binarization), the contestants taking turns
(1 2 1 2 ...) so that drifts of the machine hit all of them alike. The figure is images per
second of training steps, from the run's own timing.jsonl (rank 0's clock; the processes step
together), as the median over the epochs after the first and over the turns. All processes
together use the machine's cores: one process gets every thread, N processes one share each.
It ends with the time of one all-reduce of the MNIST network's gradients among N processes.

    python benchmarks/distributed.py                 # 1 and 2 processes, global batch 128 and 1024
    python benchmarks/distributed.py --quick         # seconds, for the test suite
"""

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist

from pyro_vae import VAE

ROOT = Path(__file__).parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(processes: int, threads: int, script: Path | str, *arguments: str) -> str:
    """Run ``script arguments`` in ``processes`` processes on 127.0.0.1; returns their stdout."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    if sys.platform.startswith("linux"):
        env["GLOO_SOCKET_IFNAME"] = "lo"
    command = [
        sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={processes}",
        "--master-addr", "127.0.0.1", "--master-port", str(free_port()), str(script), *arguments,
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode:
        sys.exit(f"{' '.join(command)} failed:\n{done.stdout}{done.stderr}")
    return done.stdout


def images_per_second(
    processes: int, batch: int, epochs: int, data: list[str], cores: int, device: str
) -> list[float]:
    """One torchrun training run; images per second of each epoch after the first."""
    with tempfile.TemporaryDirectory() as folder:
        torchrun(
            processes, max(1, cores // processes), ROOT / "cli.py",
            "train", "--out", f"{folder}/run", "--epochs", str(epochs),
            "--batch-size", str(batch), "--device", device, *data,
        )  # fmt: skip
        run = Path(folder) / "run"
        record = json.loads((run / "config.json").read_text())
        timing = (run / "timing.jsonl").read_text().splitlines()
        seconds = [json.loads(line)["seconds"] for line in timing]
    num_train = record["data"]["num_train"]
    return [num_train / s for s in seconds[1:]]


def all_reduce_worker(sizes: list[int], repeats: int) -> None:
    """Run by torchrun (see all_reduce_seconds): time gloo's all-reduce of float tensors."""
    dist.init_process_group("gloo")
    seconds = {}
    for size in sizes:
        tensor = torch.ones(size)
        for _ in range(3):
            dist.all_reduce(tensor)
        start = time.perf_counter()
        for _ in range(repeats):
            dist.all_reduce(tensor)
        seconds[size] = (time.perf_counter() - start) / repeats
    if dist.get_rank() == 0:
        print(json.dumps(seconds))
    dist.barrier()
    dist.destroy_process_group()


def all_reduce_seconds(processes: int, sizes: list[int], repeats: int) -> dict[str, float]:
    """Seconds per all-reduce of each size among ``processes`` processes, one thread each."""
    sizes_and_repeats = ["--sizes", *map(str, sizes), "--repeats", str(repeats)]
    stdout = torchrun(processes, 1, __file__, "--all-reduce-worker", *sizes_and_repeats)
    return json.loads(stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> dict[tuple[int, int], float]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[128, 1024])
    parser.add_argument("--turns", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=4, help="per run; the first is not timed")
    parser.add_argument("--device", default="cpu", help="cpu, or cuda: one GPU per process")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--all-reduce-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--sizes", type=int, nargs="+", help=argparse.SUPPRESS)
    parser.add_argument("--repeats", type=int, default=50, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.all_reduce_worker:
        all_reduce_worker(args.sizes, args.repeats)
        return {}
    network = ["--hidden-dims", "400", "--latent-dim", "50", "--likelihood", "bernoulli"]
    data = [*network, "--binarize", "static"]
    if not args.quick and (SHARED_DATA / "MNIST" / "raw").is_dir():
        data += ["--dataset", "mnist", "--data-dir", str(SHARED_DATA)]
    turns, epochs, batches = (
        (1, 2, [64]) if args.quick else (args.turns, args.epochs, args.batch_sizes)
    )
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    rates: dict[tuple[int, int], list[float]] = {
        (n, b): [] for b in batches for n in args.processes
    }
    for _ in range(turns):
        for n, b in rates:
            rates[(n, b)] += images_per_second(n, b, epochs, data, cores or 1, args.device)
    print(
        f"{cores} cores, device {args.device}, torch {torch.__version__}; "
        f"{turns} turns of {epochs} epochs (the first not timed); {' '.join(data)}"
    )
    print(f"{'processes':>10}{'global batch':>14}{'images/s':>12}{'× 1 process':>14}")
    medians = {key: statistics.median(values) for key, values in rates.items()}
    for (n, b), median in medians.items():
        base = medians[(args.processes[0], b)]
        print(f"{n:>10}{b:>14}{median:>12.0f}{median / base:>14.2f}")
    # What one step's gradient sum costs: the network's parameters and the two numbers riding along.
    gradients = sum(p.numel() for p in VAE(784, hidden_dims=(400,), latent_dim=50).parameters())
    for n in (n for n in args.processes if n > 1):
        sizes = [1_000, gradients + 2]
        timed = all_reduce_seconds(n, sizes, 5 if args.quick else 50)
        times = ", ".join(f"{size:,} floats {timed[str(size)] * 1e3:.2f} ms" for size in sizes)
        print(f"all-reduce over gloo among {n} processes (one thread each): {times}")
    return medians


if __name__ == "__main__":
    main()
