"""Layer 3, the Pyro models and guides: the VAE, the conditional VAE and M2, and ``build_model``,
which makes one from a ``ModelConfig``. What a model can do is declared on its class.

``pyro_vae.models`` was a module in release 0.1.0 (``MODELS``); it is re-exported here.
"""

from pyro_vae.models.build import MODELS, build_model

__all__ = ["MODELS", "build_model"]
