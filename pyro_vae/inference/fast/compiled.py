"""A recorded step compiled by Inductor, where the run is long enough to pay for the compiling.

The recorded graph (replay.py) calls one torch kernel per operation: a hundred small elementwise
kernels around the matrix products of an MNIST-sized step, each reading and writing its whole
tensor. Inductor fuses them into a few C++ loops; with its C++ wrapper the step no longer goes
through Python between kernels. Measured (benchmarks/step_anatomy.py, 784-400-20, batch 128, 2
cores of an Intel Xeon, torch 2.15): the compiled graph took 0.73× the replay's time (2.56 ms
against 3.57), and compiling it took about 10 s with a cold Inductor cache, 4-5 s with a warm one
(in a whole run: benchmarks/whole_run.py --long --compile).
Inductor's Python wrapper gained nothing (1.03×): its Python between kernels costs what the
fusion saves.

What changes: Inductor fuses and reorders the elementwise work and its sums, so the compiled
step's loss and gradients differ from the replay's in the last bits (its audits allow a
difference of 1e-3 of each output's norm, replay.py's COMPILED_TOLERANCE; a compiled graph that
fails one is replaced by its recording). Its random draws are torch's own (``fallback_random``),
the eager step's noise. A compiled run is deterministic on its machine: resumed, it compiles the
same graph and repeats its numbers to the bit.

When (``TrainConfig.compile``): True compiles, False replays, None decides, so that compiling
never makes a run slower: a run whose replayed steps would take at least ``AUTO_SECONDS`` is
compiled, and the compiled graph is kept only where it times faster than the replay on the same
inputs (paired turns, before any step uses it). Timings are taken once per graph on a machine (its
CPU, thread count and torch version) and kept in a small cache file, ``compile-timings.json`` in
``$XDG_CACHE_HOME/pyro-vae`` (~/.cache/pyro-vae), so that the same run decides the same way every
time on that machine. The choice is made once per run and kept in its checkpoints: a resumed run
takes the same one. Only the full batches' graph is compiled: the epoch's last, smaller batch (one
step an epoch) would not repay a compile of its own.
"""

import copy
import hashlib
import json
import logging
import os
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch.fx import GraphModule

log = logging.getLogger(__name__)

# The replayed steps' time from which a run is compiled: compiling took 4-5 s with Inductor's
# cache warm and 10 s cold for the VAE above, 21 s cold for M2 at 784-500-50, batch 200 (whose
# compiled steps took 0.78x the replayed ones' time over an epoch), so a run of two minutes
# repays it even where the compiled step saves only a sixth.
AUTO_SECONDS = 120.0
# The timing that decides whether a compiled graph is kept: paired turns of a few calls each.
TURNS, CALLS = 5, 4


def compile_graph(
    graph: GraphModule, inputs: Sequence[torch.Tensor], asked: bool = False
) -> Callable | None:
    """``graph`` compiled by Inductor for ``inputs`` (C++ kernels and wrapper, torch's random
    numbers), or None where it cannot be (no C++ compiler, an operation Inductor refuses), said
    in one log line: a warning where the compile was ``asked`` for. ``graph`` itself is left as
    it was, for the replay."""
    try:
        import torch._inductor.config as inductor
        from torch._inductor.compile_fx import compile_fx

        with inductor.patch(cpp_wrapper=True, fallback_random=True):
            return compile_fx(copy.deepcopy(graph), list(inputs))
    except Exception as error:  # whatever the compiler's failure, the replay trains on
        lines = [line for line in str(error).splitlines() if line.strip()]
        log.log(
            logging.WARNING if asked else logging.INFO,
            "training on the replayed step: Inductor could not compile it (%s%s); compiling "
            "needs a C++ compiler (g++ or clang) on the PATH",
            type(error).__name__,
            ": " + lines[0][:200] if lines else "",
        )
        return None


def paired_seconds(
    replayed: Callable,
    compiled: Callable,
    inputs: Sequence[torch.Tensor],
    rounds: int = TURNS,
    calls: int = CALLS,
) -> tuple[float, float]:
    """Median seconds of one call of each, timed in ``rounds`` alternating turns of ``calls``
    calls on the same inputs (the caller keeps the random generator and buffers as they were)."""
    turns: list[tuple[float, float]] = []
    with torch.no_grad():
        compiled(*inputs)  # the first call loads the compiled code (or builds oneDNN's primitive)
        for _ in range(rounds):
            pair = []
            for function in (replayed, compiled):
                start = time.perf_counter()
                for _ in range(calls):
                    function(*inputs)
                pair.append((time.perf_counter() - start) / calls)
            turns.append((pair[0], pair[1]))
    return statistics.median(a for a, _ in turns), statistics.median(b for _, b in turns)


def timings_file() -> Path | None:
    """Where the measured step times are kept (``$XDG_CACHE_HOME/pyro-vae``); None without a
    home to keep them in (a container's user with none): then they are measured every run."""
    root = os.environ.get("XDG_CACHE_HOME")
    if not root:
        try:
            root = str(Path.home() / ".cache")
        except RuntimeError:
            return None
    return Path(root) / "pyro-vae" / "compile-timings.json"


def graph_key(graph: Callable, inputs: Sequence[torch.Tensor]) -> str:
    """The cache's key of a graph on this machine: its code, its inputs' shapes and dtypes, the
    CPU, the thread count, torch's version and the precision of its float32 products (the same
    code is another balance of work in bfloat16: precision.py)."""
    shapes = repr([(tuple(value.shape), str(value.dtype)) for value in inputs])
    return machine_key(getattr(graph, "code", repr(graph)), shapes)


def machine_key(*parts: str) -> str:
    """A cache key for ``parts`` measured on this machine: its CPU, thread count, torch version
    and the precision of its float32 products."""
    found = [
        *parts,
        _cpu_model(),
        str(torch.get_num_threads()),
        torch.__version__,
        torch.backends.mkldnn.matmul.fp32_precision,
    ]
    return hashlib.sha256("\n".join(found).encode()).hexdigest()[:32]


def cached_timing(key: str) -> dict[str, float]:
    """The times measured for ``key`` so far (s): ``replay`` (what the decision to compile was
    made on) and, once compiled, ``paired_replay`` and ``compiled`` (timed in turns)."""
    path = timings_file()
    if path is None:
        return {}
    try:
        found = json.loads(path.read_text()).get(key, {})
    except (OSError, ValueError, AttributeError):  # none yet, or unreadable: measure again
        return {}
    return {name: float(value) for name, value in found.items() if isinstance(value, int | float)}


def cache_timing(key: str, timing: dict[str, float]) -> None:
    """Keep ``timing`` for ``key``; an unwritable cache only means measuring again next time
    (two runs writing at once may each keep only their own entry: the other measures again)."""
    path = timings_file()
    if path is None:
        return
    try:
        try:
            known = json.loads(path.read_text())
            known = known if isinstance(known, dict) else {}
        except (OSError, ValueError):
            known = {}
        known[key] = timing
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f"{path.name}.{os.getpid()}")
        partial.write_text(json.dumps(known, indent=1))
        partial.replace(path)  # whole or not at all, should two runs write at once
    except OSError as error:
        log.debug("the step timings were not kept (%s): they are measured again next time", error)


def replay_seconds(replayed: Callable, inputs: Sequence[torch.Tensor]) -> float:
    """Median seconds of one call, over a few (the caller keeps generator and buffers)."""
    times = []
    with torch.no_grad():
        for _ in range(TURNS):
            start = time.perf_counter()
            replayed(*inputs)
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()
