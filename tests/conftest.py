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


@pytest.fixture(scope="session")
def digits():
    return load_dataset(DataConfig())


@pytest.fixture
def binary_batch(digits) -> torch.Tensor:
    """Sixteen binarised digits: in the support of every likelihood (real and binary alike)."""
    return (digits.train.x[:16] > 0.5).float()
