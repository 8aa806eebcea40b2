"""The ``train`` and ``experiment`` commands: they parse options, call the library and show what
happened. The commands on a trained run are in runs.py and use.py, what they all share in
common.py.
"""

import logging
import math
import subprocess
import sys
import time
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer

from pyro_vae import (
    DATASETS,
    ESTIMATORS,
    GUIDES,
    LIKELIHOODS,
    PRIORS,
    DataConfig,
    ModelConfig,
    RunConfig,
    TrainConfig,
    TrainingDiverged,
    UserInputError,
    resume_run,
    train_run,
)
from pyro_vae.cli.common import DeviceOption, app, choices, reports_user_errors, set_debug
from pyro_vae.cli.training import (
    TRAIN_KEYS,
    command_line,
    config_file_options,
    explicit_options,
    refuse_changes_on_resume,
    summarise,
    training,
    with_config_file,
)
from pyro_vae.components.networks import NETWORKS
from pyro_vae.core.config import (
    BINARIZATIONS,
    LAYOUTS,
    LR_SCHEDULES,
    MAX_SEED,
    MODEL_KINDS,
    SPLITS,
    read_config_file,
)
from pyro_vae.core.registry import accepts, registered
from pyro_vae.inference.distributed import Replicas

Estimator = choices("Estimator", ESTIMATORS)
PriorName = choices("PriorName", PRIORS)
LikelihoodName = choices("LikelihoodName", LIKELIHOODS)
NetworkName = choices("NetworkName", NETWORKS)
GuideName = choices("GuideName", GUIDES)
Layout = choices("Layout", LAYOUTS)
DatasetName = choices("DatasetName", DATASETS)
LrSchedule = choices("LrSchedule", LR_SCHEDULES)
Binarization = choices("Binarization", BINARIZATIONS)
SplitKind = choices("SplitKind", SPLITS)
ModelKind = choices("ModelKind", MODEL_KINDS)

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
    set_debug(debug)
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
    split: Annotated[
        SplitKind,
        typer.Option(
            help="Held-out images: seeded (drawn at random with a fixed seed) or paper (the "
            "MNIST family's official test images, its last 10,000 training images for "
            "validation, the first 50,000 for training)."
        ),
    ] = DataConfig.split,
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
            split=o["split"],
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
    registered(registry, name, kind)  # a config file's name: the typer choices never let one by
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


# The commands that read a trained run, declared on the same app after train (--help's order).

EXPERIMENTS = Path(__file__).resolve().parents[2] / "experiments"  # in a source checkout
ExperimentName = choices(
    "ExperimentName",
    [
        "estimators",
        "priors",
        "posterior_collapse",
        "rate_distortion",
        "networks",
        "guides",
        "semi_supervised",
        "conditional",
        "anomaly",
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
