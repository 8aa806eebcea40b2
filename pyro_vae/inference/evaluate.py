"""Held-out estimates: the ELBO, its KL term, importance-weighted log-likelihood, active units."""

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from pyro import poutine

from pyro_vae.data.datasets import Split, as_float
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
    (its ELBO bounds log p(x | y)); M2's bound is ``evaluate_bounds``'.
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
    that reads them (the conditional VAE's bound is on log p(x | y); M2's sums its class out).
    """
    sums = torch.zeros(3, dtype=torch.float64, device=x.device)
    # at most max_codes codes decoded at once (M2 decodes each for every class)
    rows = max(1, max_codes // (num_particles * vae.bound_groups))
    for start in range(0, x.shape[0], rows):
        chunk, classes = _rows(x, labels, start, rows)
        terms = vae.held_out_terms(as_float(chunk), num_particles, *classes)
        sums += particle_sums(terms.elbos["elbo_analytic_kl"], terms.rate)
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
    # A semi-supervised model's bound sums over the class, which these single-ELBO helpers do not.
    if vae.semi_supervised:
        raise ValueError(
            f"a {vae.kind!r} model's bound sums over the class: use evaluate_bounds, or its "
            "trainer's validation"
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
    """Estimates of log p(x) for each image, (N,) each, from the same samples of z, as the
    model's ``held_out_terms`` gives them:

    - ``elbo_analytic_kl``: the ELBO with its KL in closed form where one exists (else sampled,
      as TraceMeanField_ELBO does);
    - ``elbo_mc_kl`` (models with one group of samples): Trace_ELBO's estimate, (1/S) Σ_s log w_s;
    - ``iwae``: log Σ_g p(g) (1/S) Σ_s w_gs, a lower bound on log p(x) that tightens as S
      grows (one group for the VAE: log (1/S) Σ_s w_s; M2's groups are its classes).

    Work is split so that no decoder call sees more than ``max_rows`` codes at once: images in
    chunks, samples in chunks, the log-sum-exp carried across sample chunks. The default was the
    fastest and the smallest of 2¹³ to 2¹⁶ for S = 1,000 on 2,000 MNIST images on 2 CPU cores.
    ``on_progress(done, total)`` is called after every chunk with the codes decoded so far.
    ``x`` may be stored uint8 rows, converted a chunk at a time (see ``data.as_float``).
    ``labels``: the images' classes, for a model that reads them (bounds on log p(x | y)).
    """
    groups = vae.bound_groups
    total, done = x.shape[0] * num_samples * groups, 0
    images_per_chunk = max(1, min(x.shape[0], max_rows // (num_samples * groups)))
    samples_per_chunk = max(1, min(num_samples, max_rows // (images_per_chunk * groups)))
    per_image: dict[str, list[torch.Tensor]] = {}
    for start in range(0, x.shape[0], images_per_chunk):
        chunk, classes = _rows(x, labels, start, images_per_chunk)
        log_sum_w = torch.full((groups, chunk.shape[0]), -math.inf, device=x.device)
        sums: dict[str, torch.Tensor] = {}
        for k in chunk_sizes(num_samples, samples_per_chunk):
            terms = vae.held_out_terms(as_float(chunk), k, *classes)
            log_sum_w = torch.logaddexp(log_sum_w, terms.log_w.logsumexp(0))  # (G, B)
            for name, values in terms.elbos.items():
                sums[name] = sums[name] + values.sum(0) if name in sums else values.sum(0)
            done += k * groups * chunk.shape[0]
            if on_progress is not None:
                on_progress(done, total)
        for name, values in sums.items():
            per_image.setdefault(name, []).append(values / num_samples)
        log_mean_w = terms.log_group_weights + log_sum_w - math.log(num_samples)
        per_image.setdefault("iwae", []).append(log_mean_w.logsumexp(0))  # the ELBOs, then this
    return {name: torch.cat(values) for name, values in per_image.items()}


@torch.no_grad()
def classification_error(vae: VAE, split: Split, chunk: int = 4096) -> float:
    """The share of ``split``'s images whose most probable class under a classifying model's
    q(y|x) is not their label."""
    if not vae.classifies:
        raise ValueError(f"a {vae.kind!r} model has no classifier q(y|x)")
    wrong = sum(
        int((vae.classify(as_float(x)) != y).sum())
        for x, y in zip(split.stored.split(chunk), split.labels.split(chunk), strict=True)
    )
    return wrong / max(1, len(split))


def chunk_sizes(total: int, size: int) -> list[int]:
    return [size] * (total // size) + ([total % size] if total % size else [])
