"""Layer 5, a run as the user sees it: its directory and checkpoints, training and resuming it,
its budget, pictures and reports, and putting a trained run to use (``load_run``, export).

``pyro_vae.runs`` was a module in release 0.1.0; what it offered is re-exported here.
"""

from typing import Any

from pyro_vae.runs.rundir import (
    BEST,
    CHECKPOINT,
    CONFIG,
    ELBO_CURVE,
    METRICS,
    RECONSTRUCTIONS,
    SAMPLES,
    TIMING,
)
from pyro_vae.runs.runner import RunHooks, RunResult, resume_run, train_run

__all__ = [
    "BEST",
    "CHECKPOINT",
    "CONFIG",
    "ELBO_CURVE",
    "METRICS",
    "RECONSTRUCTIONS",
    "SAMPLES",
    "TIMING",
    "RunHooks",
    "RunResult",
    "resume_run",
    "train_run",
]


def __getattr__(name: str) -> Any:
    # What the 0.1.0 module pyro_vae.runs offered beyond these names, with a DeprecationWarning.
    from pyro_vae.compat import package_getattr

    return package_getattr("runs", name)
