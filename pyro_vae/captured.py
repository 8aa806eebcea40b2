"""On a GPU: the recorded step and the optimizer's update as one CUDA graph per batch shape.

A step of a small VAE on a GPU is about a hundred short kernels (the recorded graph's operations,
then Adam's), and at batch 128 the host takes far longer to launch them one by one than the GPU
takes to run them (on an H200, about 2.2 ms against 0.3: benchmarks/cuda_graph.py): the GPU
waits. A CUDA graph launches the whole step at once. ``CapturedStep``
captures the recorded loss and gradient (recorded.py) and the optimizer's step into one
``torch.cuda.CUDAGraph`` with static buffers for the batch, then replays it for every step with
the same conditions: the host copies the batch in and launches one graph.

A capture fixes more than a recording does. The graph reads and writes memory by address: the
parameters, buffers and the optimizer's state tensors are the very storage it was captured
with, and a float learning rate is an argument of Adam's kernel, fixed at its captured value. So
each capture keeps its conditions (those addresses and every optimizer hyperparameter), checked
at every step; where one has changed (a schedule's new rate, an optimizer state loaded from a
checkpoint) the step is captured anew. Random draws need nothing: a replay draws from the default
CUDA generator's seed and offset of that moment (PyTorch's graph-safe Philox), as the uncaptured
step would, so a captured run gives the recorded run's numbers.

A graph is captured at the second step with the same conditions. The first runs uncaptured on
the side stream the capture will use, so that what a step allocates once (the optimizer's state,
cuBLAS's workspace for that stream) exists before the capture, as PyTorch's notes on CUDA graphs
ask; and a single step (a test's, a user's) is never captured for nothing.
"""

import logging
from dataclasses import dataclass
from typing import Any

import torch
from torch.fx import GraphModule

from pyro_vae.recorded import GraphKey, RecordedGradient

log = logging.getLogger(__name__)


@dataclass
class _Capture:
    graph: torch.cuda.CUDAGraph
    batch: tuple[torch.Tensor, ...]  # the static inputs the graph reads
    losses: tuple[torch.Tensor, torch.Tensor]  # and its outputs, overwritten by every replay
    gradients: list[torch.Tensor | None]  # the .grads it writes (None: a frozen parameter)
    conditions: tuple[Any, ...]


class CapturedStep:
    """``loss, −ELBO`` of a step on ``batch``, the gradients in the ``.grad``s and the
    optimizer's update done, from a CUDA graph where one is captured (see the module's text).

    Returns None, having done nothing, where the recorded step stands aside (recorded.py): the
    caller then takes the eager step. A capture that fails is said once in the log, and every
    later step replays the recorded graph without capturing it. The losses returned are the
    graph's own outputs, overwritten by the next step: read or copy them before it.
    """

    def __init__(self, recorded: RecordedGradient, optimizer: torch.optim.Optimizer):
        self._recorded, self._optimizer = recorded, optimizer
        self._captures: dict[GraphKey, _Capture] = {}
        self._warmed: dict[GraphKey, tuple[Any, ...]] = {}  # the conditions of a first step
        self._stream: torch.cuda.Stream | None = None  # made on the first step's device
        self.failure: str | None = None  # why steps are no longer captured, once they are not

    def __call__(self, *batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        found = self._recorded.graph_for(*batch)
        if found is None:
            return None
        key, graph = found
        if self.failure is not None:
            return self._uncaptured(graph, batch)
        conditions = self._conditions()
        capture = self._captures.get(key)
        if capture is None or capture.conditions != conditions:
            self._captures.pop(key, None)  # its memory goes back to the allocator
            if self._warmed.get(key) != conditions:
                self._warmed[key] = conditions
                return self._on_side_stream(graph, batch)
            capture = self._capture(graph, batch, conditions)
            if capture is None:
                return self._uncaptured(graph, batch)
            self._captures[key] = capture
        for static, value in zip(capture.batch, batch, strict=True):
            static.copy_(value)
        capture.graph.replay()
        for parameter, gradient in zip(self._recorded.parameters, capture.gradients, strict=True):
            parameter.grad = gradient  # as the uncaptured step leaves them
        return capture.losses

    def _conditions(self) -> tuple[Any, ...]:
        """What a graph captured now would fix: the addresses of the tensors it reads and
        writes besides the batch, and the optimizer's hyperparameters."""
        state = self._optimizer.state
        tensors = [
            *self._recorded.inputs,
            *(
                value
                for parameter in self._recorded.parameters
                for value in state.get(parameter, {}).values()
                if isinstance(value, torch.Tensor)
            ),
        ]
        settings = tuple(
            tuple((name, value) for name, value in group.items() if name not in _NOT_SETTINGS)
            for group in self._optimizer.param_groups
        )
        return (*(tensor.data_ptr() for tensor in tensors), settings)

    def _uncaptured(
        self, graph: GraphModule, batch: tuple[torch.Tensor, ...]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        losses = self._recorded.replay(graph, *batch)
        self._optimizer.step()
        return losses

    def _on_side_stream(
        self, graph: GraphModule, batch: tuple[torch.Tensor, ...]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """An uncaptured step on the stream that captures: it comes after the work queued so
        far, and the work queued after it waits for it."""
        if self._stream is None:
            self._stream = torch.cuda.Stream(batch[0].device)
        main = torch.cuda.current_stream(batch[0].device)
        self._stream.wait_stream(main)
        with torch.cuda.stream(self._stream):
            losses = self._uncaptured(graph, batch)
        main.wait_stream(self._stream)
        return losses

    def _capture(
        self, graph: GraphModule, batch: tuple[torch.Tensor, ...], conditions: tuple[Any, ...]
    ) -> _Capture | None:
        """The step captured (not run: the caller replays it), or None if it cannot be."""
        static = tuple(value.clone() for value in batch)
        cuda_graph = torch.cuda.CUDAGraph()
        groups = self._optimizer.param_groups
        flags = [group["capturable"] for group in groups]
        try:
            # Capturable: the update reads its step count on the device, not from the host. Only
            # while capturing: torch warns of uncaptured steps taken with it on.
            for group in groups:
                group["capturable"] = True
            with torch.cuda.graph(
                cuda_graph, stream=self._stream, capture_error_mode="thread_local"
            ):
                losses = self._recorded.replay(graph, *static)
                self._optimizer.step()
        except Exception as error:  # the recorded step without a graph is always correct
            lines = [line for line in str(error).splitlines() if line.strip()]
            self.failure = f"{type(error).__name__}{': ' + lines[0] if lines else ''}"
            self._captures.clear()
            log.info(
                "training without a CUDA graph: the step could not be captured (%s)", self.failure
            )
            return None
        finally:
            for group, flag in zip(groups, flags, strict=True):
                group["capturable"] = flag
        gradients = [parameter.grad for parameter in self._recorded.parameters]
        return _Capture(cuda_graph, static, losses, gradients, conditions)


# Entries of a parameter group that are no setting of the update: the parameters themselves,
# and the switch a capture turns on while it lasts.
_NOT_SETTINGS = frozenset({"params", "param_names", "capturable"})
