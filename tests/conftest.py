import pyro
import pytest
import torch

from pyro_vae import DataConfig, load_dataset


@pytest.fixture(autouse=True)
def fresh_pyro():
    """Every test starts from an empty param store and a known random state."""
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    yield
    pyro.clear_param_store()


@pytest.fixture(autouse=True, scope="session")
def own_cache(tmp_path_factory):
    """The step timings a run keeps (inference/fast/compiled.py) go to a folder of the tests',
    not the user's cache: for this process and the commands it starts."""
    import os

    before = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("cache"))
    yield
    if before is None:
        os.environ.pop("XDG_CACHE_HOME", None)
    else:
        os.environ["XDG_CACHE_HOME"] = before


@pytest.fixture(autouse=True)
def no_automatic_compile(monkeypatch):
    """Left to decide, a run compiles its step where the step, timed, would take AUTO_SECONDS
    over the run: a loaded machine times it slower and compiles where an idle one would not,
    and compiling costs seconds. The runs inside the test process never decide so (a test that
    asks for compile=True still compiles; the test of the decision sets the threshold back);
    the commands the tests start as processes train a few epochs, far below it."""
    from pyro_vae.inference.fast import replay

    monkeypatch.setattr(replay, "AUTO_SECONDS", float("inf"))
    # Nor do they time the matrix products' libraries (inference/fast/products.py).
    monkeypatch.setattr(replay, "PRODUCTS_SECONDS", float("inf"))


@pytest.fixture(scope="session")
def digits():
    return load_dataset(DataConfig())


@pytest.fixture
def binary_batch(digits) -> torch.Tensor:
    """Sixteen binarised digits: in the support of every likelihood (real and binary alike)."""
    return (digits.train.x[:16] > 0.5).float()
