"""Which torch device a run uses."""

import re
from typing import TYPE_CHECKING

from pyro_vae.core.errors import UserInputError

if TYPE_CHECKING:
    import torch

# The names a run takes (cuda:N too): torch knows more, which pyro-vae does not run on. Checked
# where a configuration is made, before torch is imported.
DEVICE_NAME = re.compile(r"auto|cpu|cuda(:\d+)?")


def resolve_device(name: str) -> "torch.device":
    """``auto`` is CUDA when available, else the CPU; asking for CUDA without it is an error."""
    import torch  # a configuration's check imports this module, and needs no torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not DEVICE_NAME.fullmatch(name):
        raise UserInputError(f"unknown device {name!r}: choose auto, cpu, cuda or cuda:N")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserInputError(
                f"device {name!r} was asked for, but CUDA is not available on this machine: "
                "use device 'cpu' or 'auto'"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UserInputError(
                f"device {name!r} does not exist: this machine has "
                f"{torch.cuda.device_count()} CUDA device(s)"
            )
    return device


def flush_denormals() -> bool:
    """Flush denormal floats to zero on the CPU (FTZ and DAZ): in the calling thread, and in the
    threads torch's thread pool starts after it, which inherit the mode. True where the CPU can.

    A training run feeds denormals to every step: Adam's first moment of a weight whose gradient
    stops (a pixel that is seldom on, a unit that stopped firing) decays by 0.9 a step through
    the range below 1.2e-38, where x86 arithmetic is tens of times slower. Measured on MNIST
    (784-400-20, 2 CPU cores, Intel Xeon): by the third epoch 65,000 of Adam's 1.3 million moments
    were denormal and the fused update took 2.04 ms instead of 0.52. Flushed, they become the
    zero they are on their way to, a change of less than 1.2e-38 to any number. XLA (so NumPyro
    and JAX) runs its CPU code this way by default; torch offers it with this call.
    """
    import torch

    return torch.set_flush_denormal(True)
