"""The VAE's two neural networks: the encoder NeuralNet(x; φ) and the decoder NeuralNet(z; θ)."""

import itertools
from collections.abc import Sequence

import torch
from torch import nn


def mlp(sizes: Sequence[int]) -> nn.Sequential:
    """Linear layers ``sizes[0] -> ... -> sizes[-1]``, a ReLU between each two, none at the end."""
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(itertools.pairwise(sizes)):
        if i > 0:
            layers.append(nn.ReLU())
        layers.append(nn.Linear(n_in, n_out))
    return nn.Sequential(*layers)


class Encoder(nn.Module):
    """μ, log σ² = NeuralNet(x; φ): the parameters of the guide q_φ(z|x) = N(μ, diag σ²)."""

    recordable = True  # its step is static: see recordable.py

    def __init__(self, data_dim: int, hidden_dims: Sequence[int], latent_dim: int):
        super().__init__()
        # One output layer for μ and log σ² together: a single matmul instead of two.
        self.net = mlp([data_dim, *hidden_dims, 2 * latent_dim])

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        loc, log_var = self.net(x).chunk(2, dim=-1)  # (..., latent_dim) each
        return loc, torch.exp(0.5 * log_var)  # σ = exp(½ log σ²)


class Decoder(nn.Module):
    """x̂ = NeuralNet(z; θ): the raw parameter (mean or logits) of the likelihood p_θ(x|z)."""

    recordable = True  # its step is static: see recordable.py

    def __init__(self, latent_dim: int, hidden_dims: Sequence[int], data_dim: int):
        super().__init__()
        self.net = mlp([latent_dim, *hidden_dims, data_dim])

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)  # (..., data_dim)
