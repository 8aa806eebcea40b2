"""The training objectives: two estimators of the ELBO, and the importance-weighted bound.

- ``mc``: ``Trace_ELBO``. Every term, the KL included, is estimated from the sampled z:
  log p_θ(x|z) + log p(z) − log q_φ(z|x).
- ``analytic``: ``TraceMeanField_ELBO``. The expected log-likelihood is sampled, but
  KL(q_φ(z|x) ‖ p(z)) is computed in closed form wherever Pyro knows it (as for the standard normal
  prior); for a prior without a closed form, Pyro falls back to the Monte Carlo term at that site.
- ``iwae``: ``RenyiELBO(alpha=0)``, the importance-weighted bound of Burda et al. (2016),
  log (1/K) Σ_k p(x, z_k)/q(z_k|x) with K = ``num_particles``: tighter than the ELBO for K > 1.

``mc`` and ``analytic`` estimate the same ELBO and differ in variance. ``num_particles > 1``
averages (or, for ``iwae``, importance-weights) that many samples of z, vectorised over an extra
batch dimension rather than looped.
"""

from collections.abc import Callable
from typing import Any

import pyro.distributions as dist
import torch
from pyro.distributions.kl import kl_divergence
from pyro.infer import ELBO, RenyiELBO, Trace_ELBO, TraceMeanField_ELBO

from pyro_vae.errors import UserInputError

ESTIMATORS: dict[str, type[ELBO]] = {
    "mc": Trace_ELBO,
    "analytic": TraceMeanField_ELBO,
    "iwae": RenyiELBO,  # with alpha = 0
}


def make_elbo(estimator: str = "mc", num_particles: int = 1) -> ELBO:
    """The Pyro ELBO named ``estimator``, averaging over ``num_particles`` samples of z."""
    if estimator not in ESTIMATORS:
        raise UserInputError(
            f"unknown ELBO estimator {estimator!r}: choose one of {', '.join(ESTIMATORS)}"
        )
    options = {"alpha": 0.0} if estimator == "iwae" else {}
    return ESTIMATORS[estimator](
        num_particles=num_particles,
        vectorize_particles=num_particles > 1,
        max_plate_nesting=1,  # the data plate; saves Pyro a trial run to guess it
        **options,
    )


def loss_and_backward(
    elbo: ELBO, model: Callable[..., Any], guide: Callable[..., Any], *args: Any
) -> torch.Tensor:
    """−ELBO summed over the batch, as a detached tensor, its gradient added to the ``.grad``s.

    Pyro's RenyiELBO has no ``differentiable_loss``; its ``loss_and_grads`` does the same work
    (and reads the loss back to the host, once a step).
    """
    if isinstance(elbo, RenyiELBO):
        return torch.tensor(elbo.loss_and_grads(model, guide, *args))
    loss = elbo.differentiable_loss(model, guide, *args)
    loss.backward()
    return loss.detach()


def kl_method(estimator: str, prior: dist.Distribution) -> str:
    """How ``estimator`` treats KL(q_φ(z|x) ‖ p(z)) for this prior: "closed-form" or "monte-carlo".

    ``analytic`` computes the KL in closed form only where Pyro has a formula for the guide's
    diagonal Gaussian against ``prior``; elsewhere TraceMeanField_ELBO quietly samples it. Asking
    here lets a run say which one it got, so no comparison mixes them up unnoticed.
    """
    if estimator != "analytic":
        return "monte-carlo"
    guide_family = dist.Normal(torch.zeros_like(prior.mean), 1.0).to_event(1)
    try:
        kl_divergence(guide_family.expand([1]), prior.expand([1]))
    except NotImplementedError:
        return "monte-carlo"
    return "closed-form"
