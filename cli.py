"""The pyro-vae command line: parses options, calls the library, and shows what happened.

Run it as ``python cli.py ...`` from a checkout or as ``pyro-vae ...`` once installed.
"""

import signal
import sys

# Ctrl-C while torch and Pyro are still being imported (a second or two): end quietly, as the
# shell would, instead of showing the traceback of some import. Training installs its own handler.
_HANDLER_BEFORE_IMPORTS = signal.signal(signal.SIGINT, lambda signum, frame: sys.exit(128 + signum))

import atexit
import errno
import functools
import json
import logging
import math
import os
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import pyro
import torch
import typer

from cli_training import (
    TRAIN_KEYS,
    WorkProgress,
    command_line,
    config_file_options,
    explicit_options,
    refuse_changes_on_resume,
    summarise,
    training,
    with_config_file,
)
from pyro_vae import (
    DATASETS,
    ESTIMATORS,
    GUIDES,
    LIKELIHOODS,
    PRIORS,
    VAE,
    Checkpoint,
    DataConfig,
    ModelConfig,
    RunConfig,
    TrainConfig,
    TrainingDiverged,
    UserInputError,
    load_checkpoint,
    resolve_device,
    resume_run,
    train_run,
)
from pyro_vae.config import (
    BINARIZATIONS,
    LAYOUTS,
    LR_SCHEDULES,
    MAX_SEED,
    MODEL_KINDS,
    read_config_file,
)
from pyro_vae.data import Split, load_run_data
from pyro_vae.distributed import Replicas
from pyro_vae.evaluate import evaluate_bounds
from pyro_vae.labels import check_label
from pyro_vae.networks import NETWORKS
from pyro_vae.objectives import kl_method
from pyro_vae.pictures import (
    save_interpolations,
    save_latent_scatter,
    save_manifold,
    save_reconstructions,
    save_samples,
)
from pyro_vae.registry import accepts
from pyro_vae.rundir import BEST, CHECKPOINT, RUN_FILES, check_writable, is_run_dir, writing
from pyro_vae.semisupervised import SemiSupervisedVAE
from pyro_vae.semisupervised_bounds import classification_error, evaluate_m2_bounds

signal.signal(signal.SIGINT, _HANDLER_BEFORE_IMPORTS)  # imported: Ctrl-C as it was

app = typer.Typer(
    help="Variational autoencoders as Pyro model/guide pairs: train, sample, reconstruct.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,  # plain click output: an error is one "Error: ..." line, as ours are
    pretty_exceptions_show_locals=False,  # a bug's traceback stays readable, without tensor dumps
)
_debug = False  # set by --debug: user errors then show their traceback too


def _note(message: str) -> None:
    """A line the user should read, in the form of the library's notes."""
    typer.echo(f"Note: {message}", err=True)


def _choices(name: str, names: Any) -> type[Enum]:
    """A str Enum of a registry's names, so ``--help`` lists every registered component."""
    return Enum(name, {n: n for n in names}, type=str)  # type: ignore[return-value]


Estimator = _choices("Estimator", ESTIMATORS)
PriorName = _choices("PriorName", PRIORS)
LikelihoodName = _choices("LikelihoodName", LIKELIHOODS)
NetworkName = _choices("NetworkName", NETWORKS)
GuideName = _choices("GuideName", GUIDES)
Layout = _choices("Layout", LAYOUTS)
DatasetName = _choices("DatasetName", DATASETS)
LrSchedule = _choices("LrSchedule", LR_SCHEDULES)
Binarization = _choices("Binarization", BINARIZATIONS)
ModelKind = _choices("ModelKind", MODEL_KINDS)

Command = TypeVar("Command", bound=Callable[..., Any])


def reports_user_errors(command: Command) -> Command:
    """Show a ``UserInputError`` as one line on stderr and exit with status 2 (no traceback)."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except (UserInputError, OSError) as error:
            if _debug or (isinstance(error, OSError) and not _environmental(error)):
                raise
            message = str(error) if isinstance(error, UserInputError) else _describe(error)
            rank = os.environ.get("RANK", "0")
            who = f" (process {rank} of {os.environ.get('WORLD_SIZE')})" if rank != "0" else ""
            typer.echo(f"Error{who}: {' '.join(message.split())}", err=True)  # one line
            raise typer.Exit(2) from None

    return wrapper  # type: ignore[return-value]


# What the machine refuses for a path a user named (too long, a loop of links, a full disk, a
# read-only file system, no permission): the user's to fix, whichever line of ours met it.
_ENVIRONMENTAL = {
    errno.ENAMETOOLONG, errno.ELOOP, errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM,
    errno.EDQUOT, errno.ENOTDIR, errno.EISDIR,
}  # fmt: skip


def _environmental(error: OSError) -> bool:
    return error.errno in _ENVIRONMENTAL and error.filename is not None


def _describe(error: OSError) -> str:
    return f"cannot use {error.filename} ({error.strerror}): choose another path, or fix this one"


# Option callbacks: checks that click's types cannot express, reported against the option's name.


def _positive(value: float | None) -> float | None:
    if value is not None and not (value > 0 and math.isfinite(value)):
        raise typer.BadParameter(f"must be a positive finite number, got {value}")
    return value


def _layer_sizes(value: str | None) -> str | None:
    if value is None:
        return None
    try:
        sizes = [int(size) for size in value.split(",")]
    except ValueError:
        sizes = []
    if not sizes or min(sizes) < 1:
        raise typer.BadParameter(
            f"expected comma-separated positive layer sizes such as 256,128, got {value!r}"
        )
    return value


def _image_size(value: str | None) -> str | None:
    """ "64" -> "64x64", "48×64" -> "48x64": one spelling, as a stored run's is compared."""
    if value is None:
        return None
    pair = _size_pair(value)
    if pair is None:
        raise typer.BadParameter(f"expected a size such as 64 or 48x64 (H x W), got {value!r}")
    return "x".join(map(str, pair))


