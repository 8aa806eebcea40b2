"""The models ``--model`` names, and ``build_model``, which makes the one a config names."""

from collections.abc import Sequence
from dataclasses import replace

from pyro_vae.components.networks import default_hidden_dims
from pyro_vae.core.config import ModelConfig, RunConfig
from pyro_vae.models.cvae import ConditionalVAE
from pyro_vae.models.m2 import SemiSupervisedVAE
from pyro_vae.models.vae import VAE

# name -> class; core/model_config.py's MODEL_KINDS lists the same names for checking a config
# without torch.
MODELS: dict[str, type[VAE]] = {
    VAE.kind: VAE,
    ConditionalVAE.kind: ConditionalVAE,
    SemiSupervisedVAE.kind: SemiSupervisedVAE,
}


def build_model(config: ModelConfig, data_shape: int | Sequence[int]) -> VAE:
    """The model ``config.kind`` names, its components built from ``config``, for data of
    ``data_shape`` ((C, H, W), or a flat dimension)."""
    return MODELS[config.kind].from_config(config, data_shape)


def with_widths(config: ModelConfig) -> ModelConfig:
    """The same model with its widths written out (the network's default where None), so that
    a stored run rebuilds the same networks whatever later defaults say."""
    if config.hidden_dims is not None:
        return config
    return replace(config, hidden_dims=default_hidden_dims(config.network))


def check_run(config: RunConfig) -> None:
    """Refuse a run whose training settings its model cannot take (M2 needs its labels and its
    own objective; the others take no labels)."""
    MODELS[config.model.kind].check_training(config.train)
