"""The training objectives: three estimators of the ELBO, and the importance-weighted bound.

- ``mc``: ``Trace_ELBO``. Every term, the KL included, is estimated from the sampled z:
  log p_θ(x|z) + log p(z) − log q_φ(z|x).
- ``analytic``: ``TraceMeanField_ELBO``. The expected log-likelihood is sampled, but
  KL(q_φ(z|x) ‖ p(z)) is computed in closed form wherever Pyro knows it (as for the standard normal
  prior); for a prior without a closed form, Pyro falls back to the Monte Carlo term at that site.
- ``stl``: "sticking the landing" (Roeder, Wu & Duvenaud, 2017): ``mc``'s value, and the path
  derivative as its gradient. log q_φ(z|x) is evaluated with the guide's parameters detached, so
  the gradient flows only through z = z_φ(ε): ``mc``'s score term E_q[∇_φ log q_φ(z)] (zero in
  expectation, not in any one sample) is dropped. Where q equals the true posterior, the
  path-derivative gradient is zero for every sample, while ``mc``'s still has the score's noise.
- ``iwae``: ``RenyiELBO(alpha=0)``, the importance-weighted bound of Burda et al. (2016),
  log (1/K) Σ_k p(x, z_k)/q(z_k|x) with K = ``num_particles``: tighter than the ELBO for K > 1
  (``DeviceRenyiELBO``: Pyro's value and gradient as one differentiable tensor).

``mc``, ``analytic`` and ``stl`` estimate the same ELBO, with gradients of different variance.
``num_particles > 1`` averages (or, for ``iwae``, importance-weights) that many samples of z,
vectorised over an extra batch dimension rather than looped.

``mc`` and ``analytic`` are Pyro's two classes with one change, in ``differentiable_loss``: the loss
stays a tensor on the device. Pyro's versions read every site's log-density back to the host
(``.item()``) and check the loss for NaN (``bool()``) at every step, which on a GPU makes each step
wait for the one before it; see ``DeviceLossMixin``. Traces, particles, validation and the
estimators' mathematics are Pyro's own.
"""

import functools
import math
import operator
import warnings
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.distributions.kl import kl_divergence
from pyro.distributions.util import scale_and_mask
from pyro.infer import ELBO, RenyiELBO, Trace_ELBO, TraceMeanField_ELBO
from pyro.infer.util import (
    check_fully_reparametrized,
    get_dependent_plate_dims,
    is_identically_zero,
    is_validation_enabled,
    torch_sum,
)
from pyro.poutine import Trace
from torch import nn
from torch.func import functional_call

from pyro_vae.core.errors import UserInputError