def _size_pair(value: str | None) -> tuple[int, int] | None:
    """ "64" -> (64, 64), "48x64" -> (48, 64); None for None or anything else."""
    if value is None:
        return None
    parts = value.lower().replace("×", "x").split("x")
    if len(parts) not in (1, 2) or not all(part.strip().isdecimal() for part in parts):
        return None
    sizes = [int(part) for part in parts]
    if min(sizes) < 1:
        return None
    return (sizes[0], sizes[-1])


def _device(value: str) -> str:
    try:
        resolve_device(value)
    except (UserInputError, RuntimeError) as error:  # torch raises RuntimeError for 'gpu' etc.
        raise typer.BadParameter(str(error)) from None
    return value


DeviceOption = Annotated[
    str,
    typer.Option(
        callback=_device, help="auto (CUDA when available, else CPU), cpu, cuda or cuda:N."
    ),
]


@app.callback()
def global_options(
    debug: Annotated[
        bool,
        typer.Option(
            "--debug",
            envvar="PYRO_VAE_DEBUG",
            help="Show the full traceback of every error, for bug reports.",
        ),
    ] = False,
) -> None:
    global _debug
    _debug = debug
    try:
        replicas = Replicas.from_environment()
    except UserInputError as error:
        typer.echo(f"Error: {error}", err=True)
        raise typer.Exit(2) from None
    # The library logs what the user should know (such as which split of the data it uses);
    # show it on stderr, resolved per invocation so that a test runner's stderr receives it.
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("Note: %(message)s"))
    library_log = logging.getLogger("pyro_vae")
    library_log.handlers = [handler]
    # Under torchrun, rank 0 speaks for all the processes; the others report only their errors.
    library_log.setLevel(logging.INFO if replicas.is_main else logging.ERROR)
    library_log.propagate = False


