"""Semi-supervised learning with the M2 model (Kingma, Rezende, Mohamed and Welling, 2014).

Generative model:  y ~ Cat(π),  z ~ p(z),  x ~ p_θ(x | y, z)        (``SemiSupervisedVAE.model``)
Guide:             y ~ q_φ(y | x) (a classifier),  z ~ q_φ(z | x, y)  (``SemiSupervisedVAE.guide``)

π is uniform. For a labelled image y is observed and the ELBO bounds log p(x, y):
    L(x, y) = E_q(z|x,y)[log p(x | y, z) + log p(y) + log p(z) − log q(z | x, y)].
For an unlabelled one y is a latent variable that the guide's site marks for enumeration, so
Pyro's ``TraceEnum_ELBO`` sums over its K values exactly, weighted by q(y | x):
    U(x) = Σ_y q(y | x) L(x, y) + H(q(y | x))  ≤  log p(x),
one batched pass over the classes (the y site gets a dimension of its own), no sampling of y and
no Python loop. The classifier q(y | x) would learn only from U, so the labelled images also
train it directly, as in the paper:
    J = Σ_labelled L(x, y) + Σ_unlabelled U(x) + α · mean_labelled log q(y | x),
α = 0.1·N by default, N the training images (the paper's choice). ``SemiSupervisedTrainer`` takes
an unbiased mini-batch estimate of J at every step: a batch of unlabelled images and one of the
labelled, each term scaled by its share of the data set.
"""

import contextlib
import math
from collections.abc import Callable

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.distributions.kl import kl_divergence
from pyro.infer import TraceEnum_ELBO
from pyro.nn import pyro_method

from pyro_vae.config import TrainConfig
from pyro_vae.data import Dataset, Split, as_float
from pyro_vae.distributed import SINGLE_PROCESS, Replicas
from pyro_vae.errors import UserInputError
from pyro_vae.evaluate import Bound, Estimate, chunk_sizes
from pyro_vae.labels import choose_labelled, one_hot
from pyro_vae.model import VAE
from pyro_vae.networks import build_networks
from pyro_vae.objectives import make_elbo
from pyro_vae.train import Trainer

ALPHA_PER_IMAGE = 0.1  # the paper's α = 0.1·N, N the number of training images


