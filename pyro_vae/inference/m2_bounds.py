"""M2's held-out numbers (models/m2.py): its bound on log p(x) with the class summed out,
written as one tensor computation over the K classes, and its classifier's error.

Training sums over y with Pyro's ``TraceEnum_ELBO``; here the same sum is written out so that
each image gets its own value (for standard errors), the KL of z takes its closed form where one
exists, and the importance-weighted bound can use the same samples. A test checks the written-out
sum against ``TraceEnum_ELBO`` on the same z.
"""

import contextlib
import math
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from pyro.distributions.kl import kl_divergence

from pyro_vae.data.datasets import Split, as_float
from pyro_vae.data.labels import one_hot
from pyro_vae.inference.evaluate import Bound, chunk_sizes, particle_sums

if TYPE_CHECKING:  # the model's module imports this one, for its trainer's validation
    from pyro_vae.models.m2 import SemiSupervisedVAE


def bound_terms(
    vae: "SemiSupervisedVAE", x: torch.Tensor, num_particles: int, analytic: bool = True
) -> dict[str, torch.Tensor]:
    """U(x) written out, the K classes as one tensor dimension, for ``num_particles`` samples of
    z per class and image:

    - ``elbo`` (S, N): Σ_y q(y|x) [log p(x|y,z_y) − KL_y] − KL(q(y|x) ‖ π), which is
      Σ_y q(y|x) [log p(x|y,z_y) + log π_y − KL_y] + H(q(y|x)), with KL_y the closed-form
      KL(q(z|x,y) ‖ p(z)) where one exists and ``analytic``, else log q(z_y|x,y) − log p(z_y);
    - ``rate`` (S, N): Σ_y q(y|x) KL_y + KL(q(y|x) ‖ π), the bound's KL terms;
    - ``log_w`` (S, K, N): log p(x | y, z_y) + log p(z_y) − log q(z_y | x, y), the importance
      weights of each class's samples (for the IWAE bound).
    """
    k = vae.num_classes
    log_q_y = vae.class_posterior(x).logits.transpose(0, 1)  # (K, N), normalised
    classes = torch.arange(k, device=x.device).reshape(k, 1)  # (K, 1), as enumeration has it
    q_z = vae.posterior(x, classes)  # batch (K, N)
    z = q_z.rsample((num_particles,))  # (S, K, N, L)
    log_likelihood = vae.likelihood(vae.decoder(z, one_hot(classes, k))).log_prob(x)  # (S, K, N)
    prior = vae.prior()
    sampled_kl = q_z.log_prob(z) - prior.log_prob(z)  # (S, K, N)
    kl_z = sampled_kl
    if analytic:  # where Pyro has the closed form; else sampled, as TraceMeanField_ELBO does
        with contextlib.suppress(NotImplementedError):
            kl_z = kl_divergence(q_z, prior.expand(q_z.batch_shape))  # (K, N)
    weights = log_q_y.exp()
    kl_y = (weights * (log_q_y - vae.class_probs.log().reshape(k, 1))).sum(0)  # (N,)
    elbo = (weights * (log_likelihood - kl_z)).sum(-2) - kl_y
    rate = (weights * kl_z).sum(-2) + kl_y
    return {"elbo": elbo, "rate": rate.expand_as(elbo), "log_w": log_likelihood - sampled_kl}


@torch.no_grad()
def bound_sums(
    vae: "SemiSupervisedVAE", x: torch.Tensor, num_particles: int, max_codes: int = 2**13
) -> torch.Tensor:
    """``evaluate.elbo_sums`` for M2: [Σ_i U_i, Σ_i Var(U_i), Σ_i rate_i] over the rows of
    ``x`` (stored rows, converted a chunk at a time), at most ``max_codes`` decoded at once."""
    sums = torch.zeros(3, dtype=torch.float64, device=x.device)
    rows = max(1, max_codes // (num_particles * vae.num_classes))
    for chunk in x.split(rows):
        terms = bound_terms(vae, as_float(chunk), num_particles)
        sums += particle_sums(terms["elbo"], terms["rate"])
    return sums


@torch.no_grad()
def classification_error(vae: "SemiSupervisedVAE", split: Split, chunk: int = 4096) -> float:
    """The share of ``split``'s images whose most probable class under q(y|x) is not their label."""
    wrong = sum(
        int((vae.classify(as_float(x)) != y).sum())
        for x, y in zip(split.stored.split(chunk), split.labels.split(chunk), strict=True)
    )
    return wrong / max(1, len(split))


@torch.no_grad()
def evaluate_m2_bounds(
    vae: "SemiSupervisedVAE",
    x: torch.Tensor,
    num_samples: int = 1000,
    max_rows: int = 2**13,
    on_progress: Callable[[int, int], None] | None = None,
) -> dict[str, Bound]:
    """``m2_image_bounds`` averaged over the images, with standard errors and in bits."""
    per_image = m2_image_bounds(vae, x, num_samples, max_rows, on_progress)
    return {name: Bound.of(values, x.shape[1]) for name, values in per_image.items()}


@torch.no_grad()
def m2_image_bounds(
    vae: "SemiSupervisedVAE",
    x: torch.Tensor,
    num_samples: int = 1000,
    max_rows: int = 2**13,
    on_progress: Callable[[int, int], None] | None = None,
) -> dict[str, torch.Tensor]:
    """M2's two estimates of log p(x) for each image, (N,) each, from the same ``num_samples``
    samples of z per class and image (K·num_samples decodes per image), the class summed out
    exactly in both:

    - ``elbo_analytic_kl``: U(x) (``bound_terms``);
    - ``iwae``: log Σ_y π_y (1/S) Σ_s p(x | y, z_ys) p(z_ys) / q(z_ys | x, y): for each class an
      unbiased estimate of p(x | y), so a lower bound on log p(x) (Jensen) that tightens as S
      grows, with no importance sampling of y.

    Chunked as ``evaluate.evaluate_bounds`` is: at most ``max_rows`` codes decoded at once.
    """
    k = vae.num_classes
    total, done = x.shape[0] * num_samples * k, 0
    images = max(1, min(x.shape[0], max_rows // (num_samples * k)))
    samples = max(1, min(num_samples, max_rows // (images * k)))
    log_pi = vae.class_probs.log().reshape(k, 1)
    per_image: dict[str, list[torch.Tensor]] = {"elbo_analytic_kl": [], "iwae": []}
    for chunk in x.split(images):
        chunk = as_float(chunk)
        log_sum_w = torch.full((k, chunk.shape[0]), -math.inf, device=x.device)
        elbo = torch.zeros(chunk.shape[0], device=x.device)
        for count in chunk_sizes(num_samples, samples):
            terms = bound_terms(vae, chunk, count)
            elbo = elbo + terms["elbo"].sum(0)
            log_sum_w = torch.logaddexp(log_sum_w, terms["log_w"].logsumexp(0))
            done += count * k * chunk.shape[0]
            if on_progress is not None:
                on_progress(done, total)
        per_image["iwae"].append((log_pi + log_sum_w - math.log(num_samples)).logsumexp(0))
        per_image["elbo_analytic_kl"].append(elbo / num_samples)
    return {name: torch.cat(values) for name, values in per_image.items()}
