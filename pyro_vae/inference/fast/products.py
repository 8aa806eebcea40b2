"""Each matrix product of a recorded step through the faster library on this machine: MKL or oneDNN.

torch multiplies float32 matrices on the CPU with MKL's ``sgemm``, and MKL takes its AVX-512
kernels only on Intel's CPUs: on an AMD EPYC (Zen 4) the step's products ran at about 200 GFLOP/s
through it and up to twice that through oneDNN, the other library in torch's wheel (issue 29,
benchmarks/gemm.py), while on an Intel Xeon MKL was the faster in 11 of 12 (docs/performance.md).
So the choice is measured, not assumed: each product of a recorded step, with its own shapes and
strides, is timed through both in alternating turns, once per machine (CPU, threads, torch
version: the cache file of compiled.py), and goes through oneDNN only where that took less than
``MARGIN`` (95 %) of MKL's time; everywhere else the recording stays as it was.

What changes: oneDNN sums in another order than MKL, so a step whose products moved differs from
the eager step in the last bits. Its audits compare it as a compiled graph's are (replay.py's
COMPILED_TOLERANCE), and one that fails is replaced by its recording. The choices are made once
per run and kept in its checkpoints: a resumed run repeats the uninterrupted one to the bit.

oneDNN's linear (``torch.ops.mkldnn._linear_pointwise``, the kernel Inductor's CPU lowering
emits) is a private entry point of torch's: where a torch build lacks it, every product stays
MKL's, said in one log line.
"""

import copy
import logging
from collections.abc import Callable

import torch
from torch.fx import GraphModule, Node

from pyro_vae.inference.fast import compiled
from pyro_vae.inference.fast.compiled import cache_timing, cached_timing, machine_key

log = logging.getLogger(__name__)

# oneDNN is taken for a product only where its median time is below this fraction of MKL's: a
# near tie stays with torch's default, and noise between two timings cannot flip a choice.
MARGIN = 0.95
# The products are timed for a run of at least PRODUCTS_STEPS full batches and PRODUCTS_SECONDS
# of replayed steps: the timing takes from a fraction of a second (the VAE) to several (M2's
# 2,000-row products), once on a machine (then it is cached), which a short run should not pay.
PRODUCTS_STEPS = 200
PRODUCTS_SECONDS = 10.0
# The timing of one product: alternating turns of a few calls through each library.
TURNS, CALLS = 7, 10

aten = torch.ops.aten
_MM = (aten.mm.default, torch.mm)
_ADDMM = (aten.addmm.default, torch.addmm)
_TRANSPOSE = (aten.t.default, torch.t)


def onednn_linear() -> Callable[..., torch.Tensor] | None:
    """oneDNN's float32 linear, ``Y = X Wᵀ + b``, or None where this torch has none."""
    if not torch.backends.mkldnn.is_available():
        return None
    packet = getattr(torch.ops.mkldnn, "_linear_pointwise", None)
    return getattr(packet, "default", None)  # the overload itself: no lookup at each call


def signature(node: Node) -> str | None:
    """A product node's shapes and strides (``mm 128x784:784,1 784x400:1,784``), or None where
    it is not one oneDNN's linear can take: a float32 ``mm`` or ``addmm`` of 2-D CPU tensors,
    the latter with a bias over the output's columns and no scaling."""
    if node.op != "call_function" or node.kwargs or node.target not in (*_MM, *_ADDMM):
        return None
    values = [arg.meta.get("val") if isinstance(arg, Node) else None for arg in node.args]
    if not all(isinstance(value, torch.Tensor) for value in values):
        return None
    if any(value.dtype != torch.float32 or value.device.type != "cpu" for value in values):
        return None
    *bias, left, right = values
    if left.dim() != 2 or right.dim() != 2 or not (_dense(left) and _dense(right)):
        return None
    if bias and (tuple(bias[0].shape) != (right.shape[1],) or bias[0].stride() != (1,)):
        return None
    kind = "addmm" if bias else "mm"
    return " ".join([kind, *(_layout(value) for value in values)])


def _dense(matrix: torch.Tensor) -> bool:
    """Whether a matrix is laid out row by row or column by column, without gaps or repeats
    (an expanded gradient's zero strides are not)."""
    return matrix.is_contiguous() or matrix.t().is_contiguous()


