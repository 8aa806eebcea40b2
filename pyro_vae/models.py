"""The models ``--model`` names: the VAE, and the two that read class labels (labels.py)."""

from pyro_vae.conditional import ConditionalVAE
from pyro_vae.model import VAE
from pyro_vae.semisupervised import SemiSupervisedVAE

# name -> class; config.MODEL_KINDS lists the same names for checking a config without torch.
MODELS: dict[str, type[VAE]] = {
    VAE.kind: VAE,
    ConditionalVAE.kind: ConditionalVAE,
    SemiSupervisedVAE.kind: SemiSupervisedVAE,
}
