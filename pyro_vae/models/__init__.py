"""Layer 3, the Pyro models and guides: the VAE, the conditional VAE and M2, and ``build_model``,
which makes one from a ``ModelConfig``. What a model can do is declared on its class."""
