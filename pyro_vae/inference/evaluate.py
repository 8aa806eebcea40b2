"""Held-out estimates: the ELBO, its KL term, importance-weighted log-likelihood, active units."""

import contextlib
import math
from collections.abc import Callable
from dataclasses import dataclass

import pyro
import torch
from pyro import poutine
from pyro.distributions.kl import kl_divergence
from pyro.poutine.util import prune_subsample_sites

from pyro_vae.data.datasets import as_float
from pyro_vae.inference.objectives import make_elbo
from pyro_vae.models.vae import VAE


@torch.no_grad()
def _mean_loss(
    model: Callable[..., torch.Tensor],
    guide: Callable[..., torch.Tensor],
    x: torch.Tensor,
    estimator: str,
    num_particles: int,
    batch_size: int,
    labels: torch.Tensor | None = None,
) -> float:
    """An ELBO loss averaged over the rows of ``x``, computed ``batch_size`` rows at a time
    (``labels``: the rows' classes, passed after them to the model and guide)."""
    elbo = make_elbo(estimator, num_particles)
    total = torch.zeros((), device=x.device)
    for start in range(0, x.shape[0], batch_size):
        chunk, classes = _rows(x, labels, start, batch_size)
        total += elbo.differentiable_loss(model, guide, chunk, *classes)  # summed over the chunk
    return (total / x.shape[0]).item()


def elbo_per_datapoint(
    vae: VAE,
    x: torch.Tensor,
    estimator: str = "analytic",
    num_particles: int = 16,
    batch_size: int = 1024,
    labels: torch.Tensor | None = None,
) -> float:
    """The ELBO of ``vae`` averaged over the rows of ``x``, in nats per data point.

    The default (closed-form KL, 16 samples of z per image) is the low-variance yardstick that
    validation uses whatever estimator trained the model; chunks of ``batch_size`` rows keep
    memory bounded on large test sets. ``labels``: the rows' classes, for the conditional VAE
    (its ELBO bounds log p(x | y)); M2's bound is ``semisupervised_bounds.bound_sums``.
    """
    _refuse_m2(vae)
    return -_mean_loss(vae.model, vae.guide, x, estimator, num_particles, batch_size, labels)


@dataclass(frozen=True)
class Estimate:
    """A Monte Carlo estimate and its standard error (None where one sample cannot give one)."""

    value: float
    standard_error: float | None