@app.command()
@reports_user_errors
def train(
    ctx: typer.Context,
    out: Annotated[
        Path | None,
        typer.Option(help="Run directory to create.", show_default="runs/DATASET-DATE-TIME"),
    ] = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Reuse --out even if it already holds files.")
    ] = False,
    dataset: Annotated[
        DatasetName,
        typer.Option(help="Dataset to train on; --data picks 'array' or 'folder' for you."),
    ] = DataConfig.dataset,
    data: Annotated[
        Path | None,
        typer.Option(
            help="Your own images: a folder of image files (PNG, JPEG, ...; subfolders are "
            "classes), or a .npy/.npz array of shape (N, D), (N, H, W), (N, H, W, C) or "
            "(N, C, H, W)."
        ),
    ] = None,
    image_size: Annotated[
        str | None,
        typer.Option(
            callback=_image_size,
            help="--data DIR: resize every image to this size, H or HxW.",
            show_default="the images' most common size",
        ),
    ] = None,
    crop: Annotated[
        bool,
        typer.Option("--crop", help="--data DIR: centre-crop each image to a square first."),
    ] = False,
    channels: Annotated[
        int | None,
        typer.Option(
            min=1,
            max=3,
            help="--data DIR: 1 (grey) or 3 (RGB) channels.",
            show_default="3 if any image has colour, else 1",
        ),
    ] = None,
    layout: Annotated[
        Layout,
        typer.Option(
            help="--data FILE with a 4-d array: its axes, nchw or nhwc (auto guesses, and says "
            "what it assumed)."
        ),
    ] = DataConfig.layout,
    data_dir: Annotated[
        Path,
        typer.Option(help="Folder holding MNIST/raw/*-ubyte.gz and the like (torchvision's)."),
    ] = Path(DataConfig.data_dir),
    download: Annotated[
        bool, typer.Option("--download", help="Let torchvision fetch the MNIST family first.")
    ] = False,
    elbo: Annotated[
        Estimator,
        typer.Option(
            help="Training objective: mc = Trace_ELBO (KL by Monte Carlo), analytic = "
            "TraceMeanField_ELBO (KL in closed form), iwae = the importance-weighted bound "
            "(RenyiELBO, alpha 0, K = --num-particles), stl = mc's ELBO with the "
            "path-derivative gradient (sticking the landing: log q with the guide detached)."
        ),
    ] = TrainConfig.elbo,
    num_particles: Annotated[
        int, typer.Option(min=1, help="Samples of z per image in each ELBO estimate.")
    ] = TrainConfig.num_particles,
    lr: Annotated[
        float, typer.Option(callback=_positive, help="Adam learning rate.")
    ] = TrainConfig.lr,
    batch_size: Annotated[
        int, typer.Option(min=1, help="Images per SVI step.")
    ] = TrainConfig.batch_size,
    epochs: Annotated[
        int, typer.Option(min=1, help="Passes over the training images.")
    ] = TrainConfig.epochs,
    latent_dim: Annotated[
        int, typer.Option(min=1, help="Dimension of the latent code z.")
    ] = ModelConfig.latent_dim,
    model: Annotated[
        ModelKind,
        typer.Option(
            help="vae; cvae, the conditional VAE p(x | z, y), q(z | x, y), the class y given "
            "(sample --label K draws class K); m2, semi-supervised (Kingma et al., 2014): "
            "y a latent summed out exactly for the images whose labels --labels does not keep."
        ),
    ] = ModelConfig.kind,
    labels: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="--model m2: training images that keep their labels, balanced by class and "
            "chosen by --seed; the others train unlabelled.",
            show_default=False,
        ),
    ] = None,
    alpha: Annotated[
        float | None,
        typer.Option(
            min=0,
            help="--model m2: weight α of the labelled images' mean log q(y|x) in the objective.",
            show_default="0.1 × the training images, as Kingma et al.",
        ),
    ] = None,
    network: Annotated[
        NetworkName,
        typer.Option(
            help="Encoder/decoder pair: mlp (fully connected) or conv (strided convolutions, "
            "for images of 8×8 and up)."
        ),
    ] = ModelConfig.network,
    hidden_dims: Annotated[
        str | None,
        typer.Option(
            callback=_layer_sizes,
            help="The encoder's widths, comma-separated (mlp: units per layer; conv: channels "
            "per stage, each stage halving the image); the decoder mirrors them.",
            show_default="256,128 for mlp, 32,64 for conv",
        ),
    ] = None,
    guide: Annotated[
        GuideName,
        typer.Option(
            help="Guide family q(z|x): diagonal (Gaussian, independent dimensions), full "
            "(Gaussian, full covariance) or iaf (diagonal Gaussian then inverse autoregressive "
            "flows)."
        ),
    ] = ModelConfig.guide,
    flows: Annotated[
        int | None,
        typer.Option(min=1, help="Flows K of the iaf guide.", show_default="2"),
    ] = None,
    prior: Annotated[PriorName, typer.Option(help="Prior p(z).")] = ModelConfig.prior,
    likelihood: Annotated[
        LikelihoodName, typer.Option(help="Likelihood p(x|z) around the decoder's output.")
    ] = ModelConfig.likelihood,
    sigma: Annotated[
        float | None,
        typer.Option(
            callback=_positive,
            help="Standard deviation σ of the gaussian likelihood N(x; x̂, σ²I).",
            show_default="1.0",
        ),
    ] = None,
    components: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Mixture components K of the mog and vamp priors.",
            show_default="10 for mog, 50 for vamp",
        ),
    ] = None,
    binarize: Annotated[
        Binarization,
        typer.Option(
            help="Turn grey pixels into binary ones for the bernoulli likelihood: static "
            "(sampled once) or dynamic (resampled every batch)."
        ),
    ] = DataConfig.binarize,
    seed: Annotated[
        int,
        typer.Option(min=0, max=MAX_SEED, help="Seed for weights, batch order and samples of z."),
    ] = TrainConfig.seed,
    device: DeviceOption = TrainConfig.device,
    resume: Annotated[
        Path | None,
        typer.Option(help="Continue the run in this directory from its last checkpoint."),
    ] = None,
    checkpoint_every: Annotated[
        int | None,
        typer.Option(
            min=1, help="Also save a checkpoint every this many steps.", show_default="every epoch"
        ),
    ] = None,
    beta: Annotated[
        float,
        typer.Option(
            callback=_positive,
            help="Weight β of the KL term (β-VAE); every reported ELBO stays the ELBO itself.",
        ),
    ] = TrainConfig.beta,
    kl_warmup: Annotated[
        int,
        typer.Option(
            min=0, help="Epochs over which β rises linearly, step by step, from near 0 to --beta."
        ),
    ] = TrainConfig.kl_warmup,
    free_bits: Annotated[
        float,
        typer.Option(
            min=0,
            help="Nats each latent dimension's KL counts at least (--elbo analytic, with the "
            "standard or gaussian prior).",
        ),
    ] = TrainConfig.free_bits,
    lr_schedule: Annotated[
        LrSchedule,
        typer.Option(
            help="Learning rate over the epochs: cosine (down to --lr-min), step (× --lr-factor "
            "every --lr-step epochs), plateau (× --lr-factor after --lr-step epochs without gain)."
        ),
    ] = TrainConfig.lr_schedule,
    lr_step: Annotated[
        int,
        typer.Option(
            min=1,
            help="step: epochs between two cuts; plateau: epochs without a better validation "
            "ELBO before a cut (not --patience, which stops the run).",
        ),
    ] = TrainConfig.lr_step,
    lr_factor: Annotated[
        float, typer.Option(help="What a step or plateau cut multiplies the rate by (0 to 1).")
    ] = TrainConfig.lr_factor,
    lr_min: Annotated[
        float, typer.Option(min=0, help="The rate the cosine schedule ends at.")
    ] = TrainConfig.lr_min,
    tensorboard: Annotated[
        bool,
        typer.Option(
            "--tensorboard",
            help="Also write TensorBoard events into the run directory (curves, pictures, "
            "hyperparameters): pip install 'pyro-vae[tensorboard]'.",
        ),
    ] = False,
    config_file: Annotated[
        Path | None,
        typer.Option(
            "--config",
            help="Start from this configuration: a run's config.json, or a JSON or TOML file "
            "of its sections (model, data, train); options given here override it.",
            show_default=False,
        ),
    ] = None,
    patience: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Stop after this many epochs without a better validation ELBO; best.pt keeps "
            "the best model, which evaluate and the pictures then use.",
            show_default="never",
        ),
    ] = None,
) -> None:
    """Train a VAE with SVI and write a run directory (checkpoint, metrics, pictures).

    Ctrl-C stops after the current step and saves a checkpoint; --resume RUN continues it.
    Started by torchrun (torchrun --nproc_per_node=N cli.py train ...), N processes train one
    model data-parallel; --batch-size is then the batch of all of them together.
    """
    replicas = Replicas.from_environment()
    if resume is not None:
        if config_file is not None:
            raise UserInputError(
                "--resume continues a run with its own configuration: drop --config (to train "
                "anew from it, give --config RUN/config.json without --resume)"
            )
        refuse_changes_on_resume(ctx, out, resume)
        explicit = explicit_options(ctx)
        changes = {
            name: value
            for name, value in (
                ("epochs", epochs),
                ("lr", lr),
                ("device", device),
                ("patience", patience),
            )
            if name in explicit
        }
        moved = {
            "data_path": str(data) if data is not None else None,
            "data_dir": str(data_dir) if "data_dir" in explicit else None,
        }
        with training(replicas, checkpoint_every, tensorboard) as (hooks, stops):
            result = resume_run(resume, changes, hooks, replicas, **moved)
        return summarise(result, replicas, stops, tensorboard)

    explicit = explicit_options(ctx)
    options = dict(ctx.params)
    if config_file is not None:  # the file's values where the command line gave none
        sections = read_config_file(str(config_file))
        options.update(config_file_options(config_file, sections, explicit, options))
    try:
        config = _run_config(options, explicit)
    except TypeError as error:  # only a file's value can have the wrong type: options are parsed
        if config_file is None:
            raise
        raise UserInputError(
            f"--config {config_file}: a value has the wrong type ({error})"
        ) from None
    if config_file is not None:  # and what no option expresses (component options, say)
        config = with_config_file(config, config_file, sections, explicit)
    if config.data.dataset == "folder" and Path(out or ".").resolve().is_relative_to(
        Path(config.data.path).resolve()
    ):
        raise UserInputError(
            f"the run directory would lie inside the image folder {config.data.path}, whose "
            "images its pictures would join: choose --out outside it (or run from elsewhere)"
        )
    if out is None:
        if replicas.distributed:  # the processes' clocks may straddle a second
            raise UserInputError("a run started by torchrun needs its directory: pass --out DIR")
        path = config.data.path
        name = Path(path).stem if path is not None else config.data.dataset
        out = Path("runs") / time.strftime(f"{name}-%Y%m%d-%H%M%S")
    with training(replicas, checkpoint_every, tensorboard) as (hooks, stops):
        try:
            result = train_run(config, out, overwrite, hooks, replicas)
        except TrainingDiverged as error:
            if error.resumable or error.lower_lr is None:
                raise
            again = command_line(ctx, {"lr": error.lower_lr, "out": out, "overwrite": False})
            raise UserInputError(f"{error}: {again}") from None
    summarise(result, replicas, stops, tensorboard)


