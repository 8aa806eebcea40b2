"""Configuration of a run as dataclasses; a checkpoint stores them, so every run can be rebuilt.

Defaults are chosen so that ``pyro-vae train`` finishes on the built-in digits in about a minute on
two CPU cores. Each dataclass checks its own values, so a bad option fails before any work starts.
"""

import json
import math
import os
import re
import sys
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from pyro_vae.core.errors import UserInputError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

ELBO_ESTIMATORS = (
    "mc",
    "analytic",
    "iwae",
    "stl",
)  # see inference/objectives.py for what each one computes
BINARIZATIONS = ("none", "static", "dynamic")  # see data/datasets.py
SPLITS = ("seeded", "paper")  # how the held-out images are chosen (see data/datasets.py)
LAYOUTS = ("auto", "nchw", "nhwc")  # how a 4-d array's axes are read (see data/sources.py)
DEVICES = ("auto", "cpu", "cuda")
DEVICE_NAME = re.compile(r"auto|cpu|cuda(:\d+)?")  # cuda:N too; torch knows more, we run on these
LR_SCHEDULES = ("constant", "cosine", "step", "plateau")  # see inference/schedules.py
MAX_SEED = 2**32 - 1  # pyro.set_rng_seed seeds NumPy too, which takes 32 bits
MIN_BETA, MAX_BETA = 1e-6, 1e6  # the KL weight's range
# --model: the VAE; the conditional VAE (models/cvae.py); M2, semi-supervised (models/m2.py)
MODEL_KINDS = ("vae", "cvae", "m2")


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise UserInputError(message)


def _number(value: Any, name: str) -> None:
    """``value`` a real number (a config file may hold "0.1" or true)."""
    _require(
        isinstance(value, int | float) and not isinstance(value, bool),
        f"{name} must be a number, got {value!r}",
    )


def _whole(value: Any, name: str, minimum: int) -> None:
    """``value`` a whole number of at least ``minimum`` (a config file may hold 64.0 or "64")."""
    _require(
        isinstance(value, int) and not isinstance(value, bool) and value >= minimum,
        f"{name} must be a whole number of at least {minimum}, got {value!r}",
    )


@dataclass(frozen=True)
class ModelConfig:
    """The VAE's architecture; the data dimension is not here because the data decide it."""

    latent_dim: int = 8  # dim z; digits need few dimensions, and small ones keep pictures readable
    kind: str = "vae"  # a name from MODEL_KINDS (--model): which model reads the data
    # The labels' classes, for the models that read them: set from the data when a run starts.
    num_classes: int = 0
    network: str = "mlp"  # a name from networks.NETWORKS: the encoder/decoder pair
    # The encoder's widths (mlp: units per layer; conv: channels per stage); the decoder mirrors
    # them. None: the network's own default (networks.default_hidden_dims).
    hidden_dims: tuple[int, ...] | None = None
    guide: str = "diagonal"  # a name from guides.GUIDES: q(z|x) = N(μ, diag σ²) by default
    prior: str = "standard"  # a name from priors.PRIORS: p(z) = N(0, I) by default
    likelihood: str = "gaussian"  # a name from likelihoods.LIKELIHOODS: N(x; x̂, I) by default
    guide_options: dict[str, Any] = field(default_factory=dict)  # keyword arguments of the guide
    prior_options: dict[str, Any] = field(default_factory=dict)  # keyword arguments of the prior
    likelihood_options: dict[str, Any] = field(default_factory=dict)  # ... of the likelihood

    def __post_init__(self) -> None:
        _require(isinstance(self.network, str), f"network must be a name, got {self.network!r}")
        _require(isinstance(self.guide, str), f"guide must be a name, got {self.guide!r}")
        _require(
            self.kind in MODEL_KINDS,
            f"unknown model {self.kind!r}: choose one of {', '.join(MODEL_KINDS)}",
        )
        _whole(self.num_classes, "num_classes", 0)
        if self.hidden_dims is not None:
            _require(
                isinstance(self.hidden_dims, list | tuple),
                f"hidden_dims must be a list of layer sizes, got {self.hidden_dims!r}",
            )
            object.__setattr__(self, "hidden_dims", tuple(self.hidden_dims))  # JSON gives lists
            for size in self.hidden_dims:
                _whole(size, "each of hidden_dims", 1)
        _whole(self.latent_dim, "latent_dim", 1)
        for name in ("guide_options", "prior_options", "likelihood_options"):
            value = getattr(self, name)
            _require(isinstance(value, dict), f"{name} must be a table of keywords, got {value!r}")


