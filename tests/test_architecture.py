"""The package's shape, as a contract: layers that import one way, no import cycle, private
torch and Pyro APIs in one subpackage, the public API listed, the previous release's names
still working, and checkpoints written before the move still loading."""

import ast
import importlib
import json
import re
import subprocess
import sys
import tokenize
import warnings
from pathlib import Path

import pytest
import torch

import pyro_vae

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "pyro_vae"
# Bottom to top: a module may import from its own layer and those below it, never above.
LAYERS = ["core", "components", "data", "models", "inference", "runs", "cli"]
FAST = "pyro_vae.inference.fast"  # the only code allowed on private torch and Pyro APIs


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imports_of(name: str) -> set[str]:
    """The pyro_vae modules ``name`` imports, anywhere in it (functions and TYPE_CHECKING too)."""
    found = set()
    for node in ast.walk(ast.parse(MODULES[name].read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # from a.b import c: the module a.b.c where c is one, else a.b
            targets = [
                f"{node.module}.{alias.name}"
                if f"{node.module}.{alias.name}" in MODULES
                else node.module
                for alias in node.names
            ]
        else:
            continue
        found.update(t for t in targets if t.split(".")[0] == "pyro_vae")
    return found


GRAPH = {name: imports_of(name) for name in MODULES}


def layer(name: str) -> int | None:
    parts = name.split(".")
    return LAYERS.index(parts[1]) if len(parts) > 1 and parts[1] in LAYERS else None


def test_every_module_is_in_a_layer():
    outside = {n for n in MODULES if layer(n) is None} - {"pyro_vae", "pyro_vae.compat"}
    assert not outside, f"modules in no layer: {sorted(outside)}"


def test_layers_import_downwards_only():
    upward = [
        f"{name} (layer {LAYERS[layer(name)]}) imports {target} (layer {LAYERS[layer(target)]})"
        for name, targets in GRAPH.items()
        if layer(name) is not None
        for target in targets
        if layer(target) is not None and layer(target) > layer(name)
    ]
    assert not upward, "\n".join(upward)


def test_only_the_command_line_imports_the_package_facade():
    # pyro_vae/__init__.py imports every layer: a library module importing it closes a circle.
    offenders = [
        name
        for name, targets in GRAPH.items()
        if "pyro_vae" in targets and layer(name) != LAYERS.index("cli")
    ]
    assert not offenders, offenders


def test_no_import_cycle():
    """Tarjan's strongly connected components over every import, deferred ones included."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in GRAPH.get(node, ()):
            if target not in MODULES:
                continue
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1 or node in GRAPH.get(node, ()):
                cycles.append(sorted(component))

    for name in sorted(MODULES):
        if name not in index:
            visit(name)
    assert not cycles, f"import cycles: {cycles}"


def test_the_contract_sees_a_cycle_and_an_upward_import():
    """The checks above must be able to fail: a made-up graph with both faults."""
    global GRAPH
    saved = GRAPH
    try:
        GRAPH = {**saved, "pyro_vae.core.errors": {"pyro_vae.runs.runner"}}
        with pytest.raises(AssertionError, match="layer core"):
            test_layers_import_downwards_only()
        with pytest.raises(AssertionError, match="import cycles"):
            test_no_import_cycle()
    finally:
        GRAPH = saved


PRIVATE = re.compile(
    r"\btorch\._[A-Za-z]|\btorch\.ops\b|_PYRO_STACK|\._backward_hooks|_optimizer_step_code"
    r"|\._step_(pre|post)_hooks|\._last_lr\b|_patch_step_function"
    r"|from (torch|pyro)(\.[\w.]*)? import _[a-z]"
)


def code_of(path: Path) -> str:
    """The module's code without its comments and strings (docstrings name private APIs)."""
    with path.open("rb") as file:
        tokens = tokenize.tokenize(file.readline)
        kept = [
            tok.string
            for tok in tokens
            if tok.type not in (tokenize.COMMENT, tokenize.STRING, tokenize.ENCODING)
        ]
    return " ".join(kept).replace(" . ", ".").replace(" .", ".").replace(". ", ".")


def test_private_apis_only_in_the_fast_path_layer():
    uses = [
        f"{name}: {match.group(0)}"
        for name, path in MODULES.items()
        if not name.startswith(FAST)
        for match in PRIVATE.finditer(code_of(path))
    ]
    assert not uses, uses


def test_the_fast_path_layer_is_where_the_private_apis_are():
    """The check above finds them where they are (so it could find them elsewhere)."""
    found = {
        name for name in MODULES if name.startswith(FAST) and PRIVATE.search(code_of(MODULES[name]))
    }
    assert found, "no private API found in the fast path layer: is the pattern still right?"


# The public API: a rename or a removal changes this list, deliberately.
PUBLIC = [
    "BernoulliLikelihood", "Checkpoint", "ConditionalVAE", "DATASETS", "DataConfig", "Dataset",
    "ESTIMATORS", "EpochMetrics", "GUIDES", "GaussianLikelihood", "GuideFamily", "LIKELIHOODS",
    "Likelihood", "MODELS", "ModelConfig", "NETWORKS", "PRIORS", "Prior", "Replicas",
    "RunConfig", "RunHooks", "RunResult", "SemiSupervisedTrainer", "SemiSupervisedVAE",
    "StandardNormalPrior", "TrainConfig", "TrainedModel", "Trainer", "TrainingDiverged",
    "UserInputError", "VAE", "__version__", "active_units", "build_model",
    "elbo_per_datapoint", "export_run", "kl_per_datapoint", "load_checkpoint", "load_dataset",
    "load_run", "make_elbo", "resolve_device", "resume_run", "save_checkpoint", "train_run",
]  # fmt: skip


def test_the_public_api_is_what_it_was_declared():
    assert sorted(pyro_vae.__all__) == sorted(PUBLIC)
    assert all(hasattr(pyro_vae, name) for name in PUBLIC)


def test_the_previous_release_constructor_warns_and_works():
    with pytest.warns(DeprecationWarning, match="data_shape"):
        vae = pyro_vae.VAE(data_dim=64, hidden_dims=(8,))
    assert vae.data_dim == 64
    with pytest.raises(TypeError, match="not data_dim as well"):
        pyro_vae.VAE(64, data_dim=64)
    with pytest.raises(TypeError, match="data_shape"):
        pyro_vae.VAE()


OLD_API = json.loads((ROOT / "tests" / "data" / "api_0.1.0.json").read_text())


@pytest.mark.parametrize("old", sorted(OLD_API))
def test_every_public_name_of_the_previous_release_still_imports(old):
    """Each module of 0.1.0 (its public names listed in tests/data/api_0.1.0.json, read from
    that release's source) imports by its old path, and each of its names is there."""
    if old not in ("data", "models", "runs"):  # those are packages now, not stand-ins
        sys.modules.pop(f"pyro_vae.{old}", None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        module = importlib.import_module(f"pyro_vae.{old}")
        missing = [name for name in OLD_API[old] if not hasattr(module, name)]
    assert not missing, f"pyro_vae.{old} lost {missing}"


OLD_PATHS = {  # a few old paths and where their names are now
    "pyro_vae.model": "pyro_vae.models.vae",
    "pyro_vae.priors": "pyro_vae.components.priors",
    "pyro_vae.train": "pyro_vae.inference.trainer",
    "pyro_vae.semisupervised": "pyro_vae.inference.m2_trainer",
    "pyro_vae.plots": "pyro_vae.runs.figures",
}


def test_an_old_module_path_warns_at_the_users_line(tmp_path):
    """The warning names the new path and points at the script's import, so Python's default
    filters show it (a DeprecationWarning shows where __main__ raised it)."""
    script = tmp_path / "script.py"
    script.write_text("".join(f"import {old}\n" for old in OLD_PATHS))
    result = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, cwd=ROOT, check=True
    )
    for line, (old, new) in enumerate(OLD_PATHS.items(), start=1):
        assert f"script.py:{line}: DeprecationWarning: {old} is deprecated" in result.stderr
        assert new in result.stderr


def test_an_old_module_path_leaves_the_new_module_alone():
    sys.modules.pop("pyro_vae.model", None)
    with pytest.warns(DeprecationWarning):
        old = importlib.import_module("pyro_vae.model")
    assert old.VAE is pyro_vae.VAE
    new = sys.modules["pyro_vae.models.vae"]
    assert new.__spec__.name == "pyro_vae.models.vae" and new.__spec__.origin
    assert importlib.reload(new) is new


def test_m2s_old_bounds_are_the_one_drivers():
    from pyro_vae.inference.evaluate import image_bounds

    sys.modules.pop("pyro_vae.semisupervised_bounds", None)
    with pytest.warns(DeprecationWarning):
        old = importlib.import_module("pyro_vae.semisupervised_bounds")
    torch.manual_seed(0)
    vae = pyro_vae.SemiSupervisedVAE(16, 2, hidden_dims=(8,), num_classes=3)
    x = torch.rand(5, 16)
    torch.manual_seed(1)
    before = old.m2_image_bounds(vae, x, num_samples=3)
    torch.manual_seed(1)
    now = image_bounds(vae, x, num_samples=3)
    assert before.keys() == now.keys() and all(torch.equal(before[k], now[k]) for k in now)


def test_the_old_modules_that_are_packages_now_offer_their_names():
    from pyro_vae.data import Dataset, load_dataset  # noqa: F401
    from pyro_vae.models import MODELS
    from pyro_vae.runs import CHECKPOINT, resume_run, train_run  # noqa: F401

    assert set(MODELS) == {"vae", "cvae", "m2"}
    assert CHECKPOINT == "checkpoint.pt"
    with pytest.warns(DeprecationWarning, match="make_trainer"):
        from pyro_vae.runs import make_trainer  # noqa: F401


OLD_RUNS = ROOT / "tests" / "data" / "checkpoints_0.1.0"


@pytest.mark.parametrize("run", ["vae", "m2", "vamp"])
def test_checkpoints_written_before_the_move_still_load(run):
    """Written by release 0.1.0 (its flat package) before the layers; decoded at fixed codes
    then, the same numbers now."""
    expected = json.loads((OLD_RUNS / "decoded.json").read_text())[run]
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)  # loading an old run is not deprecated
        model = pyro_vae.load_run(OLD_RUNS / run)
    z = torch.linspace(-1, 1, 4).reshape(2, 2)
    labels = {"label": torch.tensor([3, 7])} if run == "m2" else {}
    decoded = model.decode(z, **labels).flatten()[:16]
    assert torch.allclose(decoded, torch.tensor(expected), atol=1e-5)
