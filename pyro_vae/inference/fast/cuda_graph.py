"""On a GPU: the recorded step and the optimizer's update as one CUDA graph per batch shape.

A step of a small VAE on a GPU is about a hundred short kernels (the recorded graph's operations,
then Adam's), and at batch 128 the host takes far longer to launch them one by one than the GPU
takes to run them (on an H200, the recorded step uncaptured 1.4–2.3 ms against 0.3 ms for its
graph: benchmarks/cuda_graph.py): the GPU waits. A CUDA graph launches the whole step at once.
``CapturedStep`` captures the recorded loss and gradient (inference/fast/replay.py) and the
update rule's step (inference/update.py, the call every uncaptured step makes too) into one
``torch.cuda.CUDAGraph`` with static buffers for the batch, then replays
it for every step with the same conditions: the host copies the batch in and launches one graph.

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

What a capture asks beyond a recording: the step must not wait for the GPU (CUDA refuses to
capture a synchronisation), and the optimizer must have no step hooks (a replay runs no Python,
so a hook would run only at the capture). A step that cannot be captured is taken uncaptured,
with a log line, and gives the same numbers.
"""

import logging
from dataclasses import dataclass
from typing import Any

import torch
from torch.fx import GraphModule
from torch.optim.optimizer import _global_optimizer_post_hooks, _global_optimizer_pre_hooks

from pyro_vae.inference.fast.replay import GraphKey, RecordedGradient
from pyro_vae.inference.update import UpdateRule

log = logging.getLogger(__name__)

# Entries of a parameter group that are no setting of the update: the parameters themselves,
# and the switch a capture turns on while it lasts.
_NOT_SETTINGS = frozenset({"params", "param_names", "capturable"})


@dataclass
class _Capture:
    graph: torch.cuda.CUDAGraph
    batch: tuple[torch.Tensor, ...]  # the static inputs the graph reads
    losses: tuple[torch.Tensor, torch.Tensor]  # and its outputs, overwritten by every replay
    # The .grads it writes, overwritten by every replay too (None: a parameter without one).
    gradients: list[torch.Tensor | None]
    conditions: tuple[Any, ...]


