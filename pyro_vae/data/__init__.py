"""Layer 2, where images come from: the built-in datasets, the user's files, the splits, the
labels the labelled models read, and the transform a trained run applies to new data.

``pyro_vae.data`` was a module in release 0.1.0; what it offered is re-exported here.
"""

from typing import Any

from pyro_vae.data.datasets import (
    DATASETS,
    Dataset,
    Split,
    as_float,
    load_dataset,
    load_run_data,
    shuffled_batches,
)

__all__ = [
    "DATASETS",
    "Dataset",
    "Split",
    "as_float",
    "load_dataset",
    "load_run_data",
    "shuffled_batches",
]


def __getattr__(name: str) -> Any:
    # What the 0.1.0 module pyro_vae.data offered beyond these names, with a DeprecationWarning.
    from pyro_vae.compat import package_getattr

    return package_getattr("data", name)
