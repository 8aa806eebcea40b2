"""The training steps' float32 matrix products in a lower precision where the hardware has one:
``torch.set_float32_matmul_precision`` for the steps alone, torch's own setting back afterwards,
so that the validation ELBO, evaluation and everything else outside a step stay in float32.

"highest" (the default) multiplies float32 numbers in float32: steps repeat to the bit. "high"
lets a GPU from Ampere on take TF32 (10 bits of mantissa). "medium" lets a GPU, and a CPU with AMX
(Intel's Xeons from Sapphire Rapids on), multiply in bfloat16 (8 bits of mantissa) with float32
sums, through cuBLAS or oneDNN: on 2 cores of such a Xeon a 128×784 by 784×400 product took a
third to a half of MKL's float32 time (benchmarks/gemm.py). Elsewhere the setting changes
nothing. The parameters, Adam's state and every sum stay float32; what a training run loses is
the low bits of each product's inputs, the same rounding a TPU or GPU mixed-precision run makes.
"""

from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def matmul_precision(precision: str) -> Iterator[None]:
    """``precision`` for the float32 matrix products of the block, then torch's setting again."""
    before = torch.get_float32_matmul_precision()
    if precision == before:
        yield
        return
    torch.set_float32_matmul_precision(precision)
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(before)


def cpu_has_bfloat16_products() -> bool:
    """Whether "medium" changes this CPU's products: torch's oneDNN multiplies in bfloat16 here
    (AVX-512 BF16 or AMX). Asked through a private torch entry point: False where a release
    drops it, and training goes on in float32 as it would on such a CPU."""
    supported = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    return bool(torch.backends.mkldnn.is_available() and supported is not None and supported())