def _run_config(options: dict[str, Any], explicit: set[str]) -> RunConfig:
    """The run's configuration from ``train``'s option values (by parameter name)."""
    o = {name: value.value if isinstance(value, Enum) else value for name, value in options.items()}
    used = {"constant": (), "cosine": ("lr_min",), "step": ("lr_step", "lr_factor")}
    used["plateau"] = used["step"]
    for name in ("lr_min", "lr_step", "lr_factor"):
        if name in explicit and name not in used.get(o["lr_schedule"], ()):
            takers = " or ".join(s for s, names in used.items() if name in names)
            raise UserInputError(
                f"--{name.replace('_', '-')} applies to --lr-schedule {takers}, not "
                f"{o['lr_schedule']}: drop it, or choose that schedule"
            )
    data = o["data"]
    if data is not None and "dataset" in explicit:
        raise UserInputError("--data and --dataset both name the data: give one of them")
    if data is not None and not data.exists():
        raise UserInputError(
            f"no file or folder at {data}: give a .npy/.npz file or a folder of images (--data)"
        )
    dataset = o["dataset"] if data is None else "folder" if data.is_dir() else "array"
    for name, applies in (
        ("image_size", "folder"),
        ("crop", "folder"),
        ("channels", "folder"),
        ("layout", "array"),
    ):
        if name in explicit and dataset != applies:
            what = "--data DIR (a folder of images)" if applies == "folder" else "--data FILE"
            raise UserInputError(
                f"--{name.replace('_', '-')} applies to {what}, not to {dataset}: drop it"
            )
    guide_options = _component_options(
        GUIDES, "guide", o["guide"], {"--flows": ("flows", o["flows"])}, explicit
    )
    prior_options = _component_options(
        PRIORS,
        "prior",
        o["prior"],
        {"--components": ("num_components", o["components"])},
        explicit,
    )
    likelihood_options = _component_options(
        LIKELIHOODS, "likelihood", o["likelihood"], {"--sigma": ("sigma", o["sigma"])}, explicit
    )
    return RunConfig(
        model=ModelConfig(
            latent_dim=o["latent_dim"],
            network=o["network"],
            hidden_dims=None
            if o["hidden_dims"] is None
            else tuple(int(size) for size in str(o["hidden_dims"]).split(",")),
            kind=o["model"],
            guide=o["guide"],
            guide_options=guide_options,
            prior=o["prior"],
            likelihood=o["likelihood"],
            prior_options=prior_options,
            likelihood_options=likelihood_options,
        ),
        data=DataConfig(
            dataset=dataset,
            path=None if data is None else str(data),
            data_dir=str(o["data_dir"]),
            download=o["download"],
            binarize=o["binarize"],
            image_size=_size_pair(o["image_size"]),
            crop=o["crop"],
            channels=o["channels"],
            layout=o["layout"],
        ),
        train=TrainConfig(**{name: o[name] for name in TRAIN_KEYS}),
    )


