"""Pyro's loss and gradient recorded once per batch shape as a graph of torch operations.

An eager step runs Pyro's machinery anew every time: the poutine messengers, the trace dicts, the
distribution objects, and autograd's bookkeeping of all of it; on the CPU that is about a tenth of
a step at MNIST size and a third on the digits. None of it changes from batch to batch, so
``RecordedGradient`` runs the loss and ``torch.autograd.grad`` once under ``make_fx`` on fake
tensors (nothing is computed, no random number drawn) and keeps only the tensor operations, the
backward pass's included. Replaying that graph computes the same loss and gradients, bit for bit:
its random draws are the eager step's ``normal_`` calls on the same generator, in the same order.

What a recording assumes, as Pyro's JIT ELBOs do: the model and guide run the same tensor
operations for every batch of one shape. Shapes are fine (one graph per batch shape); Python that
reads a tensor's value (``if loss > 0``, ``.item()``) cannot be recorded, and such a model is
trained eagerly instead, with a log message saying why. Which components may be recorded at all,
and how a recording notices one that changes under it, is inference/fast/contract.py's subject.
"""

import functools
import logging
import types
from collections.abc import Callable
from typing import Any

import pyro
import torch
from pyro.infer import ELBO
from pyro.poutine.runtime import _PYRO_STACK
from torch import nn
from torch._subclasses.fake_tensor import FakeTensor
from torch.func import functional_call
from torch.fx import GraphModule
from torch.fx.experimental.proxy_tensor import make_fx
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from pyro_vae.inference.fast.compiled import (
    AUTO_SECONDS,
    cache_timing,
    cached_timing,
    compile_graph,
    graph_key,
    paired_seconds,
    replay_seconds,
)
from pyro_vae.inference.fast.contract import (
    PythonGenerators,
    StateWatch,
    hooks_in,
    module_parts,
    undeclared,
)
from pyro_vae.inference.fast.products import (
    PRODUCTS_SECONDS,
    PRODUCTS_STEPS,
    choose,
    with_products,
)
from pyro_vae.inference.objectives import DeviceLossMixin

log = logging.getLogger(__name__)

# The audit of a promise no watch can check: a component that declares its step static but reads
# a value from outside itself (the environment, a module-level variable) is replayed with that
# value as recorded. At the first AUDIT_FIRST replays of each graph, and then at every
# AUDIT_EVERY-th step, the replay is compared with the eager step on the same batch, random
# numbers and buffers, to the bit (as tests/test_recorded.py compares them); a difference means
# eager steps from then on. Measured with benchmarks/audit_cost.py (the quickstart's VAE and
# batch, one thread, on 2 CPU cores another job shared): an audited step costs 2.8 replayed
# steps, so one audit every 1,000 steps is 0.18 % of training; with the 3 after each recording
# (two batch shapes), 0.5 % of the quickstart's 3,450 steps. Fixed, those first audits weigh
# more in a run of a few hundred steps.
AUDIT_FIRST = 3
AUDIT_EVERY = 1000

# A graph holds for one batch shape, dtype and device (of each input: the images, and the
# classes of a model that reads them), and one set of trainable parameters.
GraphKey = tuple[Any, ...]