def _absolute(path: str) -> str:
    # abspath, not resolve: links stay as the user named them (and a loop of them is reported
    # where the file is read, as a missing file, instead of failing here)
    return os.path.abspath(os.path.expanduser(path))


@dataclass(frozen=True)
class DataConfig:
    """Which data, and how they are split into train / validation / test."""

    dataset: str = "digits"  # a name from data.DATASETS; "array" and "folder" read `path`
    path: str | None = None  # the user's .npy / .npz file ("array") or image folder ("folder")
    data_dir: str = "data"  # holds <Class>/raw/*-ubyte(.gz) for the MNIST family (torchvision)
    download: bool = False  # let torchvision fetch the MNIST family into data_dir first
    val_fraction: float = 0.1  # share of the images held out for the per-epoch validation ELBO
    test_fraction: float = 0.1  # share held out for testing, unless the dataset fixes its own
    split_seed: int = 0  # apart from the training seed: --seed never changes the held-out images
    binarize: str = "none"  # "static": sample x ~ Bernoulli(pixel) once; "dynamic": every batch
    # "seeded": validation (and test, where the data fix none) drawn at random with split_seed;
    # "paper": the MNIST family's official test images, the last sixth of its training images for
    # validation and the rest for training, in order (MNIST: 50,000 / 10,000 / 10,000)
    split: str = "seeded"
    # Images from a folder: resized to (height, width) (None: their most common size), centre-
    # cropped to a square first where asked, converted to 1 (grey) or 3 (RGB) channels (None:
    # RGB if any image has colour).
    image_size: tuple[int, int] | None = None
    crop: bool = False
    channels: int | None = None
    layout: str = "auto"  # a 4-d array's axes: "nchw", "nhwc", or "auto" (guessed, and said)

    def __post_init__(self) -> None:
        for name in ("path", "data_dir"):  # a pathlib.Path is as good as a string here
            value = getattr(self, name)
            if isinstance(value, os.PathLike):
                object.__setattr__(self, name, os.fspath(value))
        for name in ("dataset", "data_dir", "binarize", "split"):
            value = getattr(self, name)
            _require(isinstance(value, str), f"{name} must be a string, got {value!r}")
        _require(isinstance(self.path, str | None), f"path must be a file name, got {self.path!r}")
        _require(
            isinstance(self.download, bool),
            f"download must be true or false, got {self.download!r}",
        )
        _require(
            isinstance(self.split_seed, int) and 0 <= self.split_seed <= MAX_SEED,
            f"split_seed must be a whole number from 0 to {MAX_SEED}, got {self.split_seed!r}",
        )
        own = self.dataset in ("array", "folder")  # the user's own data, read from ``path``
        _require(
            not own or self.path is not None,
            f"dataset {self.dataset!r} reads your own "
            f"{'images from a folder' if self.dataset == 'folder' else 'array file'}: give it "
            f"with --data {'DIR' if self.dataset == 'folder' else 'FILE'} (which chooses the "
            "dataset itself: drop --dataset)",
        )
        _require(
            own or self.path is None,
            "a data path goes with dataset 'array' (--data FILE) or 'folder' (--data DIR), "
            "and only with them",
        )
        if self.image_size is not None:
            _require(
                isinstance(self.image_size, list | tuple) and len(self.image_size) == 2,
                f"image_size must be (height, width), got {self.image_size!r}",
            )
            object.__setattr__(self, "image_size", tuple(self.image_size))  # JSON gives lists
            for size in self.image_size:
                _whole(size, "each of image_size", 1)
        _require(isinstance(self.crop, bool), f"crop must be true or false, got {self.crop!r}")
        _require(self.channels in (None, 1, 3), f"channels must be 1 or 3, got {self.channels!r}")
        _require(
            self.layout in LAYOUTS,
            f"unknown layout {self.layout!r}: choose one of {', '.join(LAYOUTS)}",
        )
        _require(
            self.split in SPLITS,
            f"unknown split {self.split!r}: choose one of {', '.join(SPLITS)}",
        )
        _require(
            self.binarize in BINARIZATIONS,
            f"unknown binarization {self.binarize!r}: choose one of {', '.join(BINARIZATIONS)}",
        )
        for name in ("val_fraction", "test_fraction"):
            value = getattr(self, name)
            _number(value, name)
            _require(0 < value < 1, f"{name} must lie strictly between 0 and 1, got {value}")
        _require(
            self.val_fraction + self.test_fraction < 1,
            "val_fraction + test_fraction must leave some data for training",
        )

    def located(self, path: str | None = None, data_dir: str | None = None) -> "DataConfig":
        """The same data with absolute locations (a run stays readable from any folder), moved
        to ``path`` or ``data_dir`` where given (data that have moved since)."""
        path = path if path is not None else self.path
        data_dir = data_dir if data_dir is not None else self.data_dir
        return replace(
            self,
            path=None if path is None else _absolute(path),
            data_dir=_absolute(data_dir),
        )