class CapturedStep:
    """``loss, −ELBO`` of a step on ``batch``, the gradients in the ``.grad``s and the
    optimizer's update done, from a CUDA graph where one is captured (see the module's text).

    Returns None, having done nothing, where the recorded step stands aside
    (inference/fast/replay.py): the caller then takes the eager step. A capture that fails is said
    once in the log, and every later step replays the recorded graph without capturing it. The
    losses returned, and the ``.grad``s left, are the graph's own buffers, overwritten by the next
    step: read or copy them before it.
    """

    def __init__(self, recorded: RecordedGradient, update_rule: UpdateRule) -> None:
        self._recorded, self._rule = recorded, update_rule
        self._captures: dict[GraphKey, _Capture] = {}
        self._warmed: dict[GraphKey, tuple[Any, ...]] = {}  # the conditions of a first step
        self._stream: torch.cuda.Stream | None = None  # made on the first step's device
        self.failure: str | None = None  # why steps are no longer captured, once they are not
        self._hooks_said = False  # whether the log said that hooks keep steps uncaptured

    @property
    def update_rule(self) -> UpdateRule:
        """The update the graphs hold."""
        return self._rule

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        """The update rule's optimizer, whose settings and state a capture fixes."""
        return self._rule.optimizer

    def __call__(self, *batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        found = self._recorded.graph_for(*batch)
        if found is None:
            if self._recorded.eager_reason is not None:  # it stood aside for good
                self._captures.clear()  # and so do the graphs: their memory goes back
            return None
        key, graph = found
        # An audit compares an uncaptured replay with the eager step. A shape's first replay is
        # uncaptured anyway (the warm-up below), its second is captured: where a capture is
        # there, an audit due takes the step uncaptured (the third, and the periodic ones).
        audit = self._recorded.audit_pending and key in self._captures
        if self.failure is not None or self._hooked() or audit:
            return self._uncaptured(graph, batch)
        conditions = self._conditions()
        capture = self._captures.get(key)
        if capture is None or capture.conditions != conditions:
            # Graphs of other shapes captured under other conditions would never replay again:
            # their memory goes back (once the .grads no longer point into it, a step later).
            self._captures = {
                other: kept
                for other, kept in self._captures.items()
                if other != key and kept.conditions == conditions
            }
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
        state = self.optimizer.state
        # The optimizer's own list too: a parameter added to it, or taken out, is another update.
        updated = self._rule.parameters
        tensors = [
            *self._recorded.inputs,
            *updated,
            *(
                value
                for parameter in updated
                for value in state.get(parameter, {}).values()
                if isinstance(value, torch.Tensor)
            ),
        ]
        settings = tuple(
            tuple((name, value) for name, value in group.items() if name not in _NOT_SETTINGS)
            for group in self.optimizer.param_groups
        )
        return (*(tensor.data_ptr() for tensor in tensors), settings)

    def _hooked(self) -> bool:
        """Whether the optimizer's step runs Python of someone else's (a step hook, its own or a
        global one, or a ``step`` replaced on the instance), which no replay would run."""
        optimizer = self.optimizer
        step = vars(optimizer).get("step")
        # torch's learning-rate schedulers wrap the instance's step only to note that it ran
        # (for a warning about the order of calls): that wrapper around the class's own step
        # computes nothing a replay would miss.
        scheduled = getattr(step, "_wrapped_by_lr_sched", False) and (
            getattr(step, "__wrapped__", None) is type(optimizer).step
        )
        hooked = bool(
            optimizer._optimizer_step_pre_hooks
            or optimizer._optimizer_step_post_hooks
            or _global_optimizer_pre_hooks
            or _global_optimizer_post_hooks
            or (step is not None and not scheduled)
        )
        if hooked and not self._hooks_said:
            self._hooks_said = True
            log.info("steps not captured as a CUDA graph while the optimizer's step has hooks")
        return hooked

    def _uncaptured(
        self, graph: GraphModule, batch: tuple[torch.Tensor, ...]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        losses = self._recorded.replay(graph, *batch)
        self._rule.step()
        return losses

    def _on_side_stream(
        self, graph: GraphModule, batch: tuple[torch.Tensor, ...]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """An uncaptured step on the stream that captures: it comes after the work queued so
        far, and the work queued after it waits for it. That order is also what makes memory
        safe to share between the streams: a block freed by one is reused by the other only
        after it has waited for the first."""
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
        groups = self.optimizer.param_groups
        if not all(group.get("fused") or group.get("capturable") for group in groups):
            # One that keeps a count or a rate on the host would be captured with this step's
            # values and replay them for ever; torch's fused and capturable ones keep theirs on
            # the device.
            self.failure = (
                f"the optimizer ({type(self.optimizer).__name__}) is neither fused nor "
                "capturable, so its update may read values on the host"
            )
            log.info("training without a CUDA graph: %s", self.failure)
            return None
        static = tuple(value.clone() for value in batch)
        cuda_graph = torch.cuda.CUDAGraph()
        # No audit inside a capture: it reads its comparison on the host, which CUDA cannot
        # capture (the third replay is audited, uncaptured, instead).
        self._recorded.audit_pending = False
        flags = [group.get("capturable") for group in groups]  # None: no such option
        try:
            # torch refuses to capture an optimizer not marked capturable (a fused one keeps its
            # step count on the device either way, and computes the same); marked only while
            # capturing, since torch warns of uncaptured steps taken with the mark on.
            for group in groups:
                group["capturable"] = True
            with torch.cuda.graph(
                cuda_graph, stream=self._stream, capture_error_mode="thread_local"
            ):
                losses = self._recorded.replay(graph, *static)
                self._rule.step()  # the very call an uncaptured step makes
        except Exception as error:  # the recorded step without a graph is always correct
            lines = [line for line in str(error).splitlines() if line.strip()]
            self.failure = f"{type(error).__name__}{': ' + lines[0] if lines else ''}"
            self._captures.clear()
            _reset_generator(batch[0].device)
            log.info(
                "training without a CUDA graph: the step could not be captured (%s)", self.failure
            )
            return None
        finally:
            for group, flag in zip(groups, flags, strict=True):
                if flag is None:
                    del group["capturable"]
                else:
                    group["capturable"] = flag
        gradients = [parameter.grad for parameter in self._recorded.parameters]
        return _Capture(cuda_graph, static, losses, gradients, conditions)


def _reset_generator(device: torch.device) -> None:
    """Put the device's random number generator back out of capture mode, at the seed and
    offset it had before the capture.

    A capture that CUDA itself invalidates (a synchronisation inside it) ends with an error before
    PyTorch closes the generator's capture, and every later draw on the device would then fail.
    Its state is replaced by that of a fresh generator set to the same seed and offset: the
    captured draws were never made, so the next step draws what it would have. (A graph captured
    earlier in the process against the old state, by another trainer say, keeps drawing from
    that old state: left as it is, since only this rare failure path meets it.)
    """
    index = device.index if device.index is not None else torch.cuda.current_device()
    generator = torch.cuda.default_generators[index]
    fresh = torch.Generator(torch.device("cuda", index))
    fresh.set_state(generator.get_state())
    generator.graphsafe_set_state(fresh.graphsafe_get_state())