class SemiSupervisedVAE(VAE):
    """M2: ``model(x, y=None)`` and ``guide(x, y=None)`` take the classes y, (N,) integers, or
    None where the images are unlabelled (the guide then enumerates y). The constructor takes
    ``VAE``'s arguments; the classifier q(y | x) is the encoder's network with K outputs."""

    labelled = True
    kind = "m2"
    # TraceEnum_ELBO's step is not one a recorded graph holds (recorded.py): trained eagerly.
    recordable = False

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # q(y | x): the same network as the encoder, its outputs the K classes' logits.
        network, hidden = kwargs.get("network", "mlp"), kwargs.get("hidden_dims")
        if kwargs.get("encoder") is not None:
            raise ValueError("give M2 its networks by name: its classifier is built beside them")
        self.classifier, _ = build_networks(
            network, self.data_shape, self.latent_dim, hidden, self.num_classes
        )
        self.register_buffer("class_probs", torch.full((self.num_classes,), 1 / self.num_classes))

    def labels_in(self, y: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
        if y is None:
            raise ValueError("pass the classes y (M2's classify gives them for unlabelled x)")
        return (one_hot(y, self.num_classes),)

    def generative_model(  # type: ignore[override]
        self,
        x: torch.Tensor | None = None,
        y: torch.Tensor | None = None,
        batch_size: int | None = None,
    ) -> torch.Tensor:
        """y ~ Cat(π);  z ~ p(z);  x ~ p_θ(x | y, z).  With ``x=None``, new data points."""
        if x is None and y is None and batch_size is None:
            raise ValueError("model() needs data x, classes y, or a batch_size to draw new data")
        n = x.shape[0] if x is not None else y.shape[0] if y is not None else batch_size
        with pyro.plate("data", n):
            y = pyro.sample("y", dist.Categorical(probs=self.class_probs), obs=y)
            with poutine.scale(scale=self.kl_weight):
                z = pyro.sample("z", self.prior())
            # Under enumeration y is (K, 1): the decoder broadcasts it against z's (K, N).
            return pyro.sample("x", self.likelihood(self.decoder(z, *self.labels_in(y))), obs=x)

    def inference_guide(  # type: ignore[override]
        self, x: torch.Tensor | None = None, y: torch.Tensor | None = None, batch_size=None
    ) -> torch.Tensor:
        """y ~ q_φ(y | x) where not given, enumerated: all K classes at once;  z ~ q_φ(z | x, y)."""
        if x is None:
            raise ValueError("the guide needs data x")
        with pyro.plate("data", x.shape[0]):
            if y is None:
                y = pyro.sample(
                    "y",
                    dist.Categorical(logits=self.classifier(x)),
                    infer={"enumerate": "parallel"},
                )
            q = self.guide_family(self.encoder(x, *self.labels_in(y)))
            with poutine.scale(scale=self.kl_weight):
                return pyro.sample("z", q)

    model = pyro_method(generative_model)
    guide = pyro_method(inference_guide)

    def class_posterior(self, x: torch.Tensor) -> dist.Categorical:
        """q_φ(y | x), batch shape x.shape[:-1]."""
        return dist.Categorical(logits=self.classifier(x))

    @torch.no_grad()
    def classify(self, x: torch.Tensor) -> torch.Tensor:
        """The most probable class under q(y | x), (N,)."""
        return self.classifier(x).argmax(-1)

    def posterior(self, x: torch.Tensor, y: torch.Tensor | None = None) -> dist.Distribution:
        """q_φ(z | x, y); y None: the class the classifier gives."""
        return super().posterior(x, self.classify(x) if y is None else y)

    def encode(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        return super().encode(x, self.classify(x) if y is None else y)

    def reconstruct(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        return super().reconstruct(x, self.classify(x) if y is None else y)

    def generate(self, num_samples: int, y: torch.Tensor | None = None) -> torch.Tensor:
        """Decoded means of z ~ p(z) for classes ``y`` (default: 0, 1, ..., K−1, 0, 1, ...)."""
        if y is None:
            y = torch.arange(num_samples, device=self.class_probs.device) % self.num_classes
        return super().generate(num_samples, y)


def enumerated_elbo(num_particles: int = 1) -> TraceEnum_ELBO:
    """Pyro's ELBO that sums over the guide's enumerated y exactly (z sampled)."""
    return TraceEnum_ELBO(
        num_particles=num_particles,
        vectorize_particles=num_particles > 1,
        max_plate_nesting=1,  # the data plate; y's enumeration takes the dimension left of it
    )


def bound_terms(
    vae: SemiSupervisedVAE, x: torch.Tensor, num_particles: int, analytic: bool = True
) -> dict[str, torch.Tensor]:
    """U(x) written out, the K classes as one tensor dimension: for ``num_particles`` samples of
    z per class and image, each (num_particles, N):

    - ``elbo``: Σ_y q(y|x) [log p(x|y,z_y) + log π_y − KL_y] + H(q(y|x)), KL_y the closed form
      KL(q(z|x,y) ‖ p(z)) where one exists and ``analytic``, else log q(z_y|x,y) − log p(z_y);
    - ``rate``: Σ_y q(y|x) KL_y + KL(q(y|x) ‖ π), the bound's KL terms.

    The same estimate as ``TraceEnum_ELBO`` on the same z (its test says so), with a value per
    image and particle, for standard errors, and the closed-form KL where it has one.
    """
    k = vae.num_classes
    q_y = vae.class_posterior(x)  # batch (N,)
    classes = torch.arange(k, device=x.device).reshape(k, 1)  # (K, 1), as enumeration has it
    q_z = vae.posterior(x, classes)  # batch (K, N)
    z = q_z.rsample((num_particles,))  # (S, K, N, L)
    log_likelihood = vae.likelihood(vae.decoder(z, one_hot(classes, k))).log_prob(x)  # (S, K, N)
    prior = vae.prior()
    kl_z = None
    if analytic:  # where Pyro has the closed form; else sampled, as TraceMeanField_ELBO does
        with contextlib.suppress(NotImplementedError):
            kl_z = kl_divergence(q_z, prior.expand(q_z.batch_shape))  # (K, N)
    if kl_z is None:
        kl_z = q_z.log_prob(z) - prior.log_prob(z)  # (S, K, N)
    log_pi = vae.class_probs.log().reshape(k, 1)
    weights = q_y.probs.transpose(0, 1)  # (K, N)
    kl_y = (weights * (weights.clamp_min(1e-30).log() - log_pi)).sum(0)  # KL(q(y|x) ‖ π)
    rate = (weights * kl_z).sum(-2) + kl_y
    elbo = (weights * (log_likelihood - kl_z)).sum(-2) - kl_y  # Σ_y q L_y + H(q(y|x)) ...
    # ... with log π_y − log q(y|x) folded into −KL(q(y|x) ‖ π)
    return {"elbo": elbo, "rate": rate.expand_as(elbo)}


@torch.no_grad()
def bound_sums(
    vae: SemiSupervisedVAE, x: torch.Tensor, num_particles: int, max_codes: int = 2**13
) -> torch.Tensor:
    """``evaluate.elbo_sums`` for M2: [Σ_i U_i, Σ_i Var(U_i), Σ_i rate_i] over the rows of
    ``x`` (stored rows, converted a chunk at a time)."""
    sums = torch.zeros(3, dtype=torch.float64, device=x.device)
    rows = max(1, max_codes // (num_particles * vae.num_classes))
    for chunk in x.split(rows):
        terms = bound_terms(vae, as_float(chunk), num_particles)
        elbo = terms["elbo"].double()
        if num_particles > 1:
            variance = elbo.var(0) / num_particles
        else:
            variance = torch.full_like(elbo[0], math.nan)
        sums += torch.stack(
            [elbo.mean(0).sum(), variance.sum(), terms["rate"].double().mean(0).sum()]
        )
    return sums


@torch.no_grad()
def classification_error(vae: SemiSupervisedVAE, split: Split, chunk: int = 4096) -> float:
    """The share of ``split``'s images whose most probable class under q(y|x) is not their label."""
    wrong = sum(
        int((vae.classify(as_float(x)) != y).sum())
        for x, y in zip(split.stored.split(chunk), split.labels.split(chunk), strict=True)
    )
    return wrong / max(1, len(split))


def default_alpha(num_train: int) -> float:
    return ALPHA_PER_IMAGE * num_train


class SemiSupervisedTrainer(Trainer):
    """``Trainer`` for M2: an epoch is one pass over the unlabelled training images; every step
    also takes a batch of the labelled ones (``config.labels`` of them, chosen by class and
    seed), so that the few labels are seen at every step, their terms weighted so that the
    step's loss estimates J without bias. Validation reports U(x) and q(y|x)'s error."""

    def __init__(self, vae: SemiSupervisedVAE, config: TrainConfig, data: Dataset,
                 replicas: Replicas = SINGLE_PROCESS):  # fmt: skip
        if replicas.distributed:
            raise UserInputError("--model m2 trains in one process: launch it without torchrun")
        if config.labels is None:
            raise UserInputError("--model m2 needs --labels N: how many training labels to keep")
        super().__init__(vae, config, replicas, elbo=enumerated_elbo(config.num_particles))
        # The labelled batch has nothing to enumerate: the plain ELBO, y observed.
        self._labelled_elbo = make_elbo("mc", config.num_particles)
        device = data.train.stored.device
        self.labelled = choose_labelled(data.train.labels.cpu(), config.labels, config.seed)
        self.labelled = self.labelled.to(device)
        keep = torch.ones(len(data.train), dtype=torch.bool, device=device)
        keep[self.labelled] = False
        self.unlabelled = keep.nonzero().flatten()
        if len(self.unlabelled) == 0:
            raise UserInputError(
                f"--labels {config.labels} labels every training image, leaving none unlabelled "
                f"for M2: give fewer labels (or train a classifier)"
            )
        self.alpha = config.alpha if config.alpha is not None else default_alpha(len(data.train))

    def _num_train(self, data: Dataset) -> int:
        return len(self.unlabelled)

    def _epoch_order(self, num_train: int, device: torch.device) -> torch.Tensor:
        return self.unlabelled[torch.randperm(num_train, device=device)]

    def _train_step(
        self, data: Dataset, index: torch.Tensor, should_stop: Callable[[], bool] | None
    ) -> tuple[tuple[torch.Tensor, torch.Tensor], bool]:
        return self._semi_supervised_step(data, index), should_stop is not None and should_stop()

    def _semi_supervised_step(
        self, data: Dataset, index: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One step on the unlabelled images at ``index`` and a batch of the labelled: the
        loss summed (−J's estimate) and −Σ U(x) over the unlabelled batch."""
        self.optimizer.zero_grad(set_to_none=True)
        x = data.train_batch(index)
        with pyro.validation_enabled(not self._validated):
            unlabelled = self.elbo.differentiable_loss(self._model, self._guide, x)
            labelled_loss = self._labelled_loss(data, x.shape[0])
        self._validated = True
        loss = unlabelled + labelled_loss
        loss.backward()
        self.optimizer.step()
        return loss.detach(), unlabelled.detach()

    def _labelled_loss(self, data: Dataset, batch_size: int) -> torch.Tensor:
        """The labelled terms of the step's estimate of J, scaled as one unlabelled batch of
        ``batch_size`` is: (B_u / N_u)·(1 / B_l)·Σ_batch [N_l·(−L(x, y)) − α·log q(y | x)]."""
        count = len(self.labelled)
        taken = min(count, self.config.batch_size)
        index = self.labelled[torch.randperm(count, device=self.labelled.device)[:taken]]
        x, y = data.train_batch(index), data.train.labels[index]
        negative_elbo = self._labelled_elbo.differentiable_loss(self._model, self._guide, x, y)
        log_q = self.vae.class_posterior(x).log_prob(y).sum()
        scale = batch_size / (len(self.unlabelled) * taken)
        return scale * (count * negative_elbo - self.alpha * log_q)

    def _validation_elbo(self, split: Split) -> tuple[Estimate, float]:
        with pyro.validation_enabled(False):
            sums = bound_sums(self.vae, split.stored, self.config.val_particles)
        total, variance, rate = sums.tolist()
        n = len(split)
        standard_error = math.sqrt(variance) / n if math.isfinite(variance) else None
        return Estimate(total / n, standard_error), rate / n

    def _validation_error(self, split: Split) -> float | None:
        return classification_error(self.vae, split)


@torch.no_grad()
def evaluate_m2_bounds(
    vae: SemiSupervisedVAE,
    x: torch.Tensor,
    num_samples: int = 1000,
    max_rows: int = 2**13,
    on_progress: Callable[[int, int], None] | None = None,
) -> dict[str, Bound]:
    """M2's two estimates of log p(x) per image, the class summed out exactly in both:

    - ``elbo_analytic_kl``: U(x) (``bound_terms``), K samples of z per class;
    - ``iwae``: log Σ_y π_y (1/K) Σ_k p(x | y, z_yk) p(z_yk) / q(z_yk | x, y), z_yk ~ q(z | x, y):
      for each class an unbiased estimate of p(x | y), so a lower bound on log p(x) (Jensen)
      that tightens as K grows, with no importance sampling of y.

    Chunked as ``evaluate.evaluate_bounds`` is: at most ``max_rows`` codes decoded at once.
    """
    k = vae.num_classes
    total, done = x.shape[0] * num_samples * k, 0
    images = max(1, min(x.shape[0], max_rows // (num_samples * k)))
    samples = max(1, min(num_samples, max_rows // (images * k)))
    classes = torch.arange(k, device=x.device).reshape(k, 1)
    log_pi = vae.class_probs.log().reshape(k, 1)
    prior = vae.prior()
    per_image: dict[str, list[torch.Tensor]] = {"elbo_analytic_kl": [], "iwae": []}
    for chunk in x.split(images):
        chunk = as_float(chunk)
        q_z = vae.posterior(chunk, classes)  # batch (K, N)
        log_sum_w = torch.full((k, chunk.shape[0]), -math.inf, device=x.device)
        elbo = torch.zeros(chunk.shape[0], device=x.device)
        for count in chunk_sizes(num_samples, samples):
            terms = bound_terms(vae, chunk, count)
            elbo = elbo + terms["elbo"].sum(0)
            z = q_z.sample((count,))  # (S, K, N, L)
            log_w = (
                vae.likelihood(vae.decoder(z, one_hot(classes, k))).log_prob(chunk)
                + prior.log_prob(z)
                - q_z.log_prob(z)
            )  # (S, K, N)
            log_sum_w = torch.logaddexp(log_sum_w, log_w.logsumexp(0))
            done += count * k * chunk.shape[0]
            if on_progress is not None:
                on_progress(done, total)
        per_image["iwae"].append((log_pi + log_sum_w - math.log(num_samples)).logsumexp(0))
        per_image["elbo_analytic_kl"].append(elbo / num_samples)
    return {name: Bound.of(torch.cat(values), x.shape[1]) for name, values in per_image.items()}
