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
