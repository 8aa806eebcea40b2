"""The machine's own rate for the training step's matrix products: MKL against oneDNN, per shape.

A VAE step at MNIST size is mostly six matrix products per linear layer pair: each layer's forward
product, and in the backward pass its weight's gradient and its input's. torch's default CPU path
for them is MKL's ``sgemm``; oneDNN (``torch.ops.mkldnn._linear_pointwise``, what Inductor's CPU
lowering emits for a linear layer) is the other library in the wheel, and which is faster depends
on the CPU (MKL takes its AVX-512 kernels only on Intel's). This measures both on the shapes of
the 784-400-L VAE at a batch (forward: x Wᵀ; weight gradient: gᵀ x; input gradient: g W) and
reports GFLOP/s, so that a step's own rate can be set beside the best the machine gives. "bf16"
is ``torch.mm`` under ``--matmul-precision medium`` (bfloat16 products with float32 sums, through
oneDNN: AMX where the CPU has it), timed where torch's oneDNN has bfloat16 at all. Where
JAX is installed (``pip install -e ".[bench]"``), XLA's dot (a jitted ``a @ b``, what NumPyro's
step runs) is timed beside them: the benchmark anchor's own kernel on the same machine.

    python benchmarks/gemm.py                 # 784-400-20 and 784-400-50 at batch 128
    python benchmarks/gemm.py --latent 20 --batch 256

Each product is timed in turns, MKL and oneDNN alternating, the median of each kept. Measure on a
quiet machine: on 2 cores another process halves either figure.
"""

import argparse
import importlib.util
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch

from pyro_vae.inference.fast.precision import cpu_has_bfloat16_products, matmul_precision

KERNELS = ("MKL", "oneDNN", "bf16", "XLA")


def products(batch: int, layers: list[tuple[int, int]]) -> list[tuple[str, int, int, int]]:
    """(name, m, k, n) of each product of a step: C (m×n) = A (m×k) B (k×n)."""
    found = []
    for n_in, n_out in layers:
        found.append((f"forward {n_in}->{n_out}", batch, n_in, n_out))
        found.append((f"weight grad {n_in}->{n_out}", n_out, batch, n_in))
        found.append((f"input grad {n_in}->{n_out}", batch, n_out, n_in))
    return found


def kernels(m: int, k: int, n: int) -> dict[str, Callable[[], torch.Tensor]]:
    """The same product C = A B through MKL (torch.mm) and through oneDNN's linear (A Wᵀ with
    W = Bᵀ kept contiguous, as a layer's weight is)."""
    a = torch.randn(m, k)
    b = torch.randn(k, n)
    weight = b.t().contiguous()  # (n, k): a linear layer's weight
    found = {"MKL": lambda: torch.mm(a, b)}

    def bfloat16() -> torch.Tensor:
        with matmul_precision("medium"):
            return torch.mm(a, b)

    if cpu_has_bfloat16_products():
        found["bf16"] = bfloat16
    if torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise"):
        linear = torch.ops.mkldnn._linear_pointwise
        found["oneDNN"] = lambda: linear(a, weight, None, "none", [], "")
    if importlib.util.find_spec("jax"):
        import jax

        dot = jax.jit(lambda left, right: left @ right)
        a_jax, b_jax = jax.device_put(np.asarray(a)), jax.device_put(np.asarray(b))
        found["XLA"] = lambda: dot(a_jax, b_jax).block_until_ready()
    return found


def rate(run: Callable[[], torch.Tensor], flop: float, repeats: int) -> float:
    """GFLOP/s of one timing of ``repeats`` calls."""
    start = time.perf_counter()
    for _ in range(repeats):
        run()
    return flop * repeats / (time.perf_counter() - start) / 1e9


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--latent", type=int, nargs="+", default=[20, 50])
    parser.add_argument("--hidden", type=int, default=400)
    parser.add_argument("--turns", type=int, default=15)
    parser.add_argument("--quick", action="store_true", help="a few calls: checks the script runs")
    args = parser.parse_args(argv)
    turns, repeats = (2, 3) if args.quick else (args.turns, 200)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{'product':<24} {'m×k×n':>16} " + " ".join(f"{k:>8}" for k in KERNELS))
    results: dict[str, dict[str, float]] = {}
    for latent in args.latent:
        layers = [(784, args.hidden), (args.hidden, 2 * latent), (latent, args.hidden)]
        layers.append((args.hidden, 784))
        for name, m, k, n in products(args.batch, layers):
            if name in results:
                continue
            found = kernels(m, k, n)
            flop = 2.0 * m * k * n
            for run in found.values():
                run()  # warm: oneDNN builds its primitive on the first call
            timings: dict[str, list[float]] = {kernel: [] for kernel in found}
            for _ in range(turns):
                for kernel, run in found.items():
                    timings[kernel].append(rate(run, flop, repeats))
            results[name] = {kernel: statistics.median(v) for kernel, v in timings.items()}
            cells = " ".join(f"{results[name].get(k, float('nan')):8.1f}" for k in KERNELS)
            print(f"{name:<24} {f'{m}×{k}×{n}':>16} {cells}")
    return results


if __name__ == "__main__":
    main()