def _component_options(
    registry: Any, kind: str, name: str, flags: dict[str, tuple[str, Any]], explicit: set[str]
) -> dict[str, Any]:
    """The keyword arguments for component ``name`` from the flags the user set (``explicit``)
    or a --config file's values for them."""
    if name not in registry:  # a config file's misspelt name: the typer choices never let one by
        raise UserInputError(f"unknown {kind} {name!r}: choose one of {', '.join(registry)}")
    options = {}
    for flag, (parameter, value) in flags.items():
        if value is None:
            continue
        if not accepts(registry, name, parameter):
            takers = " or ".join(n for n in registry if accepts(registry, n, parameter))
            if flag[2:].replace("-", "_") in explicit:
                raise UserInputError(
                    f"{flag} applies to --{kind} {takers}, not {name}: drop {flag}"
                )
            raise UserInputError(  # the value came from a --config file
                f"the config file's [model] {kind}_options {parameter} applies to {kind} "
                f"{takers}, not {name}: remove it from the file"
            )
        options[parameter] = value
    return options


# One picture holds at most this many images: 100 × 100 tiles, beyond which none can be seen
# (and the images alone would fill the memory long before a picture of 10⁸ could be drawn).
MAX_TILES = 10_000

RunArgument = Annotated[Path, typer.Argument(help="Run directory (or its checkpoint.pt).")]


def _out_option(suffix: str, default: str) -> Any:
    def check(value: Path | None) -> Path | None:
        # Only files of the announced type are written outside a run directory, so a slip of
        # the keyboard cannot replace someone's data file with a picture.
        if value is not None and value.suffix.lower() != suffix:
            raise typer.BadParameter(f"must name a {suffix} file, got {str(value)!r}")
        return value

    return typer.Option(
        callback=check, help=f"{suffix[1:].upper()} file to write.", show_default=default
    )