@torch.no_grad()
def elbo_sums(
    vae: VAE,
    x: torch.Tensor,
    num_particles: int,
    labels: torch.Tensor | None = None,
    max_codes: int = 2**13,
) -> torch.Tensor:
    """Over the rows of ``x`` (float, or uint8 pixel values, converted a chunk at a time, see
    ``data.as_float``): the summed ELBO (closed-form KL where Pyro has one), the summed
    variance of each row's K-sample mean, and the summed KL term (the rate), as one tensor
    ``[Σ_i ELBO_i, Σ_i Var(ELBO_i), Σ_i KL_i]``.

    Sums, so that shards of ``x`` (replicas, chunks) add up; ``elbo_estimate`` turns them into
    a mean and its standard error. The variance is the noise of sampling z, estimated from the
    spread of each row's K samples (Bessel-corrected; NaN for K = 1): the uncertainty of this
    number as a measurement of this model on these rows. The model's KL weight plays no part:
    the terms are the distributions' own densities. ``labels``: the rows' classes, for a model
    that reads them (the conditional VAE's bound is on log p(x | y)).
    """
    sums = torch.zeros(3, dtype=torch.float64, device=x.device)
    rows = max(1, max_codes // num_particles)  # at most max_codes codes decoded at once
    for start in range(0, x.shape[0], rows):
        chunk, classes = _rows(x, labels, start, rows)
        terms = _sample_terms(vae, as_float(chunk), num_particles, *classes)
        kl = terms["kl"] if "kl" in terms else terms["log_guide"] - terms["log_prior"]
        sums += particle_sums(terms["log_likelihood"] - kl, kl)
    return sums


def particle_sums(elbo: torch.Tensor, rate: torch.Tensor) -> torch.Tensor:
    """``[Σ_i ELBO_i, Σ_i Var(ELBO_i), Σ_i rate_i]`` from K samples per row, ``elbo`` (K, rows)
    and ``rate`` broadcasting against it: each row's K-sample mean, and that mean's variance
    (Bessel-corrected; NaN for K = 1), summed over the rows in float64."""
    elbo = elbo.double()
    num_particles = elbo.shape[0]
    if num_particles > 1:
        variance = elbo.var(0) / num_particles
    else:
        variance = torch.full_like(elbo[0], math.nan)
    rate = rate.double().expand_as(elbo)
    return torch.stack([elbo.mean(0).sum(), variance.sum(), rate.mean(0).sum()])


def elbo_estimate(sums: torch.Tensor, num_rows: int) -> Estimate:
    """The mean ELBO per row and its standard error from ``elbo_sums`` over ``num_rows`` rows."""
    total, variance, _ = sums.tolist()
    standard_error = math.sqrt(variance) / num_rows if math.isfinite(variance) else None
    return Estimate(total / num_rows, standard_error)


def kl_per_datapoint(
    vae: VAE,
    x: torch.Tensor,
    num_particles: int = 16,
    batch_size: int = 1024,
    labels: torch.Tensor | None = None,
) -> float:
    """KL(q_φ(z|x) ‖ p(z)) averaged over the rows of ``x`` (closed form where Pyro has it;
    ``labels``: the rows' classes, for the conditional VAE).

    Hiding the observed site leaves a model with only z ~ p(z), whose ELBO loss is the KL term.
    """
    _refuse_m2(vae)
    prior_only = poutine.block(vae.model, hide=["x"])
    return _mean_loss(prior_only, vae.guide, x, "analytic", num_particles, batch_size, labels)


def _refuse_m2(vae: VAE) -> None:
    # M2's unlabelled bound sums over the class, which these single-ELBO helpers do not.
    if vae.kind == "m2":
        raise ValueError(
            "M2's bound sums over the class: use semisupervised_bounds.bound_sums (or "
            "evaluate_m2_bounds)"
        )


@torch.no_grad()
def active_units(
    vae: VAE, x: torch.Tensor, threshold: float = 0.01, labels: torch.Tensor | None = None
) -> int:
    """Latent dimensions u with Var_x(E_q[z_u | x]) > ``threshold`` (Burda et al., 2016), the
    posterior mean E_q[z | x] taken as ``vae.encode`` gives it (for a flow guide, the flows applied
    to their Gaussian's mean).

    A dimension whose posterior mean does not move with the data carries no information about
    it: the VAE has collapsed that dimension onto the prior. ``x`` may be stored uint8 rows;
    the encoder sees a chunk at a time (a conv encoder's activations are many times the data's).
    ``labels``: the rows' classes, for a model whose encoder reads them.
    """
    codes = torch.cat(
        [
            vae.encode(as_float(chunk), *classes)
            for start in range(0, x.shape[0], 1024)
            for chunk, classes in [_rows(x, labels, start, 1024)]
        ]
    )
    return int((codes.var(dim=0) > threshold).sum())


# importance-weighted evaluation (Burda, Grosse & Salakhutdinov, ICLR 2016)


@dataclass(frozen=True)
class Bound:
    """One estimate of log p(x) per image: its mean, standard error over images, and in bits."""

    nats: float  # mean over images, nats per image
    standard_error: float  # of that mean, over images
    bits_per_dim: float  # −nats / (D ln 2): for binary data a code length, else a density

    @classmethod
    def of(cls, per_image: torch.Tensor, data_dim: int) -> "Bound":
        mean = per_image.mean().item()
        standard_error = (per_image.std() / per_image.numel() ** 0.5).item()
        return cls(mean, standard_error, -mean / (data_dim * math.log(2)))


def _rows(
    x: torch.Tensor, labels: torch.Tensor | None, start: int, count: int
) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """Rows ``start`` to ``start + count`` of ``x``, and of ``labels`` if given, as a tuple."""
    chunk = x[start : start + count]
    return chunk, () if labels is None else (labels[start : start + count],)


@torch.no_grad()
def _sample_terms(
    vae: VAE, x: torch.Tensor, num_samples: int, *labels: torch.Tensor
) -> dict[str, torch.Tensor]:
    """For each of ``num_samples`` codes z_k ~ q(z|x) per image: log p(x|z_k), log p(z_k),
    log q(z_k|x), and KL(q ‖ p) where it has a closed form; each (num_samples, batch).
    ``labels``: the images' classes, after x, for a model that reads them."""
    with pyro.plate("samples", num_samples, dim=-2):  # left of the data plate
        guide_trace = poutine.trace(vae.guide).get_trace(x, *labels)
        model_trace = poutine.trace(poutine.replay(vae.model, trace=guide_trace)).get_trace(
            x, *labels
        )
    guide_trace, model_trace = (
        prune_subsample_sites(guide_trace),
        prune_subsample_sites(model_trace),
    )
    z_p, z_q, x_p = model_trace.nodes["z"], guide_trace.nodes["z"], model_trace.nodes["x"]
    terms = {
        "log_likelihood": x_p["fn"].log_prob(x_p["value"]),
        "log_prior": z_p["fn"].log_prob(z_p["value"]),
        "log_guide": z_q["fn"].log_prob(z_q["value"]),
    }
    # Without a closed form, the analytic ELBO falls back to the sampled KL, as Pyro's does.
    with contextlib.suppress(NotImplementedError):
        terms["kl"] = kl_divergence(z_q["fn"], z_p["fn"])
    return terms


@torch.no_grad()
def evaluate_bounds(
    vae: VAE,
    x: torch.Tensor,
    num_samples: int = 1000,
    max_rows: int = 2**13,
    on_progress: Callable[[int, int], None] | None = None,
    labels: torch.Tensor | None = None,
) -> dict[str, Bound]:
    """``image_bounds`` averaged over the images, with standard errors and in bits."""
    per_image = image_bounds(vae, x, num_samples, max_rows, on_progress, labels)
    return {name: Bound.of(values, x.shape[1]) for name, values in per_image.items()}


@torch.no_grad()
def image_bounds(
    vae: VAE,
    x: torch.Tensor,
    num_samples: int = 1000,
    max_rows: int = 2**13,
    on_progress: Callable[[int, int], None] | None = None,
    labels: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Three estimates of log p(x) for each image, (N,) each, from the same samples
    z_1..z_K ~ q(z|x):

    - ``elbo_analytic_kl``: (1/K) Σ_k log p(x|z_k) − KL(q(z|x) ‖ p(z)), the KL in closed form
      where one exists (else sampled, as TraceMeanField_ELBO does);
    - ``elbo_mc_kl``: (1/K) Σ_k log w_k, with w_k = p(x, z_k) / q(z_k|x), Trace_ELBO's estimate;
    - ``iwae``: log (1/K) Σ_k w_k, a lower bound on log p(x) that tightens as K grows.

    Work is split so that no decoder call sees more than ``max_rows`` codes at once: images in
    chunks, samples in chunks, the log-sum-exp carried across sample chunks. The default was the
    fastest and the smallest of 2¹³ to 2¹⁶ for K = 1,000 on 2,000 MNIST images on 2 CPU cores.
    ``on_progress(done, total)`` is called after every chunk with the codes decoded so far.
    ``x`` may be stored uint8 rows, converted a chunk at a time (see ``data.as_float``).
    ``labels``: the images' classes, for a model that reads them (bounds on log p(x | y)).
    """
    total, done = x.shape[0] * num_samples, 0
    images_per_chunk = max(1, min(x.shape[0], max_rows // num_samples))
    samples_per_chunk = max(1, min(num_samples, max_rows // images_per_chunk))
    per_image: dict[str, list[torch.Tensor]] = {
        "elbo_analytic_kl": [],
        "elbo_mc_kl": [],
        "iwae": [],
    }
    for start in range(0, x.shape[0], images_per_chunk):
        chunk, classes = _rows(x, labels, start, images_per_chunk)
        log_sum_w = torch.full((chunk.shape[0],), -math.inf, device=x.device)
        sums = {"log_w": 0.0, "analytic": 0.0}
        for k in chunk_sizes(num_samples, samples_per_chunk):
            terms = _sample_terms(vae, as_float(chunk), k, *classes)
            log_w = terms["log_likelihood"] + terms["log_prior"] - terms["log_guide"]  # (k, B)
            log_sum_w = torch.logaddexp(log_sum_w, log_w.logsumexp(0))
            sums["log_w"] = sums["log_w"] + log_w.sum(0)
            kl = terms["kl"] if "kl" in terms else terms["log_guide"] - terms["log_prior"]
            sums["analytic"] = sums["analytic"] + (terms["log_likelihood"] - kl).sum(0)
            done += k * chunk.shape[0]
            if on_progress is not None:
                on_progress(done, total)
        per_image["iwae"].append(log_sum_w - math.log(num_samples))
        per_image["elbo_mc_kl"].append(sums["log_w"] / num_samples)
        per_image["elbo_analytic_kl"].append(sums["analytic"] / num_samples)
    return {name: torch.cat(values) for name, values in per_image.items()}


def chunk_sizes(total: int, size: int) -> list[int]:
    return [size] * (total // size) + ([total % size] if total % size else [])
