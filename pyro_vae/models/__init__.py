"""Layer 3, the Pyro models and guides: the VAE, the conditional VAE and M2, and ``build_model``,
which makes one from a ``ModelConfig``. What a model can do is declared on its class.

``pyro_vae.models`` was a module in release 0.1.0 (``MODELS``); it is re-exported here.
"""

from typing import Any

from pyro_vae.models.build import MODELS, build_model

__all__ = ["MODELS", "build_model"]


def __getattr__(name: str) -> Any:
    # What the 0.1.0 module pyro_vae.models offered beyond these names, with a DeprecationWarning.
    from pyro_vae.compat import package_getattr

    return package_getattr("models", name)