def _output_path(run: Path, out: Path | None, default_name: str, model: Path) -> Path:
    """Where a command writes, checked to be writable before any work. The last epoch's model
    of a run that kept its best (``model``, from ``_model_file``) writes under its own names,
    beside the best's."""
    if model.name != BEST and (model.parent / BEST).is_file():
        default_name = f"{Path(default_name).stem}-latest{Path(default_name).suffix}"
    path = out or (run if run.is_dir() else run.parent) / default_name
    if path.name in RUN_FILES and is_run_dir(path.parent):
        raise UserInputError(f"{path} is a file of the run itself: choose another --out")
    check_writable(path.parent, "--out")
    return path


LatestOption = Annotated[
    bool,
    typer.Option(
        "--latest",
        help="Use the last epoch's model (checkpoint.pt) where the run also kept its best "
        "(best.pt, with --patience).",
    ),
]


def _model_file(run: Path, latest: bool) -> Path:
    """The checkpoint a command reads for ``run`` (a run directory or a checkpoint file): the
    run's best.pt where it kept one, unless ``latest`` asks for the last epoch's."""
    if latest and run.name == BEST:
        raise UserInputError(
            f"{run} is the best model, and --latest asks for the last epoch's: give the run "
            f"directory ({run.parent}) with --latest, or drop --latest"
        )
    if not run.is_dir():
        return run
    if (run / BEST).is_file() and not latest:
        logging.getLogger("pyro_vae.cli").info(
            "using %s, the model of the best validation ELBO (--latest: the last epoch's)",
            run / BEST,
        )
        return run / BEST
    return run / CHECKPOINT


def _load_trained(model: Path, device_name: str) -> tuple[Checkpoint, VAE, torch.device]:
    device = resolve_device(device_name)
    checkpoint = load_checkpoint(model, device)
    return checkpoint, checkpoint.build_vae(device), device


# Where a run's data are now, for the commands that read them, if they have moved since training.
MovedDataOption = Annotated[
    Path | None,
    typer.Option(
        "--data",
        help="The run's data file or image folder, if it has moved since training.",
        show_default=False,
    ),
]
MovedDataDirOption = Annotated[
    Path | None,
    typer.Option(
        help="The folder of the run's MNIST-family data, if it has moved since training.",
        show_default=False,
    ),
]


def _split(
    checkpoint: Checkpoint,
    split: "SplitName",
    device: torch.device,
    data: Path | None = None,
    data_dir: Path | None = None,
) -> Split:
    moved = {"path": None if data is None else str(data)}
    moved["data_dir"] = None if data_dir is None else str(data_dir)
    dataset = load_run_data(
        checkpoint.config.data, checkpoint.image_shape, **moved, num_images=checkpoint.num_images
    )
    return getattr(dataset.to(device), split.value)


SplitName = _choices("SplitName", ["test", "val", "train"])


@app.command()
@reports_user_errors
def evaluate(
    run: RunArgument,
    num_samples: Annotated[
        int,
        typer.Option(
            min=1, max=10**7, help="Importance samples K per image (5,000 in the literature)."
        ),
    ] = 1000,
    split: Annotated[SplitName, typer.Option(help="Images to evaluate on.")] = "test",
    seed: Annotated[int, typer.Option(min=0, max=MAX_SEED, help="Seed for the samples of z.")] = 0,
    out: Annotated[Path | None, _out_option(".json", "RUN/evaluation-SPLIT-kK.json")] = None,
    device: DeviceOption = "auto",
    latest: LatestOption = False,
    data: MovedDataOption = None,
    data_dir: MovedDataDirOption = None,
) -> None:
    """Test ELBO (closed-form and Monte Carlo KL) and the importance-weighted log p(x)."""
    model = _model_file(run, latest)
    path = _output_path(run, out, f"evaluation-{split.value}-k{num_samples}.json", model)
    checkpoint, vae, device_ = _load_trained(model, device)
    images = _split(checkpoint, split, device_, data, data_dir)
    x = images.stored  # uint8 converted per chunk
    pyro.set_rng_seed(seed)
    error = None
    with WorkProgress("codes decoded") as progress:
        if isinstance(vae, SemiSupervisedVAE):  # the class summed out, and a classifier to score
            bounds = evaluate_m2_bounds(vae, x, num_samples, on_progress=progress.update)
            error = classification_error(vae, images)
        else:
            labels = images.labels if vae.labelled else None
            bounds = evaluate_bounds(
                vae, x, num_samples, on_progress=progress.update, labels=labels
            )
    kl = kl_method("analytic", vae.prior(), vae.family_member())
    record = {
        "run": str(run),
        "model": str(model),
        "epochs_trained": len(checkpoint.trainer_state["history"]),
        "split": split.value,
        "images": x.shape[0],
        "num_samples": num_samples,
        "seed": seed,
        "analytic_kl": kl,
        "bounds": {name: asdict(bound) for name, bound in bounds.items()},
        **({} if error is None else {"classification_error": error}),
    }
    with writing(path, "--out"):
        path.write_text(json.dumps(record, indent=2) + "\n")
    if vae.labelled and not isinstance(vae, SemiSupervisedVAE):
        typer.echo("the conditional VAE's bounds are on log p(x | y), the class given")
    labels = {
        "elbo_analytic_kl": f"ELBO, {kl} KL",
        "elbo_mc_kl": "ELBO, monte-carlo KL",
        "iwae": f"log p(x) ≥ IWAE, K = {num_samples}",
    }
    typer.echo(f"{x.shape[0]} {split.value} images, {num_samples} samples of z per image")
    typer.echo(f"{'estimate':<34}{'nats per image':>20}{'bits per dim':>14}")
    for name, bound in bounds.items():
        nats = f"{bound.nats:.3f} ± {bound.standard_error:.3f}"
        typer.echo(f"{labels[name]:<34}{nats:>20}{bound.bits_per_dim:>14.4f}")
    if error is not None:
        typer.echo(f"classification error of q(y|x): {error:.2%} of {x.shape[0]} images")
    typer.echo(path)