def _layout(value: torch.Tensor) -> str:
    return "x".join(map(str, value.shape)) + ":" + ",".join(map(str, value.stride()))


def _tensor(layout: str) -> torch.Tensor:
    shape, stride = layout.split(":")
    return torch.empty_strided(
        tuple(map(int, shape.split("x"))), tuple(map(int, stride.split(",")))
    ).normal_()


def _calls(sign: str, linear: Callable[..., torch.Tensor]) -> tuple[Callable, Callable]:
    """The product of ``sign``'s layouts through MKL (torch's own call) and through oneDNN."""
    kind, *layouts = sign.split()
    values = [_tensor(layout) for layout in layouts]
    if kind == "addmm":
        bias, left, right = values
        return (lambda: torch.addmm(bias, left, right)), (
            lambda: linear(left, right.t(), bias, "none", [], "")
        )
    left, right = values
    return (lambda: torch.mm(left, right)), (lambda: linear(left, right.t(), None, "none", [], ""))


def paired_seconds(sign: str, linear: Callable[..., torch.Tensor]) -> dict[str, float]:
    """Median seconds of ``sign``'s product through MKL and through oneDNN, in alternating turns."""
    mkl, onednn = _calls(sign, linear)
    seconds = compiled.paired_seconds(mkl, onednn, [], rounds=TURNS, calls=CALLS)
    return dict(zip(("MKL", "oneDNN"), seconds, strict=True))


def choose(graph: GraphModule) -> dict[str, str]:
    """The faster library for each product of ``graph`` on this machine (``MKL`` or
    ``oneDNN``), by its signature: measured once per machine and kept in the timings' cache."""
    linear = onednn_linear()
    signs = {sign for node in graph.graph.nodes if (sign := signature(node)) is not None}
    if linear is None:
        if signs:
            log.info(
                "the step's matrix products stay MKL's: this torch has no oneDNN linear "
                "(torch.ops.mkldnn._linear_pointwise) to time against it"
            )
        return {}
    chosen = {}
    for sign in sorted(signs):
        key = machine_key("product", sign)
        timing = cached_timing(key)
        if not {"MKL", "oneDNN"} <= timing.keys():
            try:
                timing = paired_seconds(sign, linear)
            except RuntimeError as error:  # oneDNN refused these layouts: torch's own call
                log.debug("the product %s stays MKL's: oneDNN failed on it (%s)", sign, error)
                chosen[sign] = "MKL"
                continue
            cache_timing(key, timing)
        chosen[sign] = "oneDNN" if timing["oneDNN"] < MARGIN * timing["MKL"] else "MKL"
    return chosen


def with_products(graph: GraphModule, chosen: dict[str, str]) -> GraphModule | None:
    """A copy of ``graph`` whose products marked ``oneDNN`` in ``chosen`` go through oneDNN's
    linear, or None where none does (or this torch has no oneDNN linear): ``graph`` as it is."""
    linear = onednn_linear()
    if linear is None or "oneDNN" not in chosen.values():
        return None
    moved = copy.deepcopy(graph)
    bypassed = []
    changed = False
    for node in list(moved.graph.nodes):
        if chosen.get(signature(node) or "") != "oneDNN":
            continue
        *bias, left, right = node.args
        with moved.graph.inserting_before(node):
            weight = _transposed(moved, right)
        if weight is not right:
            bypassed.append(right)
        node.target = linear
        node.args = (left, weight, bias[0] if bias else None, "none", [], "")
        changed = True
    if not changed:
        return None
    # Only the transposes no longer read: a general dead-code pass would also drop an in-place
    # update of a buffer whose result nothing reads (the Python bindings look pure to it).
    for node in dict.fromkeys(bypassed):
        if not node.users:
            moved.graph.erase_node(node)
    moved.recompile()
    return moved


def _transposed(graph: GraphModule, node: Node) -> Node:
    """``node``ᵀ: the source of a transpose where ``node`` is one (a layer's weight, as linear
    takes it), else a new transpose (a view, no copy)."""
    if node.op == "call_function" and node.target in _TRANSPOSE and isinstance(node.args[0], Node):
        return node.args[0]
    return graph.graph.call_function(torch.t, (node,))