@dataclass(frozen=True)
class TrainConfig:
    """How the ELBO is estimated and optimised."""

    # "mc": Trace_ELBO (Monte Carlo KL); "analytic": TraceMeanField_ELBO; "iwae"; "stl": mc's
    # ELBO with the path-derivative gradient (see inference/objectives.py)
    elbo: str = "mc"
    num_particles: int = 1  # samples of z per data point in each training ELBO estimate
    lr: float = 1e-3  # Adam's learning rate
    batch_size: int = 64  # images per SVI step; small data sets favour small batches
    epochs: int = 150  # about half a minute on the built-in digits with two CPU cores
    seed: int = 0  # seeds torch, numpy, random and Pyro: weights, batches and samples of z
    device: str = "auto"  # "auto" takes CUDA when it is available, else the CPU
    # Samples of z per image in the validation ELBO (closed-form KL). Its standard error, reported
    # as val_elbo_se, halves as they quadruple: 4 give about 0.04 nats on 1,000 MNIST images, at a
    # quarter of 16's cost (the validation pass costs a forward pass per sample and image).
    val_particles: int = 4
    # The objective's weights (see inference/objectives.py); every reported ELBO stays the ELBO
    # itself.
    beta: float = 1.0  # weight of the KL term (β-VAE); 1 trains on the ELBO
    kl_warmup: int = 0  # epochs over which β rises linearly from 0 to beta, step by step
    free_bits: float = 0.0  # nats each latent dimension's KL counts at least (analytic only)
    # The learning rate over the epochs (torch.optim.lr_scheduler, stepped once an epoch).
    lr_schedule: str = "constant"  # "constant", "cosine", "step" or "plateau"
    lr_step: int = 30  # step: epochs between two cuts; plateau: epochs without gain before one
    lr_factor: float = 0.1  # step and plateau: what a cut multiplies the rate by
    lr_min: float = 0.0  # cosine: the rate the last epoch reaches
    patience: int | None = None  # stop after this many epochs without a better validation ELBO
    # M2 (models/m2.py): how many training images keep their labels (balanced by class,
    # chosen by seed), and α, the weight of their classification term (None: 0.1 × the number of
    # training images, Kingma et al.'s choice).
    labels: int | None = None
    alpha: float | None = None

    def __post_init__(self) -> None:
        _require(
            self.elbo in ELBO_ESTIMATORS,
            f"unknown ELBO estimator {self.elbo!r}: choose one of {', '.join(ELBO_ESTIMATORS)}",
        )
        for name in ("num_particles", "batch_size", "epochs", "val_particles", "lr_step"):
            _whole(getattr(self, name), name, 1)
        _whole(self.kl_warmup, "kl_warmup", 0)
        if self.patience is not None:
            _whole(self.patience, "patience", 1)
        if self.labels is not None:
            _whole(self.labels, "labels", 1)
        if self.alpha is not None:
            _number(self.alpha, "alpha")
            _require(
                math.isfinite(self.alpha) and self.alpha >= 0,
                f"alpha must be 0 or more, got {self.alpha}",
            )
        for name in ("lr", "beta", "free_bits", "lr_factor", "lr_min"):
            _number(getattr(self, name), name)
        for name in ("elbo", "device", "lr_schedule"):
            value = getattr(self, name)
            _require(isinstance(value, str), f"{name} must be a string, got {value!r}")
        _require(
            math.isfinite(self.lr) and self.lr > 0,
            f"lr must be a positive number, got {self.lr}",
        )
        # Within float32's comfortable range: β, and β over a warm-up's steps, stay normal numbers.
        _require(
            math.isfinite(self.beta) and MIN_BETA <= self.beta <= MAX_BETA,
            f"beta must lie between {MIN_BETA:g} and {MAX_BETA:g}, got {self.beta}",
        )
        _require(
            math.isfinite(self.free_bits) and self.free_bits >= 0,
            f"free_bits must be 0 or more nats, got {self.free_bits}",
        )
        weighted = self.beta != 1 or self.kl_warmup or self.free_bits
        _require(
            not (weighted and self.elbo == "iwae"),
            "--beta, --kl-warmup and --free-bits weight the ELBO's KL term, which the iwae bound "
            "does not have: use --elbo mc, analytic or stl with them",
        )
        _require(
            not (self.free_bits and self.elbo != "analytic"),
            "free bits floor the KL of each latent dimension, which only the closed-form KL "
            "gives: use --elbo analytic with --free-bits (or --free-bits 0 for none)",
        )
        _require(
            self.lr_schedule in LR_SCHEDULES,
            f"unknown learning-rate schedule {self.lr_schedule!r}: choose one of "
            f"{', '.join(LR_SCHEDULES)}",
        )
        _require(
            0 < self.lr_factor < 1,
            f"lr_factor must lie strictly between 0 and 1 (a cut), got {self.lr_factor}",
        )
        _require(
            math.isfinite(self.lr_min) and self.lr_min >= 0,
            f"lr_min must be 0 or more, got {self.lr_min}",
        )
        _require(
            self.lr_schedule != "cosine" or self.lr_min < self.lr,
            f"lr_min ({self.lr_min:g}) must be below lr ({self.lr:g}): the cosine schedule "
            "anneals from lr down to lr_min",
        )
        _require(
            DEVICE_NAME.fullmatch(self.device) is not None,
            f"unknown device {self.device!r}: choose one of {', '.join(DEVICES)} (or cuda:N)",
        )
        _require(
            isinstance(self.seed, int) and 0 <= self.seed <= MAX_SEED,
            f"seed must be a whole number from 0 to {MAX_SEED} (NumPy's range), got {self.seed}",
        )