class _Loss(nn.Module):
    """The ELBO loss as a module, so that ``functional_call`` can swap in the recording's inputs
    for every parameter and buffer the model and guide read."""

    def __init__(self, vae: nn.Module, elbo: ELBO, model: Callable, guide: Callable):
        super().__init__()
        self.vae = vae
        self.elbo, self.model, self.guide = elbo, model, guide

    def forward(self, *batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The training loss and −ELBO (the same tensor for an ELBO that knows no difference)."""
        if isinstance(self.elbo, DeviceLossMixin):
            return self.elbo.losses(self.model, self.guide, *batch)
        loss = self.elbo.differentiable_loss(self.model, self.guide, *batch)
        return loss, loss


class RecordedGradient:
    """``loss, −ELBO = elbo.losses(model, guide, batch)`` and the loss's gradient in the
    ``.grad`` of ``vae``'s parameters, replayed from a graph recorded for the batch's shape.

    Only for components that declare their step static (inference/fast/contract.py): for any other,
    and for one found breaking that promise, it stands aside (returns None) with one log line
    saying why, and the caller takes every step eagerly. Like an optimizer, it holds the parameters
    and buffers ``vae`` has at the first recording; one reassigned after it is seen, and stands it
    aside too.
    """

    def __init__(
        self,
        vae: nn.Module,
        elbo: ELBO,
        model: Callable[..., Any],
        guide: Callable[..., Any],
        compile: bool | None = False,
        choose_products: bool = True,
    ):
        """``compile``: whether the full batches' graph is compiled by Inductor (on the CPU;
        None: where the run is long enough and it times faster, inference/fast/compiled.py).
        ``choose_products``: whether its matrix products may go through oneDNN where that times
        faster than MKL in a run long enough (inference/fast/products.py)."""
        self._loss = _Loss(vae, elbo, model, guide)
        self._vae, self._elbo = vae, elbo
        self._graphs: dict[GraphKey, Callable[..., Any]] = {}
        self.compile = compile
        self.planned_steps: int | None = None  # the run's, where known: for compile=None
        # Whether the full batches' graph is compiled, once decided: a checkpoint keeps it, so
        # that a resumed run takes the same graph.
        self.compiled: bool | None = None
        self.choose_products = choose_products
        # The library each matrix product of the full batches' graph goes through, by its
        # signature (products.py), once decided (None: not yet): kept in checkpoints too.
        self.products: dict[str, str] | None = None
        # The batch size of a full batch (set by a trainer's epoch): the graph compiled is that
        # one's; None: the first graph recorded.
        self.full_batch: int | None = None
        # Each compiled graph's recording, by the compiled graph's id: what is replayed instead
        # should the compiled graph's audit find other numbers than the eager step's.
        self._uncompiled: dict[int, GraphModule] = {}
        self._watch: StateWatch | None = None  # made at the first recording
        self.eager_reason: str | None = None  # why every step is eager, once it is
        self._handled_eagerly = False  # whether a step under a Pyro handler was said to be eager
        self._replays: dict[GraphKey, int] = {}  # the steps each graph has been asked for
        self._steps = 0  # and all of them together: when the next audit is due
        self.audit_pending = False  # whether the next replay is compared with the eager step

    def __call__(self, *batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The loss and −ELBO (detached), the loss's gradient in the ``.grad``s; None where no
        graph can be made or trusted, and nothing done: the caller then takes the eager step.

        Every ``.grad`` is replaced, as ``zero_grad(set_to_none=True)`` then ``backward`` would
        leave it: None for a parameter that is frozen or that the loss does not use.
        """
        found = self.graph_for(*batch)
        return None if found is None else self.replay(found[1], *batch)

    def graph_for(self, *batch: torch.Tensor) -> tuple[GraphKey, Callable[..., Any]] | None:
        """The graph for ``batch`` and its key, recorded now if it is the first of its shape;
        None where no graph can be made or trusted (said once in the log, as for ``__call__``)."""
        if self.eager_reason is not None or self._under_a_handler():
            return None
        if self._watch is None:
            if not self._first_recording():
                return None
        elif (change := self._watch.changed()) is not None:
            self._stand_aside(f"{change} after the step was recorded, which its graph cannot see")
            return None
        trainable = tuple(p.requires_grad for p in self._parameters)
        key = (*((tuple(b.shape), b.dtype, b.device) for b in batch), trainable)
        graph = self._graphs.get(key)
        if graph is None:
            graph = self._record(*batch)
            if graph is None:
                return None
            # A full batch's graph (a trainer's epoch says which size that is), else the first.
            full = self.full_batch
            if batch[0].shape[0] == full if full is not None else not self._graphs:
                graph = self._maybe_compiled(graph, batch)
            self._graphs[key] = graph
        self._steps += 1
        self._replays[key] = self._replays.get(key, 0) + 1
        self.audit_pending = self._replays[key] <= AUDIT_FIRST or self._steps % AUDIT_EVERY == 0
        return key, graph

    def replay(
        self, graph: Callable[..., Any], *batch: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Run ``graph`` (from ``graph_for``) on ``batch``: the loss and −ELBO, and the gradients
        in the ``.grad``s. Where an audit is due (``audit_pending``, set by ``graph_for``), the
        eager step is taken too, on the same random numbers, and compared."""
        audit, self.audit_pending = self.audit_pending, False
        before = self._audit_state(batch) if audit else None
        with torch.no_grad():  # the graph computes the gradients itself; autograd keeps out
            loss, negative_elbo, *gradients = graph(*self._inputs, *batch)
        if before is not None:
            exact = id(graph) not in self._uncompiled
            eager = self._audit(before, (loss, negative_elbo, *gradients), batch, exact)
            if eager is not None:  # the eager step's numbers: the true ones
                loss, negative_elbo, *gradients = eager
                if not exact:
                    self._uncompile(graph)
        for parameter, gradient in zip(self._parameters, gradients, strict=True):
            parameter.grad = gradient
        return loss, negative_elbo

    def _audit_state(self, batch: tuple[torch.Tensor, ...]) -> tuple[Any, ...]:
        """What a step starts from: the random generators' states (the CPU's, and the batch's
        device's) and the buffers' values (a step may update them in place)."""
        device = batch[0].device
        cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
        buffers = [value.clone() for value in self._inputs[len(self._parameters) :]]
        return torch.get_rng_state(), cuda, device, buffers

    def _audit(
        self,
        before: tuple[Any, ...],
        replayed: tuple[torch.Tensor | None, ...],
        batch: tuple[torch.Tensor, ...],
        exact: bool = True,
    ) -> tuple[torch.Tensor | None, ...] | None:
        """Take the eager step from ``before`` and compare it with the ``replayed`` outputs
        (loss, −ELBO, gradients) and buffers; None where they agree (to the bit where ``exact``,
        as a replay on the CPU does; else as a compiled graph does), else the eager step's
        outputs, after standing aside for good (a replay's; a compiled graph's caller replays
        its recording instead)."""
        live = self._inputs[len(self._parameters) :]
        replayed_buffers = [value.clone() for value in live]
        self._restore(before)  # the eager step starts where the replay did
        with pyro.validation_enabled(False):
            loss, negative_elbo = self._loss(*batch)
        trainable = [value for value in self._parameters if value.requires_grad]
        found = iter(
            torch.autograd.grad(loss, trainable, allow_unused=True)
            if trainable and loss.requires_grad
            else [None] * len(trainable)
        )
        gradients = [next(found) if value.requires_grad else None for value in self._parameters]
        eager = (loss.detach(), negative_elbo.detach(), *gradients)
        agree = functools.partial(_identical, exact=exact)
        if all(map(agree, replayed, eager)) and all(map(agree, replayed_buffers, live)):
            return None
        if not exact:  # a compiled graph: its recording, exact, is tried next (replay)
            return eager
        suspects = [
            f"{name} ({type(part).__qualname__})"
            for name, part in self._parts
            if vars(type(part)).get("recordable") is True
            and not type(part).__module__.startswith(("pyro_vae.", "torch.", "pyro."))
        ]
        who = " or ".join(suspects) or "a component that declares `recordable = True`"
        self._stand_aside(
            f"the recorded step computed other numbers than the eager step on the same batch and "
            f"random numbers: {who} declares its step static, but its forward must read a value "
            "from outside it (the environment, a module-level variable), which a graph keeps as "
            "recorded; the eager step's numbers are used",
            logging.WARNING,
        )
        return eager

    @property
    def departs_from_eager(self) -> bool:
        """Whether the full batches' step computes other last bits than the eager step's: it is
        compiled, or its products go through oneDNN (a resumed run must not start eagerly)."""
        return bool(self.compiled) or "oneDNN" in (self.products or {}).values()

    @property
    def parameters(self) -> list[torch.Tensor]:
        """The parameters whose gradients the graphs compute (the first of ``inputs``)."""
        return list(self._parameters)

    @property
    def inputs(self) -> list[torch.Tensor]:
        """The tensors every graph reads besides the batch: the parameters, then the buffers."""
        return list(self._inputs)

    def _maybe_compiled(
        self, graph: GraphModule, batch: tuple[torch.Tensor, ...]
    ) -> Callable[..., Any]:
        """The full batches' ``graph``, its products through the faster library on this
        machine (``_with_faster_products``), and compiled where ``compile`` asks for it and,
        where it is left to decide (None), where the run is long enough and the compiled graph
        is faster (inference/fast/compiled.py): the choice made once, kept in ``compiled`` (a
        resumed run brings its own). Never off the CPU, whatever a checkpoint says: on a GPU the
        recorded step is captured as a CUDA graph instead."""
        if batch[0].device.type != "cpu":
            self.compiled = False
            return graph
        inputs = [*self._inputs, *batch]
        recording, graph = graph, self._with_faster_products(graph, inputs, batch)
        deciding = self.compiled is None and self.compile is None
        if self.compiled is None and self.compile is False:
            self.compiled = False
        key = graph_key(graph, inputs) if deciding else ""
        timing = cached_timing(key) if deciding else {}
        if deciding and "replay" not in timing:
            state = self._audit_state(batch)
            timing["replay"] = replay_seconds(graph, inputs)
            self._restore(state)
            # A run far too short to compile decides so without keeping anything; one nearer
            # the line keeps the timing it decided on, so that it decides the same way again.
            if (self.planned_steps or 0) * timing["replay"] >= AUTO_SECONDS / 4:
                cache_timing(key, timing)
        planned = (self.planned_steps or 0) * timing.get("replay", 0.0)
        if deciding and planned < AUTO_SECONDS:
            log.debug(
                "the step is replayed, not compiled: %.0f s of steps planned, %.0f needed to repay "
                "a compile (--compile compiles)",
                planned,
                AUTO_SECONDS,
            )
            self.compiled = False
        if self.compiled is False:
            return self._replayed(graph, recording)
        # Inductor is given the recording: it chooses the kernels of its own graph.
        compiled = compile_graph(
            recording, inputs, asked=self.compile is True or self.compiled is True
        )
        if compiled is None:
            self.compiled = False
            return self._replayed(graph, recording)
        if deciding:  # kept only where it is faster, as measured once on this machine
            if "compiled" not in timing or "paired_replay" not in timing:
                state = self._audit_state(batch)
                timing["paired_replay"], timing["compiled"] = paired_seconds(
                    graph, compiled, inputs
                )
                self._restore(state)
                cache_timing(key, timing)
            if timing["compiled"] >= timing["paired_replay"]:
                log.info(
                    "the step is replayed, not compiled: Inductor's graph took %.2f ms against "
                    "the replay's %.2f on this machine",
                    timing["compiled"] * 1e3,
                    timing["paired_replay"] * 1e3,
                )
                self.compiled = False
                return self._replayed(graph, recording)
            log.info(
                "the step is compiled by Inductor for this run (%.0f s of replayed steps "
                "planned): %.2f ms a step against the replay's %.2f (--no-compile replays it)",
                planned,
                timing["compiled"] * 1e3,
                timing["paired_replay"] * 1e3,
            )
        self.compiled = True
        self._uncompiled[id(compiled)] = recording
        return compiled

    def _with_faster_products(
        self, recording: GraphModule, inputs: list[torch.Tensor], batch: tuple[torch.Tensor, ...]
    ) -> GraphModule:
        """``recording`` with each matrix product through the library that multiplies its
        shapes faster on this machine, MKL or oneDNN (inference/fast/products.py), where the
        run is long enough for the timing to matter (``PRODUCTS_SECONDS`` of steps planned):
        chosen once, kept in ``products`` (a resumed run brings its own)."""
        if self.products is None:
            self.products = {}
            steps = self.planned_steps or 0
            if self.choose_products and steps >= PRODUCTS_STEPS:
                state = self._audit_state(batch)  # the timings draw random numbers: none seen
                if steps * replay_seconds(recording, inputs) >= PRODUCTS_SECONDS:
                    self.products = choose(recording)
                self._restore(state)
        moved = with_products(recording, self.products)
        return recording if moved is None else moved

    def _replayed(self, graph: GraphModule, recording: GraphModule) -> GraphModule:
        """``graph``, which is replayed: where its products moved to oneDNN, said in one line
        and audited to a tolerance, as a compiled graph is (oneDNN sums in another order than
        the eager step's MKL); one that fails is replaced by its ``recording``."""
        if graph is not recording:
            chosen = list((self.products or {}).values())
            log.info(
                "the step's matrix products go through oneDNN where it multiplied their shapes "
                "faster than MKL on this machine: %d of %d",
                chosen.count("oneDNN"),
                len(chosen),
            )
            self._uncompiled[id(graph)] = recording
        return graph

    def validate(self, *batch: torch.Tensor) -> None:
        """Pyro's checks of the model and guide (every distribution's arguments, every site's
        shape) on an eager forward pass whose numbers are dropped, the random generators and
        buffers put back: for a resumed run whose steps are compiled or whose products go through
        oneDNN (``departs_from_eager``), which must take that step from its first one on to
        repeat the uninterrupted run."""
        if self._watch is None and not self._first_recording():
            return  # no graph will be made: the eager step, with Pyro's checks, comes next
        state = self._audit_state(batch)
        with torch.no_grad(), pyro.validation_enabled(True):
            self._loss(*batch)
        self._restore(state)

    def _uncompile(self, compiled: Callable[..., Any]) -> None:
        """Replay ``compiled``'s recording from now on (a graph compiled by Inductor, or one whose
        products moved to oneDNN): its numbers were further from the eager step's than its
        kernels' own order of summing explains."""
        recordings, self._uncompiled = self._uncompiled, {}
        for key, graph in self._graphs.items():  # every such graph: the recording replayed
            if id(graph) in recordings:
                self._graphs[key] = recordings[id(graph)]
        kind = "compiled step" if self.compiled else "step with oneDNN's products"
        # And a checkpoint says so: a resumed run replays the recording as well.
        self.compiled, self.products = False, {}
        log.warning(
            "the %s computed other numbers than the eager step on the same batch (beyond "
            "its kernels' reordered sums); the recorded step is replayed from here on",
            kind,
        )

    def _restore(self, state: tuple[Any, ...]) -> None:
        """Put the random generators and buffers back as ``_audit_state`` found them."""
        cpu_state, cuda_state, device, buffers = state
        torch.set_rng_state(cpu_state)
        if cuda_state is not None:
            torch.cuda.set_rng_state(cuda_state, device)
        with torch.no_grad():
            for value, start in zip(self._inputs[len(self._parameters) :], buffers, strict=True):
                value.copy_(start)

    def _stand_aside(self, reason: str, level: int = logging.INFO) -> None:
        self.eager_reason = reason
        self._graphs.clear()
        self.audit_pending = False
        log.log(level, "training eagerly: %s", reason)

    def _under_a_handler(self) -> bool:
        """Whether the step runs inside a Pyro handler (``poutine.scale``, say), whose effect a
        recording would keep as it was: such a step is taken eagerly (said once)."""
        if not _PYRO_STACK:
            return False
        if not self._handled_eagerly:
            self._handled_eagerly = True
            log.info(
                "training eagerly the steps taken inside a Pyro handler (%s): a recorded graph "
                "would keep the handler's effect as it was when recorded",
                type(_PYRO_STACK[-1]).__name__,
            )
        return True

    def _first_recording(self) -> bool:
        """Check the components' declarations, take the graph's inputs and start watching."""
        model, guide = self._loss.model, self._loss.guide
        if not all(getattr(f, "__self__", None) is self._vae for f in (model, guide)):
            self._stand_aside("the model and guide are not the VAE's own methods")
            return False
        # The parts as they are now: a component may have been swapped in since construction.
        parts: list[tuple[str, Any]] = [*module_parts(self._vae), ("the ELBO", self._elbo)]
        self._parts = parts
        if (part := undeclared(parts)) is not None:
            self._stand_aside(
                f"{part} does not declare its step static, so a recorded graph could compute "
                "something else (see docs/components.md, 'Recorded steps', for `recordable = True`)"
            )
            return False
        self._parameters = list(self._loss.parameters())
        if (hooked := hooks_in(parts, self._parameters)) is not None:
            self._stand_aside(f"{hooked}, which a recorded graph would not run as it runs")
            return False
        named = [*self._loss.named_parameters(), *self._loss.named_buffers()]
        self._names = [name for name, _ in named]
        self._inputs = [value for _, value in named]  # the graph's inputs, the batch's last
        self._watch = StateWatch(parts, self._parameters)
        return True

    def _record(self, *batch: torch.Tensor) -> GraphModule | None:
        assert self._watch is not None
        names = self._names

        def loss_and_gradients(*values: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
            inputs, data = values[: len(names)], values[len(names) :]
            loss, negative_elbo = functional_call(
                self._loss, dict(zip(names, inputs, strict=True)), data
            )
            # Frozen parameters (requires_grad False) get no gradient, as from autograd.
            parameters = inputs[: len(self._parameters)]
            trainable = [value for value in parameters if value.requires_grad]
            found = iter(torch.autograd.grad(loss, trainable, allow_unused=True))
            gradients = (next(found) if value.requires_grad else None for value in parameters)
            return loss.detach(), negative_elbo.detach(), *gradients

        generators = PythonGenerators()
        try:
            with pyro.validation_enabled(False):  # validation reads values; the first step did it
                graph = make_fx(loss_and_gradients, tracing_mode="fake")(*self._inputs, *batch)
        except Exception as error:  # any failure to record leaves the eager step, always correct
            self._watch.restore()  # whatever the interrupted step had left half-done
            generators.restore()
            lines = [line for line in str(error).splitlines() if line.strip()]
            self._stand_aside(
                "the model and guide could not be recorded as a graph of tensor operations "
                f"({type(error).__name__}{': ' + lines[0] if lines else ''}); a step that reads "
                "a tensor's value in Python (if x.mean() > 0, .item()) cannot be"
            )
            return None
        # A broken declaration that shows while recording: state kept between calls (which now
        # holds the recording's fake tensors: put it back) or Python's random numbers.
        if (change := self._watch.changed()) is not None:
            self._watch.restore()
            self._stand_aside(
                f"{change} while the step was recorded (a cache, a counter?), and a graph "
                "cannot repeat that"
            )
            return None
        if generators.moved():
            generators.restore()  # the eager step draws what it would have drawn anyway
            self._stand_aside(
                "the model or guide drew from Python's or NumPy's random number generator, "
                "which a graph would replay as the same numbers at every step (draw from torch's)"
            )
            return None
        return _with_python_bindings(_without_no_ops(graph))


# How close an audit's replay and eager step must be off the CPU, relative to each tensor's
# largest value: CUDA kernels that sum with atomics (some of cuDNN's convolution gradients) may
# add in another order from one call to the next, a few float32 roundings apart, while a value
# read from outside a component changes a step by far more.
DEVICE_TOLERANCE = 1e-5
# And a graph compiled by Inductor, which sums in an order of its own on every device: measured
# as the difference's norm relative to the tensor's, because a gradient entry that is a sum of
# many terms cancelling each other can differ by more than 1e-5 of the tensor's largest entry
# (M2's, summed over 10 classes and 200 images, did), while a value read from outside a
# component changes a step by a sizeable part of its norm.
COMPILED_TOLERANCE = 1e-3


def _identical(a: torch.Tensor | None, b: torch.Tensor | None, exact: bool = True) -> bool:
    """Whether two outputs of a step agree: to the bit on the CPU (where the tests compare
    replay and eager so), within DEVICE_TOLERANCE elsewhere, within COMPILED_TOLERANCE for a
    compiled graph (not ``exact``); both None counts."""
    if a is None or b is None:
        return a is b
    if a.shape != b.shape:
        return False
    if bool(torch.equal(a, b)):
        return True
    both_nan = a.isnan() & b.isnan()  # a diverging step: no sign of a broken declaration
    if (a.device.type == "cpu" and exact) or not a.is_floating_point():
        return bool(((a == b) | both_nan).all())
    difference = (a - b).abs().masked_fill(both_nan | (a == b), 0)  # inf − inf is no difference
    if not exact:  # compiled: the difference's norm against the tensor's
        if not bool(torch.isfinite(difference).all()):
            return False
        size = torch.maximum(a.masked_fill(both_nan, 0).norm(), b.masked_fill(both_nan, 0).norm())
        return bool(difference.norm() <= COMPILED_TOLERANCE * size)
    scale = torch.maximum(a.abs(), b.abs()).masked_fill(both_nan, 0).max()
    return bool((difference <= DEVICE_TOLERANCE * scale).all())


aten = torch.ops.aten
_VIEWS = (aten.expand.default, aten.view.default, aten.alias.default)


def _without_no_ops(graph: GraphModule) -> GraphModule:
    """The graph less the operations that return their input unchanged, and the dead ones.

    A recording keeps every operation Pyro and autograd issued: about a fifth of them views of a
    tensor in its own shape (a plate broadcasting what already has the batch shape), ``t(t(w))``,
    ``pow(g, 1.0)`` and values never used. Each costs a call per step and computes nothing. Only
    done where the graph mutates no tensor but the fresh noise it draws (``normal_``), so that
    reading a tensor instead of its view of itself cannot change a value.
    """
    nodes = [node for node in graph.graph.nodes if node.op == "call_function"]
    for node in nodes:
        name = getattr(node.target, "__name__", "")
        if name.split(".")[0].endswith("_") and node.target != aten.normal_.default:
            return graph  # an in-place operation: leave the recording exactly as it was
    for node in nodes:
        source = _identity_source(node)
        if source is not None:
            node.replace_all_uses_with(source)
            graph.graph.erase_node(node)
    graph.graph.eliminate_dead_code()
    graph.recompile()
    return graph


def _identity_source(node: torch.fx.Node) -> torch.fx.Node | None:
    """The node whose value ``node`` merely passes on, or None."""
    if not node.args or not isinstance(node.args[0], torch.fx.Node):
        return None
    target, (source, *rest) = node.target, node.args
    if target in _VIEWS and _same_layout(node, source):
        return source
    if target == aten.pow.Tensor_Scalar and rest == [1.0] and _same_layout(node, source):
        return source
    if target == aten.t.default and source.target == aten.t.default:
        return source.args[0]
    return None


def _same_layout(a: torch.fx.Node, b: torch.fx.Node) -> bool:
    value_a, value_b = a.meta.get("val"), b.meta.get("val")
    if not (isinstance(value_a, torch.Tensor) and isinstance(value_b, torch.Tensor)):
        return False
    return (
        value_a.shape == value_b.shape
        and value_a.stride() == value_b.stride()
        and value_a.dtype == value_b.dtype
    )


def _with_python_bindings(graph: GraphModule) -> GraphModule:
    """The graph calling each operator through torch's generated Python binding (``torch.mul``,
    ``Tensor.expand``) where the recording has its ``OpOverload`` (``torch.ops.aten.mul.Tensor``).

    The binding parses its arguments in C++, the ``OpOverload`` in Python: about 1 µs a call
    saved, a tenth of a millisecond a step. A binding picks its overload from the arguments' types,
    so each one is kept only where calling it on the recording's own (fake) arguments hands the
    very overload recorded the very arguments recorded (``torch.mul(t, 2.0)`` runs ``mul.Tensor``,
    so a recorded ``mul.Scalar`` stays as it is).
    """
    for node in graph.graph.nodes:
        if node.op != "call_function" or node.kwargs:
            continue
        if not isinstance(node.target, torch._ops.OpOverload):
            continue
        binding = _python_binding(node.target)
        if binding is not None and _dispatches_to(binding, node):
            node.target = binding
    graph.recompile()
    return graph


def _python_binding(operator: torch._ops.OpOverload) -> Callable[..., Any] | None:
    """The C++-generated ``torch.<name>`` or ``Tensor.<name>`` of ``operator``'s name, if any.

    Not a Python wrapper such as ``torch.split`` (torch/functional.py), which is no faster; and
    only a ``torch.<name>`` that is the generated function itself, because the graph's code will
    call it by that name.
    """
    name = operator._schema.name.split("::")[-1]
    function = getattr(torch._C._VariableFunctions, name, None)
    if function is not None and getattr(torch, name, None) is function:
        return function
    method = getattr(torch.Tensor, name, None)
    return method if isinstance(method, types.MethodDescriptorType) else None


def _dispatches_to(binding: Callable[..., Any], node: torch.fx.Node) -> bool:
    """Whether ``binding(*node.args)`` hands ``node``'s operator exactly ``node``'s arguments,
    and calls no other operator."""
    args = torch.fx.node.map_arg(node.args, lambda source: source.meta.get("val"))
    fakes = [leaf for leaf in tree_leaves(args) if isinstance(leaf, FakeTensor)]
    if not fakes:
        return False
    calls = _Calls()
    try:
        with fakes[0].fake_mode, calls:
            binding(*args)
    except Exception:  # not a binding of this operator after all
        return False
    operator_calls = [call for call in calls.seen if call[0].namespace != "prim"]  # device queries
    return operator_calls == [(node.target, _identities(args), {})]


def _identities(args: Any) -> Any:
    """``args`` with each tensor as its identity and everything else with its type: ``2`` and
    ``2.0`` are different arguments to an operator."""
    return [
        ("tensor", id(arg)) if isinstance(arg, torch.Tensor) else (type(arg), arg)
        for arg in tree_leaves(args)
    ]


class _Calls(TorchDispatchMode):
    """Notes the operators that reach the dispatcher, and their arguments."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[torch._ops.OpOverload, Any, dict]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.seen.append((func, _identities(args), kwargs or {}))
        return func(*args, **(kwargs or {}))
