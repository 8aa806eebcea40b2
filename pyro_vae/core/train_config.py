"""The training's section of a run's configuration: how the ELBO is estimated and optimised;
each field's option of ``pyro-vae train`` declared beside it."""

from dataclasses import dataclass, field
from pathlib import Path

from pyro_vae.core.devices import DEVICE_NAME, resolve_device
from pyro_vae.core.options import MAY_CHANGE, check, declared, require

ELBO_ESTIMATORS = (
    "mc",
    "analytic",
    "iwae",
    "stl",
)  # see inference/objectives.py for what each one computes
DEVICES = ("auto", "cpu", "cuda")
LR_SCHEDULES = ("constant", "cosine", "step", "plateau")  # see inference/schedules.py
MAX_SEED = 2**32 - 1  # pyro.set_rng_seed seeds NumPy too, which takes 32 bits
MIN_BETA, MAX_BETA = 1e-6, 1e6  # the KL weight's range
# named as torch.set_float32_matmul_precision names them; what each sets on a CPU and on a GPU:
# inference/fast/precision.py
MATMUL_PRECISIONS = ("highest", "high", "medium")
# M2's α per labelled image, where not given, measured on MNIST's papers' split (docs/models.md):
# 500 on M1's codes at every label count. On the images the weight M2 needs falls as the labels
# grow: 50,000 below 100 labels a class (where 500 left M2 behind its own classifier alone),
# 5,000 below 300 (where 50,000 left it behind at 1,000 labels and 5,000 put it ahead), 500 from
# there (3,000 labels).
DEFAULT_ALPHA = 500.0
IMAGE_ALPHAS = ((100, 50_000.0), (300, 5_000.0))  # (below this many labels a class, α)


def default_alpha(labels: int, num_classes: int, on_codes: bool) -> float:
    """M2's α per labelled image where none is given: ``labels`` labelled images of
    ``num_classes`` classes, M2 on M1's codes (``on_codes``) or on the images."""
    if not on_codes:
        for below, alpha in IMAGE_ALPHAS:
            if labels < below * num_classes:
                return alpha
    return DEFAULT_ALPHA


def _image_alphas() -> str:
    """The default α on the images, in words: "50,000 below 100 labels a class, ..."."""
    tiers = [f"{alpha:,g} below {below} labels a class" for below, alpha in IMAGE_ALPHAS]
    return ", ".join(tiers) + f", {DEFAULT_ALPHA:,g} from {IMAGE_ALPHAS[-1][0]}"


def _usable_device(name: str) -> None:
    """A device this machine has: torch is imported only where the option is given."""
    resolve_device(name)


