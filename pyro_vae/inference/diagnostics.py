"""How noisy is a stochastic ELBO estimator? The spread of its value and of its gradient.

Used by ``experiments/estimators.py`` to compare Trace_ELBO (Monte Carlo KL) with
TraceMeanField_ELBO (closed-form KL), and usable on any Pyro model/guide pair: each function
repeats the estimator at fixed parameters and summarises the repeats.
"""

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from pyro.infer import ELBO

from pyro_vae.inference.objectives import loss_and_backward


@dataclass(frozen=True)
class EstimateStats:
    """Repeated estimates of the ELBO (not the loss) at fixed parameters."""

    mean: float
    std: float  # of one estimate
    standard_error: float  # of the mean over the repeats
    repeats: int


@dataclass(frozen=True)
class GradientStats:
    """Repeated gradients of the ELBO with respect to one group of parameters.

    ``total_variance`` is the trace of the gradient's covariance, Σ_i Var(g_i): the expected
    squared distance of one gradient estimate from the true gradient. ``mean_snr`` is the mean
    over coordinates of |E g_i| / std g_i (Rainforth et al., 2018), over the coordinates whose
    gradient varies at all (others, such as weights on pixels that are always 0, are left out).
    """

    total_variance: float
    mean_snr: float
    coordinates: int  # those that entered mean_snr


def estimate_statistics(
    elbo: ELBO,
    model: Callable[..., Any],
    guide: Callable[..., Any],
    args: Sequence[Any],
    repeats: int,
    scale: float = 1.0,
) -> EstimateStats:
    """``repeats`` independent estimates of the ELBO × ``scale`` (1/batch: per data point)."""
    with torch.no_grad():
        values = torch.stack(
            [-elbo.differentiable_loss(model, guide, *args) * scale for _ in range(repeats)]
        )
    std = values.std().item()
    return EstimateStats(values.mean().item(), std, std / repeats**0.5, repeats)


def gradient_statistics(
    elbo: ELBO,
    model: Callable[..., Any],
    guide: Callable[..., Any],
    args: Sequence[Any],
    groups: Mapping[str, Sequence[torch.nn.Parameter]],
    repeats: int,
    scale: float = 1.0,
) -> dict[str, GradientStats]:
    """Statistics of ``repeats`` independent gradients of the ELBO × ``scale``, per group."""
    samples: dict[str, list[torch.Tensor]] = {name: [] for name in groups}
    every = [p for params in groups.values() for p in params]
    for _ in range(repeats):
        for p in every:
            p.grad = None
        loss_and_backward(elbo, model, guide, *args)
        for name, params in groups.items():
            flat = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
            samples[name].append(-scale * torch.cat([g.reshape(-1) for g in flat]))
    for p in every:
        p.grad = None
    stats = {}
    for name, rows in samples.items():
        gradients = torch.stack(rows)  # (repeats, coordinates)
        mean, std = gradients.mean(0), gradients.std(0)
        varying = std > 0
        snr = mean[varying].abs() / std[varying]
        stats[name] = GradientStats(
            total_variance=gradients.var(0).sum().item(),
            mean_snr=snr.mean().item() if snr.numel() else float("nan"),
            coordinates=int(varying.sum()),
        )
    return stats