@app.command()
@reports_user_errors
def sample(
    run: RunArgument,
    num: Annotated[
        int, typer.Option(min=1, max=MAX_TILES, help="Number of images (one picture).")
    ] = 64,
    seed: Annotated[
        int, typer.Option(min=0, max=MAX_SEED, help="Seed for the codes z ~ p(z).")
    ] = 0,
    label: Annotated[
        int | None,
        typer.Option(
            help="A model trained with labels (--model cvae or m2): draw images of this class.",
            show_default="one row per class",
        ),
    ] = None,
    out: Annotated[Path | None, _out_option(".png", "RUN/samples-seedSEED.png")] = None,
    device: DeviceOption = "auto",
    latest: LatestOption = False,
) -> None:
    """Decode z ~ p(z) with a trained VAE and save the images as a PNG."""
    model = _model_file(run, latest)
    name = f"samples-seed{seed}.png" if label is None else f"samples-class{label}-seed{seed}.png"
    path = _output_path(run, out, name, model)
    checkpoint, vae, _ = _load_trained(model, device)
    if label is not None:
        if not vae.labelled:
            raise UserInputError(
                "--label draws one class, which only a model trained with labels knows: "
                "train with --model cvae (or m2), or drop --label"
            )
        check_label(label, vae.num_classes)
    with writing(path, "--out"):
        save_samples(vae, checkpoint.image_shape, path, num, seed, label)
    typer.echo(path)


@app.command()
@reports_user_errors
def reconstruct(
    run: RunArgument,
    num: Annotated[int, typer.Option(min=1, max=MAX_TILES, help="Number of test images.")] = 16,
    out: Annotated[Path | None, _out_option(".png", "RUN/reconstructions-NUM.png")] = None,
    device: DeviceOption = "auto",
    latest: LatestOption = False,
    data: MovedDataOption = None,
    data_dir: MovedDataDirOption = None,
) -> None:
    """Show the first test images of the run's dataset beside their reconstructions."""
    model = _model_file(run, latest)
    checkpoint, vae, device_ = _load_trained(model, device)
    test = _split(checkpoint, SplitName.test, device_, data, data_dir)
    images = test.rows(slice(0, num))
    if images.shape[0] < num:
        _note(f"the test split has {images.shape[0]} images: showing all of them, not {num}")
    path = _output_path(run, out, f"reconstructions-{images.shape[0]}.png", model)
    labels = test.labels[: images.shape[0]] if vae.labelled else None
    with writing(path, "--out"):
        save_reconstructions(vae, images, checkpoint.image_shape, path, labels)
    typer.echo(path)


@app.command()
@reports_user_errors
def interpolate(
    run: RunArgument,
    pairs: Annotated[
        int, typer.Option(min=1, max=1000, help="Rows: pairs of consecutive test images.")
    ] = 4,
    steps: Annotated[
        int, typer.Option(min=2, max=1000, help="Decodes between the two images.")
    ] = 10,
    out: Annotated[Path | None, _out_option(".png", "RUN/interpolations.png")] = None,
    device: DeviceOption = "auto",
    latest: LatestOption = False,
    data: MovedDataOption = None,
    data_dir: MovedDataDirOption = None,
) -> None:
    """Decode along the line between the posterior means of pairs of test images."""
    model = _model_file(run, latest)
    path = _output_path(run, out, "interpolations.png", model)
    checkpoint, vae, device_ = _load_trained(model, device)
    test = _split(checkpoint, SplitName.test, device_, data, data_dir)
    x = test.rows(slice(0, 2 * pairs))
    if x.shape[0] < 2 * pairs:
        raise UserInputError(f"the test split has {x.shape[0]} images: ask for fewer --pairs")
    y = test.labels[: 2 * pairs] if vae.labelled else None
    with writing(path, "--out"):
        save_interpolations(vae, x[0::2], x[1::2], checkpoint.image_shape, path, steps, y)
    typer.echo(path)