class DeviceLossMixin:
    """``differentiable_loss`` without reading anything back to the host, and beside it −ELBO.

    Pyro's Trace_ELBO adds each site's ``log_prob_sum.item()`` into a Python float for the loss's
    value and reads ``isnan(loss)`` for a warning: six host reads a step (four for the mean-field
    ELBO). Here the value is the same sum kept as a tensor; where every guide site is
    reparameterised (a VAE's is), the surrogate whose gradient Pyro takes *is* that sum, so the
    loss is that one tensor. Anywhere else ``_particle_losses`` falls back on Pyro's own particle
    function. A NaN loss is left to the caller (``Trainer.check_finite``).

    ``losses`` returns the loss to train on and −ELBO itself: the same number unless the KL term
    is weighted (``poutine.scale`` on the latent site, which is how ``VAE.kl_weight`` works) or
    floored (free bits). −ELBO counts every latent site unscaled: a VAE's data plate does not
    subsample, so a latent site's only scale is the KL weight.
    """

    num_particles: int

    def differentiable_loss(
        self, model: Callable[..., Any], guide: Callable[..., Any], *args: Any, **kwargs: Any
    ) -> torch.Tensor:
        return self.losses(model, guide, *args, **kwargs)[0]

    def losses(
        self, model: Callable[..., Any], guide: Callable[..., Any], *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(the training loss, −ELBO), each summed over the data and averaged over particles."""
        traces = self._get_traces(model, guide, args, kwargs)
        pairs = [
            self._particle_losses(model_trace, guide_trace) for model_trace, guide_trace in traces
        ]
        loss, negative_elbo = _total(p[0] for p in pairs), _total(p[1] for p in pairs)
        # One pass over vectorised particles, num_particles passes otherwise: an average either way.
        if self.num_particles > 1:
            loss, negative_elbo = loss / self.num_particles, negative_elbo / self.num_particles
        return loss, negative_elbo

    def loss_and_grads(
        self, model: Callable[..., Any], guide: Callable[..., Any], *args: Any, **kwargs: Any
    ) -> float:
        """Pyro's ``SVI`` entry point: the same loss, its gradient added to the ``.grad``s."""
        loss = self.differentiable_loss(model, guide, *args, **kwargs)
        if loss.requires_grad:
            loss.backward()
        return loss.item()

    def _particle_losses(
        self, model_trace: Trace, guide_trace: Trace
    ) -> tuple[torch.Tensor, torch.Tensor]:
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
    # Pyro's score parts of a reparameterised site (TorchDistributionMixin.score_parts): no
    # score-function term, and an entropy term that is the log-density itself: the same value,
    # though a scale (the KL weight) makes it another tensor. A partly reparameterised sampler
    # (a Rejector) has a score-function term.
    parts = site["score_parts"]
    return is_identically_zero(parts.score_function) and getattr(site["fn"], "has_rsample", False)


def _unweighted(site: dict) -> torch.Tensor:
    """log p at a latent site, summed, before the KL weight scaled it."""
    return site["unscaled_log_prob"].sum()


class DeviceTrace_ELBO(DeviceLossMixin, Trace_ELBO):
    """Trace_ELBO: −[log p(x, z) − log q(z|x)] at z ~ q, its loss kept on the device."""

    recordable = True  # its step is static: see inference/fast/contract.py

    def _particle_losses(
        self, model_trace: Trace, guide_trace: Trace
    ) -> tuple[torch.Tensor, torch.Tensor]:
        guide_sites = _sample_sites(guide_trace)
        if not all(_reparameterised(site) for site in guide_sites):
            loss = self._pyro_particle_loss(model_trace, guide_trace)
            return loss, loss
        model_sites = _sample_sites(model_trace)
        log_p = _total(site["log_prob_sum"] for site in model_sites)
        log_q = _total(site["log_prob_sum"] for site in guide_sites)
        observed = [site["log_prob_sum"] for site in model_sites if site["is_observed"]]
        latent_p = [_unweighted(site) for site in model_sites if not site["is_observed"]]
        elbo = _total([*observed, *latent_p]) - _total(_unweighted(site) for site in guide_sites)
        return log_q - log_p, -elbo


class DeviceTraceMeanField_ELBO(DeviceLossMixin, TraceMeanField_ELBO):
    """TraceMeanField_ELBO: −[log p(x|z) − KL(q(z|x) ‖ p(z))], the KL in closed form where Pyro
    knows it (else sampled, as Pyro does), its loss kept on the device.

    With ``free_bits`` λ > 0 (Kingma et al., 2016), the training loss counts the KL of each
    latent dimension, averaged over the batch, as at least λ nats: Σ_d max(λ, mean_b KL_bd) per
    image. Only where the KL is a sum over dimensions in closed form (``per_dimension_kl``).
    """

    recordable = True  # its step is static: see inference/fast/contract.py

    def __init__(self, *args: Any, free_bits: float = 0.0, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.free_bits = free_bits

    def _particle_losses(
        self, model_trace: Trace, guide_trace: Trace
    ) -> tuple[torch.Tensor, torch.Tensor]:
        auxiliary = [site for site in _sample_sites(guide_trace) if site["name"] not in model_trace]
        if auxiliary:  # guide-only sample sites: rare, and left to Pyro's own bookkeeping
            loss = self._pyro_particle_loss(model_trace, guide_trace)
            return loss, loss
        objective, elbo = [], []
        for site in _sample_sites(model_trace):
            if site["is_observed"]:
                objective.append(site["log_prob_sum"])
                elbo.append(site["log_prob_sum"])
                continue
            guide_site = guide_trace.nodes[site["name"]]
            if is_validation_enabled():
                check_fully_reparametrized(guide_site)
            try:
                kl = kl_divergence(guide_site["fn"], site["fn"])
            except NotImplementedError:  # no formula: log p(z) − log q(z|x) at the sampled z
                entropy_term = guide_site["score_parts"].entropy_term
                objective.append(site["log_prob_sum"] - entropy_term.sum())
                elbo.append(_unweighted(site) - _unweighted(guide_site))
                continue
            elbo.append(-kl.sum())
            if self.free_bits > 0:
                objective.append(-self._floored_kl(guide_site, site["fn"]))
            else:
                kl = scale_and_mask(kl, scale=guide_site["scale"], mask=guide_site["mask"])
                objective.append(-kl.sum())
        return -_total(objective), -_total(elbo)

    def _floored_kl(self, guide_site: dict, prior: dist.Distribution) -> torch.Tensor:
        """The KL term with free bits: each dimension's batch average at least ``free_bits``."""
        per_dimension = per_dimension_kl(guide_site["fn"], prior)  # (..., batch, latent_dim)
        rows = per_dimension.reshape(-1, per_dimension.shape[-1])
        floored = rows.mean(0).clamp(min=self.free_bits).sum() * rows.shape[0]
        return guide_site["scale"] * floored


def per_dimension_kl(guide: dist.Distribution, prior: dist.Distribution) -> torch.Tensor:
    """KL(q ‖ p) for each latent dimension, where both are independent over the last dimension
    and Pyro has a closed form for each; NotImplementedError elsewhere (a mixture, a flow)."""
    if not (isinstance(guide, dist.Independent) and isinstance(prior, dist.Independent)):
        raise NotImplementedError("the KL is not a sum over latent dimensions")
    if guide.reinterpreted_batch_ndims != 1 or prior.reinterpreted_batch_ndims != 1:
        raise NotImplementedError("the KL is not a sum over latent dimensions")
    return kl_divergence(guide.base_dist, prior.base_dist)


class StickingTheLanding_ELBO(DeviceTrace_ELBO):
    """Trace_ELBO's value, −[log p(x, z) − log q(z|x)] at z ~ q, with the path-derivative gradient
    of Roeder, Wu & Duvenaud (2017): log q is evaluated with the guide's parameters detached.

    The guide is run once as usual (z keeps its path to φ: z = μ + σ ⊙ ε, or the flows applied to
    it), then once more on the same z with every parameter of the module it is a method of
    (``vae.guide``'s VAE: the encoder and the guide family) detached, through ``functional_call``.
    The second run's q is the same distribution with no path to φ; its log-density at z carries
    the gradient through z only. It costs a second encoder pass (without gradients for the
    encoder's weights); a flow computes its log-density by inverting itself (Pyro's cached
    inverse belongs to the first run), one pass of its network per latent dimension and flow,
    differentiated with respect to z.
    """

    recordable = True  # its step is static: see inference/fast/contract.py

    def _get_traces(
        self, model: Callable[..., Any], guide: Callable[..., Any], args: Any, kwargs: Any
    ) -> Iterator[tuple[Trace, Trace]]:
        owner = getattr(guide, "__self__", None)
        if not isinstance(owner, nn.Module):
            raise TypeError(
                "the stl estimator detaches the guide's parameters, so the guide must be a method "
                "of the torch module that holds them (vae.guide), got "
                f"{getattr(guide, '__qualname__', guide)!r}"
            )
        detached = {f"owner.{name}": p.detach() for name, p in owner.named_parameters()}
        for model_trace, guide_trace in super()._get_traces(model, guide, args, kwargs):
            # The guide as the traces ran it: inside the particles' plate where they are
            # vectorised (made here, once Pyro has settled max_plate_nesting).
            as_run = self._vectorized_num_particles(guide) if self.vectorize_particles else guide
            latent = {site["name"]: site["value"] for site in _sample_sites(guide_trace)}
            log_q = functional_call(
                _DetachedDensity(owner, as_run), detached, (latent, args, kwargs)
            )
            for name, value in log_q.items():
                guide_trace.nodes[name]["detached_log_prob_sum"] = value
            yield model_trace, guide_trace

    def _particle_losses(
        self, model_trace: Trace, guide_trace: Trace
    ) -> tuple[torch.Tensor, torch.Tensor]:
        loss, negative_elbo = super()._particle_losses(model_trace, guide_trace)
        guide_sites = _sample_sites(guide_trace)
        if not all(_reparameterised(site) for site in guide_sites):
            return loss, negative_elbo  # Pyro's own surrogate: no path derivative to take
        # mc's loss log q − log p with log q̄(z) for log q(z): the same value, another gradient.
        log_p = _total(site["log_prob_sum"] for site in _sample_sites(model_trace))
        log_q = _total(site["detached_log_prob_sum"] for site in guide_sites)
        return log_q - log_p, negative_elbo


class DeviceRenyiELBO(DeviceLossMixin, RenyiELBO):
    """RenyiELBO, −Σ_x 1/(1−α) log (1/K) Σ_k w_k^(1−α) with w_k = p(x, z_k)/q(z_k|x), z_k ~ q:
    for α = 0 the importance-weighted bound of Burda et al. (2016). Its loss is one tensor on the
    device, differentiable, where Pyro's class has only ``loss_and_grads`` (its value read to the
    host, its gradient from a surrogate): so its step can be recorded like the ELBOs'.

    The gradient is the same: where every guide site is reparameterised (a VAE's is), Pyro's
    surrogate Σ_k softmax_k((1−α) log w) · log w_k has the gradient of the bound itself, which
    autograd takes here through the log-sum-exp. A guide site with a score-function term (a
    discrete latent) is refused: Pyro's class raises for a partly reparameterised one and, for
    one not reparameterised at all, drops the score term at α = 0, a biased gradient. The bound
    is the loss and the reported value alike, so a KL weight, which would change one and not the
    other, is refused with it (``TrainConfig`` and ``Trainer``).
    """

    recordable = True  # its step is static: see inference/fast/contract.py

    def losses(
        self, model: Callable[..., Any], guide: Callable[..., Any], *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(−bound, −bound), summed over the data."""
        log_weights = []
        for model_trace, guide_trace in self._get_traces(model, guide, args, kwargs):
            guide_sites = _sample_sites(guide_trace)
            if not all(_reparameterised(site) for site in guide_sites):
                raise NotImplementedError(
                    "the importance-weighted bound needs every guide site reparameterised"
                )
            # Sum over everything but the particles' and the data's plates, as Pyro's class does.
            plates = get_dependent_plate_dims(model_trace.nodes.values())
            log_p = _total(torch_sum(s["log_prob"], plates) for s in _sample_sites(model_trace))
            log_q = _total(torch_sum(s["log_prob"], plates) for s in guide_sites)
            log_weights.append(log_p - log_q)
        # vectorised: one trace whose first dimension is the particles; else one per particle
        vectorised = self.vectorize_particles and self.num_particles > 1
        log_w = (1.0 - self.alpha) * (log_weights[0] if vectorised else torch.stack(log_weights))
        bound = (log_w.logsumexp(0) - math.log(self.num_particles)).sum() / (1.0 - self.alpha)
        return -bound, -bound


class _DetachedDensity(nn.Module):
    """log q(z|x) at given latent values, summed (scaled as the guide scales them), from the guide
    run on those values: a module, so that ``functional_call`` can swap detached tensors in for
    the parameters of ``owner``, the module the guide reads them from. The densities are computed
    here, inside the swap: a flow's transforms read their network's weights only when used."""

    def __init__(self, owner: nn.Module, guide: Callable[..., Any]):
        super().__init__()
        self.owner, self.guide = owner, guide

    def forward(
        self, values: dict[str, torch.Tensor], args: Any, kwargs: Any
    ) -> dict[str, torch.Tensor]:
        with warnings.catch_warnings():
            # vae.guide offers its modules' weights to Pyro's param store, which declines the
            # detached ones with a warning a step: declining them is what is wanted here
            warnings.filterwarnings("ignore", "(?s).*not registered in the param store")
            conditioned = poutine.condition(self.guide, data=values)
            trace = poutine.trace(conditioned).get_trace(*args, **kwargs)
        log_q = {}
        for name in values:
            site = trace.nodes[name]
            log_prob = site["fn"].log_prob(site["value"])  # the first run's z: no cache to use
            log_q[name] = scale_and_mask(log_prob, site["scale"], site["mask"]).sum()
        return log_q


ESTIMATORS: dict[str, type[ELBO]] = {
    "mc": DeviceTrace_ELBO,
    "analytic": DeviceTraceMeanField_ELBO,
    "iwae": DeviceRenyiELBO,  # with alpha = 0
    "stl": StickingTheLanding_ELBO,
}


def make_elbo(estimator: str = "mc", num_particles: int = 1, free_bits: float = 0.0) -> ELBO:
    """The Pyro ELBO named ``estimator``, averaging over ``num_particles`` samples of z; with
    ``free_bits`` > 0 (``analytic`` only), the KL of each latent dimension floored at it."""
    if estimator not in ESTIMATORS:
        raise UserInputError(
            f"unknown ELBO estimator {estimator!r}: choose one of {', '.join(ESTIMATORS)}"
        )
    options: dict[str, Any] = {"alpha": 0.0} if estimator == "iwae" else {}
    if free_bits:
        if estimator != "analytic":
            raise UserInputError(
                "free bits floor the KL of each latent dimension, which only the closed-form KL "
                "gives: use `elbo` analytic with `free_bits`"
            )
        options["free_bits"] = free_bits
    return ESTIMATORS[estimator](
        num_particles=num_particles,
        vectorize_particles=num_particles > 1,
        max_plate_nesting=1,  # the data plate; saves Pyro a trial run to guess it
        **options,
    )


def loss_and_backward(
    elbo: ELBO, model: Callable[..., Any], guide: Callable[..., Any], *args: Any
) -> tuple[torch.Tensor, torch.Tensor]:
    """The training loss and −ELBO, summed over the batch, as detached tensors; the loss's
    gradient added to the ``.grad``s.

    Pyro's own RenyiELBO has no ``differentiable_loss``; its ``loss_and_grads`` does the same work
    (and reads the loss back to the host, once a step). For another ELBO without ``losses`` (one
    of Pyro's own), the loss is taken for −ELBO.
    """
    if isinstance(elbo, DeviceLossMixin):
        loss, negative_elbo = elbo.losses(model, guide, *args)
    elif isinstance(elbo, RenyiELBO):
        loss = torch.tensor(elbo.loss_and_grads(model, guide, *args))
        return loss, loss
    else:
        loss = negative_elbo = elbo.differentiable_loss(model, guide, *args)
    loss.backward()
    return loss.detach(), negative_elbo.detach()


def kl_method(
    estimator: str, prior: dist.Distribution, posterior: dist.Distribution | None = None
) -> str:
    """How ``estimator`` treats KL(q_φ(z|x) ‖ p(z)) for this prior and guide: "closed-form" or
    "monte-carlo".

    ``analytic`` computes the KL in closed form only where Pyro (or components/guides.py) has a
    formula for the guide's family against ``prior``; elsewhere TraceMeanField_ELBO quietly samples
    it. Asking here lets a run say which one it got, so no comparison mixes them up unnoticed.
    ``posterior`` is any q(z|x) of the guide's family (``vae.posterior(x)``); None stands for the
    diagonal Gaussian.
    """
    if estimator != "analytic":
        return "monte-carlo"
    if posterior is None:
        posterior = dist.Normal(torch.zeros_like(prior.mean), 1.0).to_event(1).expand([1])
    try:
        kl_divergence(posterior, prior.expand(posterior.batch_shape))
    except NotImplementedError:
        return "monte-carlo"
    return "closed-form"
