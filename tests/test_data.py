import pyro
import pytest
import torch

from pyro_vae import DataConfig, UserInputError, load_dataset
from pyro_vae.data.datasets import shuffled_batches


def test_digits_are_split_once_and_for_all(digits):
    sizes = [split.x.shape[0] for split in (digits.train, digits.val, digits.test)]
    assert sum(sizes) == 1797 and sizes[1] == sizes[2] == 180
    assert digits.image_shape == (1, 8, 8) and digits.data_dim == 64
    everything = torch.cat([digits.train.x, digits.val.x, digits.test.x])
    assert everything.dtype == torch.float32
    assert everything.min() == 0 and everything.max() == 1
    assert torch.unique(everything, dim=0).shape[0] > 1700  # the splits barely share an image


def test_the_split_ignores_the_training_seed_but_follows_the_split_seed(digits):
    pyro.set_rng_seed(123)
    again = load_dataset(DataConfig())
    assert torch.equal(again.test.x, digits.test.x)
    other = load_dataset(DataConfig(split_seed=1))
    assert not torch.equal(other.test.x, digits.test.x)


@pytest.mark.parametrize(
    "values, message",
    [
        ({"dataset": "cifar"}, "unknown dataset 'cifar'"),
        ({"val_fraction": 0.0}, "val_fraction must lie strictly between 0 and 1"),
        ({"val_fraction": 0.6, "test_fraction": 0.5}, "leave some data for training"),
    ],
)
def test_bad_data_config_is_refused(values, message):
    with pytest.raises(UserInputError, match=message):
        load_dataset(DataConfig(**values))


def test_shuffled_batches_cover_every_row_once():
    x = torch.arange(10.0).unsqueeze(1)
    batches = list(shuffled_batches(x, 4))
    assert [b.shape[0] for b in batches] == [4, 4, 2]
    assert sorted(torch.cat(batches).squeeze(1).tolist()) == list(range(10))
    orders = {tuple(torch.cat(list(shuffled_batches(x, 4))).squeeze(1).tolist()) for _ in range(5)}
    assert len(orders) > 1  # a fresh order each epoch
