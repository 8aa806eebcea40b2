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


@pytest.fixture(scope="session")
def digits():
    return load_dataset(DataConfig())


@pytest.fixture
def binary_batch(digits) -> torch.Tensor:
    """Sixteen binarised digits: in the support of every likelihood (real and binary alike)."""
    return (digits.train.x[:16] > 0.5).float()
