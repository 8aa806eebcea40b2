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

``mc`` and ``analytic`` are Pyro's two classes with one change, in ``differentiable_loss``: the loss
stays a tensor on the device. Pyro's versions read every site's log-density back to the host
(``.item()``) and check the loss for NaN (``bool()``) at every step, which on a GPU makes each step
wait for the one before it; see ``DeviceLossMixin``. Traces, particles, validation and the
estimators' mathematics are Pyro's own.
"""

import functools
import operator
from collections.abc import Callable, Iterable
from typing import Any

import pyro.distributions as dist
import torch
from pyro.distributions.kl import kl_divergence
from pyro.distributions.util import scale_and_mask
from pyro.infer import ELBO, RenyiELBO, Trace_ELBO, TraceMeanField_ELBO
from pyro.infer.util import check_fully_reparametrized, is_identically_zero, is_validation_enabled
from pyro.poutine import Trace

from pyro_vae.errors import UserInputError


class DeviceLossMixin:
    """``differentiable_loss`` without reading anything back to the host.

    Pyro's Trace_ELBO adds each site's ``log_prob_sum.item()`` into a Python float for the loss's
    value and reads ``isnan(loss)`` for a warning: six host reads a step (four for the mean-field
    ELBO). Here the value is the same sum kept as a tensor; where every guide site is
    reparameterised (a VAE's is), the surrogate whose gradient Pyro takes *is* that sum, so the
    loss is that one tensor. Anywhere else ``_particle_loss`` falls back on Pyro's own particle
    function. A NaN loss is left to the caller (``Trainer.check_finite``).
    """

    num_particles: int

    def differentiable_loss(
        self, model: Callable[..., Any], guide: Callable[..., Any], *args: Any, **kwargs: Any
    ) -> torch.Tensor:
        traces = self._get_traces(model, guide, args, kwargs)
        loss = _total(
            self._particle_loss(model_trace, guide_trace) for model_trace, guide_trace in traces
        )
        # One pass over vectorised particles, num_particles passes otherwise: an average either way.
        return loss / self.num_particles if self.num_particles > 1 else loss

    def _particle_loss(self, model_trace: Trace, guide_trace: Trace) -> torch.Tensor:
        raise NotImplementedError

    def _pyro_particle_loss(self, model_trace: Trace, guide_trace: Trace) -> torch.Tensor:
        """Pyro's value (a float: it reads the host) with its surrogate's gradient."""
        loss, surrogate = self._differentiable_loss_particle(model_trace, guide_trace)
        return surrogate + (loss - surrogate.detach())


def _total(terms: Iterable[torch.Tensor]) -> torch.Tensor:
    # sum() would start from 0 and add it: one more operation at every step, for nothing.
    return functools.reduce(operator.add, terms)


def _sample_sites(trace: Trace) -> list[dict]:
    return [site for site in trace.nodes.values() if site["type"] == "sample"]


def _reparameterised(site: dict) -> bool:
    # Pyro's score parts of a reparameterised site: no score-function term, and an entropy term
    # that is the log-density itself (the same tensor unless a subsample scale was applied).
    parts = site["score_parts"]
    return is_identically_zero(parts.score_function) and parts.entropy_term is parts.log_prob


class DeviceTrace_ELBO(DeviceLossMixin, Trace_ELBO):
    """Trace_ELBO: −[log p(x, z) − log q(z|x)] at z ~ q, its loss kept on the device."""

    recordable = True  # its step is static: see recordable.py

    def _particle_loss(self, model_trace: Trace, guide_trace: Trace) -> torch.Tensor:
        guide_sites = _sample_sites(guide_trace)
        if not all(_reparameterised(site) for site in guide_sites):
            return self._pyro_particle_loss(model_trace, guide_trace)
        log_p = _total(site["log_prob_sum"] for site in _sample_sites(model_trace))
        log_q = _total(site["log_prob_sum"] for site in guide_sites)
        return log_q - log_p


class DeviceTraceMeanField_ELBO(DeviceLossMixin, TraceMeanField_ELBO):
    """TraceMeanField_ELBO: −[log p(x|z) − KL(q(z|x) ‖ p(z))], the KL in closed form where Pyro
    knows it (else sampled, as Pyro does), its loss kept on the device."""

    recordable = True  # its step is static: see recordable.py

    def _particle_loss(self, model_trace: Trace, guide_trace: Trace) -> torch.Tensor:
        auxiliary = [site for site in _sample_sites(guide_trace) if site["name"] not in model_trace]
        if auxiliary:  # guide-only sample sites: rare, and left to Pyro's own bookkeeping
            return self._pyro_particle_loss(model_trace, guide_trace)
        elbo_terms = []
        for site in _sample_sites(model_trace):
            if site["is_observed"]:
                elbo_terms.append(site["log_prob_sum"])
                continue
            guide_site = guide_trace.nodes[site["name"]]
            if is_validation_enabled():
                check_fully_reparametrized(guide_site)
            try:
                kl = kl_divergence(guide_site["fn"], site["fn"])
            except NotImplementedError:  # no formula: log p(z) − log q(z|x) at the sampled z
                entropy_term = guide_site["score_parts"].entropy_term
                elbo_terms.append(site["log_prob_sum"] - entropy_term.sum())
                continue
            kl = scale_and_mask(kl, scale=guide_site["scale"], mask=guide_site["mask"])
            elbo_terms.append(-kl.sum())
        return -_total(elbo_terms)


ESTIMATORS: dict[str, type[ELBO]] = {
    "mc": DeviceTrace_ELBO,
    "analytic": DeviceTraceMeanField_ELBO,
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
