"""pyro-vae: variational autoencoders as Pyro model/guide pairs with swappable components."""

__version__ = "0.1.0"

from pyro_vae.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from pyro_vae.conditional import ConditionalVAE
from pyro_vae.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from pyro_vae.data import DATASETS, Dataset, load_dataset
from pyro_vae.devices import resolve_device
from pyro_vae.distributed import Replicas
from pyro_vae.errors import UserInputError
from pyro_vae.evaluate import active_units, elbo_per_datapoint, kl_per_datapoint
from pyro_vae.guides import GUIDES, GuideFamily
from pyro_vae.likelihoods import LIKELIHOODS, BernoulliLikelihood, GaussianLikelihood, Likelihood
from pyro_vae.model import VAE
from pyro_vae.models import MODELS
from pyro_vae.networks import NETWORKS
from pyro_vae.objectives import ESTIMATORS, make_elbo
from pyro_vae.priors import PRIORS, Prior, StandardNormalPrior
from pyro_vae.runs import RunHooks, RunResult, resume_run, train_run
from pyro_vae.semisupervised import SemiSupervisedTrainer, SemiSupervisedVAE
from pyro_vae.train import EpochMetrics, Trainer, TrainingDiverged
from pyro_vae.trained import TrainedModel, export_run, load_run

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
    "active_units",
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
