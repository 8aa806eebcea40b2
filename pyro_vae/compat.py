"""The previous release's module paths, kept working with a ``DeprecationWarning``.

Release 0.1.0 was one flat package (``pyro_vae.model``, ``pyro_vae.priors``, ``pyro_vae.train``,
...). Its modules now live in layers; a script that imports an old path gets the module it moved
to, and a warning that names the new path. Three old names are packages now (``pyro_vae.data``,
``pyro_vae.models``, ``pyro_vae.runs``): their ``__init__`` re-exports what the old module
offered, so they need no alias.
"""

import importlib
import importlib.abc
import importlib.machinery
import sys
import warnings
from types import ModuleType

# old module -> where it lives now
MOVED = {
    "budget": "runs.budget",
    "captured": "inference.fast.cuda_graph",
    "checkpoint": "runs.checkpoint",
    "conditional": "models.cvae",
    "config": "core.config",
    "devices": "core.devices",
    "diagnostics": "inference.diagnostics",
    "distributed": "inference.distributed",
    "errors": "core.errors",
    "evaluate": "inference.evaluate",
    "guides": "components.guides",
    "images": "data.image_files",
    "labels": "data.labels",
    "likelihoods": "components.likelihoods",
    "loaders": "data.sources",
    "model": "models.vae",
    "model_card": "runs.model_card",
    "networks": "components.networks",
    "objectives": "inference.objectives",
    "outputs": "runs.outputs",
    "pictures": "runs.pictures",
    "plots": "runs.figures",
    "priors": "components.priors",
    "recordable": "inference.fast.contract",
    "recorded": "inference.fast.replay",
    "registry": "core.registry",
    "rundir": "runs.rundir",
    "schedules": "inference.schedules",
    "semisupervised": "models.m2",
    "tensorboard_log": "runs.tensorboard",
    "train": "inference.trainer",
    "trained": "runs.trained",
    "transform": "data.transform",
}


class _MovedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds ``pyro_vae.<old>`` and loads it as the module it moved to."""

    def find_spec(self, fullname: str, path: object, target: object = None):
        package, _, old = fullname.partition(".")
        if package != "pyro_vae" or old not in MOVED:
            return None
        return importlib.machinery.ModuleSpec(fullname, self)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        new = "pyro_vae." + MOVED[spec.name.partition(".")[2]]
        warnings.warn(
            f"{spec.name} is deprecated: import {new} (or the name from pyro_vae itself)",
            DeprecationWarning,
            stacklevel=3,
        )
        return importlib.import_module(new)

    def exec_module(self, module: ModuleType) -> None:
        pass  # the module it moved to is already executed


def install() -> None:
    """Let the old paths import (once per process)."""
    if not any(isinstance(finder, _MovedModules) for finder in sys.meta_path):
        sys.meta_path.append(_MovedModules())