@dataclass(frozen=True)
class TrainConfig:
    """How the ELBO is estimated and optimised."""

    # "mc": Trace_ELBO (Monte Carlo KL); "analytic": TraceMeanField_ELBO; "iwae"; "stl": mc's
    # ELBO with the path-derivative gradient (see inference/objectives.py)
    elbo: str = field(
        default="mc",
        metadata=declared(
            "--elbo",
            choices=ELBO_ESTIMATORS,
            noun="ELBO estimator",
            help="Training objective: mc = Trace_ELBO (KL by Monte Carlo), analytic = "
            "TraceMeanField_ELBO (KL in closed form), iwae = the importance-weighted bound "
            "(RenyiELBO, alpha 0, K = --num-particles), stl = mc's ELBO with the path-derivative "
            "gradient (sticking the landing: log q with the guide detached).",
        ),
    )
    # samples of z per data point in each training ELBO estimate
    num_particles: int = field(
        default=1,
        metadata=declared(
            "--num-particles", low=1, help="Samples of z per image in each ELBO estimate."
        ),
    )
    # Adam's learning rate
    lr: float = field(
        default=1e-3,
        metadata=declared(
            "--lr", low=0, strict=True, resume=MAY_CHANGE, help="Adam learning rate."
        ),
    )
    # images per SVI step; small data sets favour small batches
    batch_size: int = field(
        default=64, metadata=declared("--batch-size", low=1, help="Images per SVI step.")
    )
    # about half a minute on the built-in digits with two CPU cores
    epochs: int = field(
        default=150,
        metadata=declared(
            "--epochs", low=1, resume=MAY_CHANGE, help="Passes over the training images."
        ),
    )
    # seeds torch, numpy, random and Pyro: weights, batches and samples of z
    seed: int = field(
        default=0,
        metadata=declared(
            "--seed",
            low=0,
            high=MAX_SEED,
            help="Seed for weights, batch order and samples of z.",
        ),
    )
    # "auto" takes CUDA when it is available, else the CPU
    device: str = field(
        default="auto",
        metadata=declared(
            "--device",
            resume=MAY_CHANGE,
            usable=_usable_device,
            help="auto (CUDA when available, else CPU), cpu, cuda or cuda:N.",
        ),
    )
    # Whether the recorded step is compiled by Inductor on the CPU (inference/fast/compiled.py);
    # None decides: compiled where the run is long enough and the compiled step is faster. A
    # resumed run keeps the choice its checkpoint made, unless given anew.
    compile: bool | None = field(
        default=None,
        metadata=declared(
            "--compile",
            resume=MAY_CHANGE,
            help="Compile the training step with Inductor (CPU, needs a C++ compiler). Unset: "
            "compiled where the run's steps would take two minutes or more and the compiled "
            "step times faster on this machine.",
            shown_default="decided by the run's length",
        ),
    )
    # The steps' float32 matrix products: "medium" lets a CPU with bfloat16 instructions (AMX)
    # multiply in bfloat16 with float32 sums, "high" and "medium" a GPU in TF32
    # (inference/fast/precision.py); the validation ELBO and evaluation stay float32.
    matmul_precision: str = field(
        default="highest",
        metadata=declared(
            "--matmul-precision",
            choices=MATMUL_PRECISIONS,
            noun="matrix product precision",
            resume=MAY_CHANGE,
            help="The training steps' float32 matrix products: highest = float32 (steps repeat "
            "to the bit); high = TF32 on a GPU, float32 on a CPU; medium = bfloat16 products "
            "with float32 sums on a CPU with AMX tiles (8 bits of mantissa; not for "
            "--prior mog or vamp, whose log p(z) subtracts large products), TF32 on a GPU. "
            "Validation and evaluation stay float32.",
        ),
    )
    # Samples of z per image in the validation ELBO (closed-form KL). Its standard error, reported
    # as val_elbo_se, halves as they quadruple: 4 give about 0.04 nats on 1,000 MNIST images, at a
    # quarter of 16's cost (the validation pass costs a forward pass per sample and image).
    val_particles: int = field(default=4, metadata=declared(low=1))
    # The objective's weights (see inference/objectives.py); every reported ELBO stays the ELBO
    # itself.
    # weight of the KL term (β-VAE); 1 trains on the ELBO
    beta: float = field(
        default=1.0,
        metadata=declared(
            "--beta",
            low=0,
            strict=True,
            help="Weight β of the KL term (β-VAE); every reported ELBO stays the ELBO itself.",
        ),
    )
    # epochs over which β rises linearly from 0 to beta, step by step
    kl_warmup: int = field(
        default=0,
        metadata=declared(
            "--kl-warmup",
            low=0,
            help="Epochs over which β rises linearly, step by step, from near 0 to --beta.",
        ),
    )
    # nats each latent dimension's KL counts at least (analytic only)
    free_bits: float = field(
        default=0.0,
        metadata=declared(
            "--free-bits",
            low=0,
            help="Nats each latent dimension's KL counts at least (--elbo analytic, with the "
            "standard or gaussian prior).",
        ),
    )
    # The learning rate over the epochs (torch.optim.lr_scheduler, stepped once an epoch).
    lr_schedule: str = field(
        default="constant",
        metadata=declared(
            "--lr-schedule",
            choices=LR_SCHEDULES,
            noun="learning-rate schedule",
            help="Learning rate over the epochs: cosine (down to --lr-min), step (× --lr-factor "
            "every --lr-step epochs), plateau (× --lr-factor after --lr-step epochs without gain).",
        ),
    )
    # step: epochs between two cuts; plateau: epochs without gain before one
    lr_step: int = field(
        default=30,
        metadata=declared(
            "--lr-step",
            low=1,
            applies=("lr_schedule", ("step", "plateau")),
            help="step: epochs between two cuts; plateau: epochs without a better validation ELBO "
            "before a cut (not --patience, which stops the run).",
        ),
    )
    # step and plateau: what a cut multiplies the rate by
    lr_factor: float = field(
        default=0.1,
        metadata=declared(
            "--lr-factor",
            low=0,
            high=1,
            strict=True,
            applies=("lr_schedule", ("step", "plateau")),
            help="What a step or plateau cut multiplies the rate by (0 to 1).",
        ),
    )
    # cosine: the rate the last epoch reaches
    lr_min: float = field(
        default=0.0,
        metadata=declared(
            "--lr-min",
            low=0,
            applies=("lr_schedule", ("cosine",)),
            help="The rate the cosine schedule ends at.",
        ),
    )
    # stop after this many epochs without a better validation ELBO
    patience: int | None = field(
        default=None,
        metadata=declared(
            "--patience",
            low=1,
            resume=MAY_CHANGE,
            help="Stop after this many epochs without a better validation ELBO; best.pt keeps the "
            "best model, which evaluate and the pictures then use.",
            shown_default="never",
        ),
    )
    # M2 (models/m2.py): how many training images keep their labels (balanced by class,
    # chosen by seed), α, the weight of each one's classification term, and M1+M2's M1.
    labels: int | None = field(
        default=None,
        metadata=declared(
            "--labels",
            low=1,
            follows="kind",
            help="--model m2: training images that keep their labels, balanced by class and chosen "
            "by --seed; the others train unlabelled.",
            shown_default=False,
        ),
    )
    alpha: float | None = field(
        default=None,
        metadata=declared(
            "--alpha",
            low=0,
            follows="kind",
            help="--model m2: weight α of each labelled image's log q(y|x) in the objective. "
            "Kingma et al.'s is 0.1·N/--labels (N the training images: 1.67 per image at "
            "3,000 labels of 50,000, 50 at 100); the default, measured on MNIST at 100 to "
            f"3,000 labels (docs/models.md), is {DEFAULT_ALPHA:,g} on M1's codes (--features); "
            f"on the images {_image_alphas()}. A run keeps its α, --config from it too.",
            shown_default="by --labels and --features",
        ),
    )
    features: str | None = field(
        default=None,
        metadata=declared(
            "--features",
            reads=Path,
            follows="kind",
            help="--model m2: a trained VAE run (M1) whose codes, the means of its q(z|x), M2 "
            "models instead of the images: M1+M2 (Kingma et al.). Train M1 on the same data.",
            shown_default=False,
        ),
    )

    def __post_init__(self) -> None:
        check(self)
        # Within float32's comfortable range: β, and β over a warm-up's steps, stay normal numbers.
        require(
            MIN_BETA <= self.beta <= MAX_BETA,
            f"`beta` must lie between {MIN_BETA:g} and {MAX_BETA:g}, got {self.beta}",
        )
        weighted = self.beta != 1 or self.kl_warmup or self.free_bits
        require(
            not (weighted and self.elbo == "iwae"),
            "`beta`, `kl_warmup` and `free_bits` weight the ELBO's KL term, which the iwae bound "
            "does not have: use `elbo` mc, analytic or stl with them",
        )
        require(
            not (self.free_bits and self.elbo != "analytic"),
            "free bits floor the KL of each latent dimension, which only the closed-form KL "
            "gives: use `elbo` analytic with `free_bits` (or `free_bits` 0 for none)",
        )
        require(
            self.lr_schedule != "cosine" or self.lr_min < self.lr,
            f"`lr_min` ({self.lr_min:g}) must be below `lr` ({self.lr:g}): the cosine schedule "
            "anneals from `lr` down to `lr_min`",
        )
        require(
            DEVICE_NAME.fullmatch(self.device) is not None,
            f"unknown device {self.device!r}: choose one of {', '.join(DEVICES)} (or cuda:N)",
        )
