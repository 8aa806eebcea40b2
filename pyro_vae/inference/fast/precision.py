"""The training steps' float32 matrix products in a lower precision where the hardware has one,
for the steps alone: torch's per-backend settings (``torch.backends.mkldnn.matmul`` and
``torch.backends.cuda.matmul``'s ``fp32_precision``) set for the block and put back afterwards,
so that the validation ELBO, evaluation and everything else outside a step stay as they were.
The settings are the process's: while a step runs they hold in its other threads too.

"highest" (the default) multiplies float32 numbers in float32: steps repeat to the bit. "high"
lets a GPU from Ampere on take TF32 (10 bits of mantissa); a CPU stays float32. "medium" lets a
CPU with AMX tiles (Intel's Xeons from Sapphire Rapids on) multiply in bfloat16 (8 bits of
mantissa) with float32 sums, through oneDNN, and a GPU take TF32
(torch has no bfloat16 path for float32 products on CUDA). The parameters, Adam's state and every
sum stay float32: what a run loses is the low bits of each product's inputs.

The settings are set through torch's new per-backend interface alone, never the legacy
``torch.set_float32_matmul_precision``: torch refuses to read the legacy value once the two
have been mixed, and setting it would overwrite the per-backend values a user chose.
"""

import functools
from collections.abc import Iterator
from contextlib import contextmanager

import torch

# What each precision sets: (oneDNN's, on a CPU with bfloat16 instructions; CUDA's)
_SETTINGS = {"highest": ("ieee", "ieee"), "high": ("ieee", "tf32"), "medium": ("bf16", "tf32")}


@contextmanager
def matmul_precision(precision: str) -> Iterator[None]:
    """``precision`` for the float32 matrix products of the block, then torch's settings again."""
    cpu, cuda = _SETTINGS[precision]
    if cpu == "bf16" and not cpu_has_bfloat16_products():
        cpu = "ieee"  # oneDNN would emulate bfloat16 here: slower, and no more exact
    backends = (torch.backends.mkldnn.matmul, torch.backends.cuda.matmul)
    before = [backend.fp32_precision for backend in backends]
    if before == [cpu, cuda]:
        yield
        return
    for backend, value in zip(backends, (cpu, cuda), strict=True):
        backend.fp32_precision = value
    try:
        yield
    finally:
        for backend, value in zip(backends, before, strict=True):
            backend.fp32_precision = value


@functools.cache  # asked at every step; the CPU does not change
def cpu_has_bfloat16_products() -> bool:
    """Whether this CPU multiplies bfloat16 in hardware with AMX tiles and torch's oneDNN can use
    it. AVX-512 BF16 alone is not enough: on an AMD EPYC (Zen 4) that has it, torch's products
    under the bf16 setting went to oneDNN but stayed float32 (differences of 1e-4 in sums of 784
    products, not bfloat16's 1e-2), and the recorded step's numbers did not change at all.
    Asked through private torch entry points: False where a release drops them, and training
    goes on in float32 as it would on a CPU without them."""
    checks = (
        getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None),
        getattr(torch.cpu, "_is_amx_tile_supported", None),
    )
    if not torch.backends.mkldnn.is_available() or any(check is None for check in checks):
        return False
    onednn, amx = checks
    return bool(onednn() and amx())