@app.command()
@reports_user_errors
def latent(
    run: RunArgument,
    split: Annotated[SplitName, typer.Option(help="Images to encode.")] = "test",
    out: Annotated[Path | None, _out_option(".png", "RUN/latent-SPLIT.png")] = None,
    device: DeviceOption = "auto",
    latest: LatestOption = False,
    data: MovedDataOption = None,
    data_dir: MovedDataDirOption = None,
) -> None:
    """Scatter the posterior means of a split, coloured by label (PCA beyond two dimensions)."""
    model = _model_file(run, latest)
    path = _output_path(run, out, f"latent-{split.value}.png", model)
    checkpoint, vae, device_ = _load_trained(model, device)
    images = _split(checkpoint, split, device_, data, data_dir)
    with writing(path, "--out"):
        save_latent_scatter(vae, images.stored, images.labels, path, vae.labelled)
    typer.echo(path)


@app.command()
@reports_user_errors
def manifold(
    run: RunArgument,
    grid: Annotated[int, typer.Option(min=2, max=100, help="Decodes per side of the grid.")] = 20,
    dims: Annotated[
        str, typer.Option(help="The two latent coordinates to vary; the others stay at 0.")
    ] = "0,1",
    label: Annotated[
        int | None,
        typer.Option(
            help="A model trained with labels (--model cvae or m2): the class to decode as.",
            show_default="0",
        ),
    ] = None,
    out: Annotated[Path | None, _out_option(".png", "RUN/manifold.png")] = None,
    device: DeviceOption = "auto",
    latest: LatestOption = False,
) -> None:
    """Decode a grid over two latent coordinates at normal quantiles (Kingma & Welling, 2014)."""
    model = _model_file(run, latest)
    try:
        i, j = (int(d) for d in dims.split(","))
    except ValueError:
        raise UserInputError(f"--dims takes two coordinates such as 0,1, got {dims!r}") from None
    path = _output_path(run, out, "manifold.png", model)
    checkpoint, vae, _ = _load_trained(model, device)
    if label is not None and not vae.labelled:
        raise UserInputError(
            "--label decodes as one class, which only a model trained with labels knows: drop it"
        )
    if vae.labelled:
        check_label(label or 0, vae.num_classes)
    with writing(path, "--out"):
        save_manifold(vae, checkpoint.image_shape, path, grid, (i, j), label)
    typer.echo(path)


EXPERIMENTS = Path(__file__).resolve().parent / "experiments"
ExperimentName = _choices(
    "ExperimentName",
    [
        "estimators",
        "priors",
        "posterior_collapse",
        "rate_distortion",
        "networks",
        "guides",
        "semi_supervised",
    ],
)


@app.command()
@reports_user_errors
def experiment(
    name: Annotated[ExperimentName, typer.Argument(help="Which script of experiments/ to run.")],
    quick: Annotated[
        bool, typer.Option("--quick", help="A tiny budget that only checks the script runs.")
    ] = False,
) -> None:
    """Run an experiment from experiments/, which writes its report under experiments/results/."""
    script = EXPERIMENTS / f"{name.value}.py"
    if not script.is_file():
        raise UserInputError(
            "the experiments ship with the source checkout, not the installed package: "
            "run this from a clone of pyro-vae (python cli.py experiment ...)"
        )
    command = [sys.executable, str(script), *(["--quick"] if quick else [])]
    raise typer.Exit(subprocess.run(command, check=False).returncode)


def main() -> None:
    """The ``pyro-vae`` command. Under torchrun, a process that fails with a traceback records
    it where torchrun's failure summary shows it."""
    try:
        if "TORCHELASTIC_RUN_ID" in os.environ:
            from torch.distributed.elastic.multiprocessing.errors import record

            record(app)()
        else:
            app()
    except SystemExit as done:
        _exit_now(done.code)
    _exit_now(0)


def _exit_now(code: int | str | None) -> NoReturn:
    """Exit with ``code`` without tearing the interpreter down.

    Freeing torch's modules one by one at exit takes about a second on 2 CPU cores (1.2 s
    measured for torch and torch._dynamo, which torch.optim imports), after every file of the
    command is written and closed. What an orderly exit does that matters still happens: the
    atexit handlers run (logging's flush among them) and the standard streams are flushed.
    Only the command line does this; the library and the app called in-process exit normally.
    """
    if isinstance(code, str):  # sys.exit("message"): the message on stderr, status 1
        print(code, file=sys.stderr)
        code = 1
    status = 0 if code is None else code
    atexit._run_exitfuncs()  # CPython's own: the handlers an interpreter exit would run
    for stream in (sys.stdout, sys.stderr):
        if stream is None:  # started with that descriptor closed
            continue
        try:
            stream.flush()
        except (OSError, ValueError):  # a full disk or a closed pipe: the output was not written
            status = status or 1
    os._exit(status)


if __name__ == "__main__":
    main()
