"""pyro-vae: variational autoencoders as Pyro model/guide pairs with swappable components.

The public API is this module's ``__all__`` (tests/test_architecture.py lists it, so a rename is
a deliberate act). The package is in layers, each importing only those below it: core ->
components -> data -> models -> inference -> runs -> cli (see docs/architecture.md).
"""

from pyro_vae import compat
from pyro_vae.components.guides import GUIDES, GuideFamily
from pyro_vae.components.likelihoods import (
    LIKELIHOODS,
    BernoulliLikelihood,
    GaussianLikelihood,
    Likelihood,
)
from pyro_vae.components.networks import NETWORKS
from pyro_vae.components.priors import PRIORS, Prior, StandardNormalPrior
from pyro_vae.core.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from pyro_vae.core.devices import resolve_device
from pyro_vae.core.errors import UserInputError
from pyro_vae.core.version import __version__
from pyro_vae.data.datasets import DATASETS, Dataset, load_dataset
from pyro_vae.inference.distributed import Replicas
from pyro_vae.inference.evaluate import active_units, elbo_per_datapoint, kl_per_datapoint
from pyro_vae.inference.m2_trainer import SemiSupervisedTrainer
from pyro_vae.inference.objectives import ESTIMATORS, make_elbo
from pyro_vae.inference.trainer import EpochMetrics, Trainer, TrainingDiverged
from pyro_vae.models.build import MODELS, build_model
from pyro_vae.models.cvae import ConditionalVAE
from pyro_vae.models.m2 import SemiSupervisedVAE
from pyro_vae.models.vae import VAE
from pyro_vae.runs.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from pyro_vae.runs.runner import RunHooks, RunResult, resume_run, train_run
from pyro_vae.runs.trained import TrainedModel, export_run, load_run

compat.install()  # the previous release's module paths, with a DeprecationWarning

__all__ = [
    "DATASETS",
    "ESTIMATORS",
    "GUIDES",
    "LIKELIHOODS",
    "MODELS",
    "NETWORKS",
    "PRIORS",
    "VAE",
    "BernoulliLikelihood",
    "Checkpoint",
    "ConditionalVAE",
    "DataConfig",
    "Dataset",
    "EpochMetrics",
    "GaussianLikelihood",
    "GuideFamily",
    "Likelihood",
    "ModelConfig",
    "Prior",
    "Replicas",
    "RunConfig",
    "RunHooks",
    "RunResult",
    "SemiSupervisedTrainer",
    "SemiSupervisedVAE",
    "StandardNormalPrior",
    "TrainConfig",
    "TrainedModel",
    "Trainer",
    "TrainingDiverged",
    "UserInputError",
    "__version__",
    "active_units",
    "build_model",
    "elbo_per_datapoint",
    "export_run",
    "kl_per_datapoint",
    "load_checkpoint",
    "load_dataset",
    "load_run",
    "make_elbo",
    "resolve_device",
    "resume_run",
    "save_checkpoint",
    "train_run",
]
