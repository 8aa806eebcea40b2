"""The previous release's module paths and names, kept working with a ``DeprecationWarning``.

Release 0.1.0 was one flat package (``pyro_vae.model``, ``pyro_vae.priors``, ``pyro_vae.train``,
...). Its modules now live in layers. Importing an old path gives a small stand-in module whose
names are looked up where they live now, with a warning that names the new path; three old names
are packages now (``pyro_vae.data``, ``pyro_vae.models``, ``pyro_vae.runs``), whose ``__getattr__``
asks ``old_name`` for what the old module offered beyond their own names.
tests/test_architecture.py checks every public name of 0.1.0 (tests/data/api_0.1.0.json).
"""

import importlib
import importlib.abc
import importlib.machinery
import sys
import types
import warnings
from typing import Any

# old module -> the modules its names live in now, searched in order
MOVED = {
    "budget": ("runs.budget",),
    "captured": ("inference.fast.cuda_graph",),
    "checkpoint": ("runs.checkpoint", "runs.rundir"),
    "conditional": ("models.cvae",),
    "config": ("core.config", "core.config_file"),
    "data": ("data.datasets",),
    "devices": ("core.devices",),
    "diagnostics": ("inference.diagnostics",),
    "distributed": ("inference.distributed",),
    "errors": ("core.errors",),
    "evaluate": ("inference.evaluate",),
    "guides": ("components.guides",),
    "images": ("data.image_files",),
    "labels": ("data.labels",),
    "likelihoods": ("components.likelihoods",),
    "loaders": ("data.sources",),
    "model": ("models.vae",),
    "model_card": ("runs.model_card",),
    "models": ("models.build",),
    "networks": ("components.networks",),
    "objectives": ("inference.objectives",),
    "outputs": ("runs.outputs",),
    "pictures": ("runs.pictures",),
    "plots": ("runs.figures",),
    "priors": ("components.priors",),
    "recordable": ("inference.fast.contract",),
    "recorded": ("inference.fast.replay",),
    "registry": ("core.registry",),
    "rundir": ("runs.rundir", "runs.checkpoint"),
    "runs": ("runs.runner", "runs.writer", "runs.rundir", "core.config"),
    "schedules": ("inference.schedules",),
    "semisupervised": ("models.m2", "inference.m2_trainer"),
    "semisupervised_bounds": ("inference.evaluate",),
    "tensorboard_log": ("runs.tensorboard",),
    "train": ("inference.trainer",),
    "trained": ("runs.trained",),
    "transform": ("data.transform",),
}
# The packages that kept an old module's name: imported as themselves, not as stand-ins.
PACKAGES = ("data", "models", "runs")


def _renamed(old: str, name: str) -> Any:
    """Names that changed, not only moved; None where ``name`` is not one of them."""
    from pyro_vae.inference.evaluate import elbo_sums, evaluate_bounds, image_bounds
    from pyro_vae.runs.figures import save_reconstruction_grid

    if (old, name) == ("plots", "save_reconstructions"):
        return save_reconstruction_grid
    if old != "semisupervised_bounds":
        return None

    # M2's held-out numbers are the one driver's now, and its terms a method of M2.
    def bound_terms(vae: Any, x: Any, num_particles: int, analytic: bool = True) -> Any:
        return vae.class_terms(x, num_particles, analytic)

    def bound_sums(vae: Any, x: Any, num_particles: int, max_codes: int = 2**13) -> Any:
        return elbo_sums(vae, x, num_particles, max_codes=max_codes)

    def m2_image_bounds(vae: Any, x: Any, num_samples: int = 1000, *args: Any, **kw: Any) -> Any:
        return image_bounds(vae, x, num_samples, *args, **kw)

    def evaluate_m2_bounds(vae: Any, x: Any, num_samples: int = 1000, *args: Any, **kw: Any):
        return evaluate_bounds(vae, x, num_samples, *args, **kw)

    shims = {
        "bound_terms": bound_terms,
        "bound_sums": bound_sums,
        "m2_image_bounds": m2_image_bounds,
        "evaluate_m2_bounds": evaluate_m2_bounds,
    }
    return shims.get(name)


def old_name(old: str, name: str) -> Any:
    """What ``pyro_vae.<old>.<name>`` was in 0.1.0, from where it lives now."""
    renamed = _renamed(old, name)
    if renamed is not None:
        return renamed
    for new in MOVED[old]:
        module = importlib.import_module(f"pyro_vae.{new}")
        if hasattr(module, name):
            return getattr(module, name)
    raise AttributeError(f"module 'pyro_vae.{old}' has no attribute {name!r}")


def package_getattr(old: str, name: str) -> Any:
    """A package's ``__getattr__`` for the names its old module offered."""
    if name.startswith("__"):
        raise AttributeError(name)
    value = old_name(old, name)
    warnings.warn(
        f"pyro_vae.{old}.{name} is deprecated: import it from {_where(value, old)}",
        DeprecationWarning,
        stacklevel=3,  # past this function and the package's __getattr__
    )
    return value


def _where(value: Any, old: str) -> str:
    return getattr(value, "__module__", None) or f"pyro_vae.{MOVED[old][0]}"


class _OldModule(types.ModuleType):
    """``pyro_vae.<old>``: every name looked up where it lives now."""

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return old_name(self.__name__.partition(".")[2], name)


class _MovedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds ``pyro_vae.<old>`` and makes its stand-in."""

    def find_spec(self, fullname: str, path: object, target: object = None) -> Any:
        package, _, old = fullname.partition(".")
        if package != "pyro_vae" or old not in MOVED or old in PACKAGES:
            return None
        return importlib.machinery.ModuleSpec(fullname, self)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        new = ", ".join(f"pyro_vae.{m}" for m in MOVED[spec.name.partition(".")[2]])
        warnings.warn(
            f"{spec.name} is deprecated: import from {new} (or the name from pyro_vae itself)",
            DeprecationWarning,
            stacklevel=2,  # the import system's own frames are skipped: the user's import line
        )
        return _OldModule(spec.name)

    def exec_module(self, module: types.ModuleType) -> None:
        pass  # a stand-in: its names are looked up when asked for


def install() -> None:
    """Let the old paths import (once per process)."""
    if not any(isinstance(finder, _MovedModules) for finder in sys.meta_path):
        sys.meta_path.append(_MovedModules())
