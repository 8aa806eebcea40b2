"""Denormal floats flushed to zero on the CPU: in the calling thread and in torch's thread pool.

A training run feeds denormals to every step: Adam's first moment of a weight whose gradient stops
(the weight of a pixel that is seldom on, of a unit that stopped firing) decays by 0.9 a step
through the range below 1.2e-38, where x86 arithmetic is tens of times slower. Measured on MNIST
(784-400-20, batch 128, 2 CPU cores of an Intel Xeon): by the third epoch 65,000 of Adam's 1.3
million moments were denormal, and the fused update took 2.04 ms instead of 0.52. Flushed (FTZ and
DAZ), they are the zero they were on their way to: a change of less than 1.2e-38 to any number.
XLA, so NumPyro and JAX, runs its CPU code this way by default.

torch's ``set_flush_denormal`` sets the mode of the calling thread alone. Threads started after it
inherit it, but torch's OpenMP pool is started by the first parallel operation of the process
(often before training: making the model, reading the data), and its threads would keep
computing on denormals: half of every parallel operation on 2 cores. So the mode is set in each of
the pool's threads too, from inside one parallel region of the OpenMP runtime torch uses (GNU's
libgomp, in the wheels on PyPI). Where torch runs on another runtime, the calling thread's mode is
set and the pool's threads keep theirs (said once in the log).
"""

import ctypes
import logging
import os
import sys

import torch

log = logging.getLogger(__name__)

_SET_IN_THREAD = ctypes.CFUNCTYPE(None, ctypes.c_void_p)


@_SET_IN_THREAD
def _flush_in_this_thread(_: int | None) -> None:
    torch.set_flush_denormal(True)


def flush_denormals() -> bool:
    """Flush denormals to zero in this thread and in every thread of torch's OpenMP pool; True
    where the CPU can (x86 with SSE3), False where nothing changed."""
    if not torch.set_flush_denormal(True):
        return False
    gomp = _torch_libgomp()
    if gomp is None:
        if not _said_once:
            _said_once.append(True)
            log.info(
                "denormals are flushed to zero in this thread only: torch's threads run on an "
                "OpenMP runtime other than libgomp, whose threads keep their own mode"
            )
        return True
    # A parallel region of the pool's full size (the calling thread's thread count, torch's):
    # each of its threads runs the callback, which takes the GIL that this call releases.
    gomp.GOMP_parallel(ctypes.cast(_flush_in_this_thread, ctypes.c_void_p), None, 0, 0)
    return True


_said_once: list[bool] = []  # whether the other runtime was said: once a process


def _torch_libgomp() -> ctypes.CDLL | None:
    """The libgomp that this process has loaded (torch's), or None: never a second copy (a
    platform without ``RTLD_NOLOAD``, or other than Linux, gets None)."""
    if not sys.platform.startswith("linux") or not hasattr(os, "RTLD_NOLOAD"):
        return None
    if "OpenMP" not in torch.__config__.parallel_info():
        return None
    try:
        gomp = ctypes.CDLL("libgomp.so.1", mode=os.RTLD_NOLOAD | os.RTLD_LAZY)
    except (OSError, AttributeError):  # not loaded (LLVM's libomp, Intel's libiomp5 instead)
        return None
    gomp.GOMP_parallel.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_uint, ctypes.c_uint]
    gomp.GOMP_parallel.restype = None
    return gomp