@dataclass(frozen=True)
class RunConfig:
    """Everything that defines a training run."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        m2, train = self.model.kind == "m2", self.train
        _require(
            m2 or (train.labels is None and train.alpha is None),
            "--labels and --alpha choose the labelled images of semi-supervised training: use "
            "them with --model m2",
        )
        _require(not m2 or train.labels is not None, "--model m2 needs --labels N: how many "
                 "training images keep their labels (the rest are unlabelled)")  # fmt: skip
        _require(
            not m2 or train.elbo == "mc",
            f"--model m2 sums over the class exactly with Pyro's TraceEnum_ELBO, which samples "
            f"z as mc does: use --elbo mc (not {train.elbo})",
        )
        _require(
            not m2 or (train.beta == 1 and not train.kl_warmup),
            "--model m2 trains on its ELBO and classification term as Kingma et al. (2014) "
            "weight them: drop --beta and --kl-warmup",
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "RunConfig":
        return cls(
            model=ModelConfig(**values["model"]),
            data=DataConfig(**values["data"]),
            train=TrainConfig(**values["train"]),
        )


SECTIONS = {"model": ModelConfig, "data": DataConfig, "train": TrainConfig}


def read_config_file(path: str) -> dict[str, dict[str, Any]]:
    """The sections (``model``, ``data``, ``train``) of a run's ``config.json``, or of a JSON or
    TOML file of the same keys, each section optional; checked for unknown sections and keys.

    A run's ``config.json`` holds them under ``"config"``, beside the run's record.
    """
    if os.path.isdir(path) and os.path.isfile(os.path.join(path, "config.json")):
        path = os.path.join(path, "config.json")  # a run directory: its record
    try:
        if path.endswith(".toml"):
            with open(path, "rb") as file:
                values = tomllib.load(file)
        else:
            with open(path, encoding="utf-8") as file:
                values = json.load(file)
    except FileNotFoundError:
        raise UserInputError(f"--config {path}: no such file") from None
    except IsADirectoryError:
        raise UserInputError(f"--config {path} is a folder: give its config.json") from None
    except (ValueError, UnicodeDecodeError) as error:  # JSONDecodeError and TOMLDecodeError
        kind = "TOML" if path.endswith(".toml") else "JSON (or name a .toml file)"
        reason = str(error).splitlines()[0]
        raise UserInputError(f"--config {path} is not valid {kind}: {reason}") from None
    if isinstance(values, dict) and isinstance(values.get("config"), dict):
        values = values["config"]  # a run's record
    if not isinstance(values, dict):
        raise UserInputError(f"--config {path} must hold sections {', '.join(SECTIONS)}")
    unknown = sorted(set(values) - set(SECTIONS))
    _require(not unknown, f"--config {path}: unknown sections {unknown}; known: {list(SECTIONS)}")
    for name, section in values.items():
        _require(isinstance(section, dict), f"--config {path}: [{name}] must be a table of keys")
        known = {f.name for f in fields(SECTIONS[name])}
        extra = sorted(set(section) - known)
        _require(
            not extra, f"--config {path}: unknown keys {extra} in [{name}]; known: {sorted(known)}"
        )
    return values
