"""The update of the parameters from their gradients: the one place every training step ends.

Every step calls ``UpdateRule.step`` once its gradients are in the ``.grad``s: the eager step
and the recorded one replayed (trainer.py), a replica's step once the replicas' gradients are
summed (distributed.py), M2's step (m2_trainer.py) and, on a GPU, the replay and the update
captured together as one CUDA graph (fast/cuda_graph.py). So another optimizer, or something
done to the gradients before the update, is a change to this file alone: clipping by norm, say,
would be ``torch.nn.utils.clip_grad_norm_(self.parameters, max_norm)`` at the top of ``step``.

``step`` is captured inside a CUDA graph, which replays device work and no Python: what it does
must stay on the device, with no read on the host (no ``.item()``, no ``if`` on a tensor's value;
torch's ``clip_grad_norm_`` qualifies, it scales by a clamped factor instead of testing it). A
step that cannot be captured is taken uncaptured, with the same numbers and a log line.
"""

from collections.abc import Iterable
from typing import Any

import torch

from pyro_vae.core.config import TrainConfig


class UpdateRule:
    """The optimizer of the trained parameters and the calls that apply it: ``zero_grad`` before
    an eager backward pass, ``step`` after the gradients are in the ``.grad``s.

    ``optimizer`` stays reachable for what reads its settings and state rather than stepping it:
    a learning-rate schedule, and the checks of a CUDA graph's capture. ``state_dict`` is the
    optimizer's own, so a checkpoint's ``trainer_state["optimizer"]`` keeps its layout.
    """

    def __init__(self, optimizer: torch.optim.Optimizer) -> None:
        self.optimizer = optimizer

    @classmethod
    def from_config(
        cls, parameters: Iterable[torch.nn.Parameter], config: TrainConfig
    ) -> "UpdateRule":
        """Adam at ``config.lr`` on ``parameters``."""
        # The fused implementation updates every parameter in one kernel: on the CPU a quarter
        # of the time of the default per-tensor loop, the same arithmetic. It also keeps its
        # step count on the device, which a CUDA graph's capture needs.
        return cls(torch.optim.Adam(parameters, lr=config.lr, fused=True))

    @property
    def parameters(self) -> list[torch.nn.Parameter]:
        """The parameters the update takes, in the optimizer's order."""
        return [p for group in self.optimizer.param_groups for p in group["params"]]

    @property
    def lr(self) -> float:
        """The learning rate of the next step."""
        return self.optimizer.param_groups[0]["lr"]

    def set_lr(self, lr: float) -> None:
        """Use learning rate ``lr`` from the next step on."""
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def zero_grad(self) -> None:
        """Clear the ``.grad``s before a backward pass adds into them. (A recorded step replaces
        every ``.grad`` instead, and needs no call.)"""
        self.optimizer.zero_grad(set_to_none=True)

    def step(self) -> None:
        """Update the parameters from their ``.grad``s; device work only (see the module's
        text: a CUDA graph captures this call)."""
        self.optimizer.step()

    def state_dict(self) -> dict[str, Any]:
        return self.optimizer.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a ``state_dict``, the learning rate it saved included."""
        self.optimizer.load_state_dict(state)
