"""The commands that read a trained run: evaluate, sample, reconstruct, interpolate, latent and
manifold (on the app of common.py; the package imports this module to register them).
"""

import json
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Any

import pyro
import torch
import typer

from pyro_vae import VAE, Checkpoint, UserInputError, load_checkpoint, resolve_device
from pyro_vae.cli.common import DeviceOption, app, choices, note, reports_user_errors
from pyro_vae.cli.training import WorkProgress
from pyro_vae.core.config import MAX_SEED
from pyro_vae.data.datasets import Split, load_run_data
from pyro_vae.data.labels import check_label
from pyro_vae.inference.evaluate import classification_error, evaluate_bounds
from pyro_vae.inference.objectives import kl_method
from pyro_vae.runs.outputs import WRITTEN_BY, check_output
from pyro_vae.runs.pictures import (
    save_interpolations,
    save_latent_scatter,
    save_manifold,
    save_reconstructions,
    save_samples,
)
from pyro_vae.runs.rundir import BEST, RUN_FILES, is_run_dir, writing
from pyro_vae.runs.trained import model_file

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


def _output_path(
    run: Path,
    out: Path | None,
    default_name: str,
    model: Path,
    overwrite: bool,
    checkpoint: Checkpoint,
) -> Path:
    """Where a command writes, checked before any work: writable, not a file of the user's
    that the tool did not write (unless ``overwrite``), not in the run's image folder
    (outputs.check_output). The last epoch's model of a run that kept its best (``model``,
    from ``model_file``) writes under its own names, beside the best's."""
    if model.name != BEST and (model.parent / BEST).is_file():
        default_name = f"{Path(default_name).stem}-latest{Path(default_name).suffix}"
    path = out or (run if run.is_dir() else run.parent) / default_name
    if path.name in RUN_FILES and is_run_dir(path.parent):
        raise UserInputError(f"{path} is a file of the run itself: choose another --out")
    check_output(path, overwrite, data=checkpoint.config.data)
    return path


OverwriteOption = Annotated[
    bool,
    typer.Option("--overwrite", help="Replace an existing --out file that pyro-vae did not write."),
]

LatestOption = Annotated[
    bool,
    typer.Option(
        "--latest",
        help="Use the last epoch's model (checkpoint.pt) where the run also kept its best "
        "(best.pt, with --patience).",
    ),
]


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


def _check_label(vae: VAE, label: int | None) -> None:
    """--label names a class of a model trained with labels."""
    if label is None:
        return
    if not vae.labelled:
        raise UserInputError(
            "--label names a class, which only a model trained with labels knows: train with "
            "--model cvae (or m2), or drop --label"
        )
    check_label(label, vae.num_classes)


SplitName = choices("SplitName", ["test", "val", "train"])


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
    overwrite: OverwriteOption = False,
    data: MovedDataOption = None,
    data_dir: MovedDataDirOption = None,
) -> None:
    """Test ELBO (closed-form and Monte Carlo KL) and the importance-weighted log p(x); for
    M2, its ELBO and importance-weighted bound with the class summed out, and its test error."""
    model = model_file(run, latest)
    checkpoint, vae, device_ = _load_trained(model, device)
    name = f"evaluation-{split.value}-k{num_samples}.json"
    path = _output_path(run, out, name, model, overwrite, checkpoint)
    images = _split(checkpoint, split, device_, data, data_dir)
    x = images.stored  # uint8 converted per chunk
    pyro.set_rng_seed(seed)
    labels = images.labels if vae.labelled else None
    with WorkProgress("codes decoded") as progress:
        bounds = evaluate_bounds(vae, x, num_samples, on_progress=progress.update, labels=labels)
    error = classification_error(vae, images) if vae.classifies else None
    kl = kl_method("analytic", vae.prior(), vae.family_member())
    record = {
        "written_by": WRITTEN_BY,  # so that a later --out may replace it (runs/outputs.py)
        "run": str(run),
        "model": str(model),
        "epochs_trained": len(checkpoint.trainer_state["history"]),
        "split": split.value,
        "images": x.shape[0],
        "num_samples": num_samples,
        "seed": seed,
        "analytic_kl": kl,
        "bounds": {name: asdict(bound) for name, bound in bounds.items()},
        "bounds_on": "codes z1 = mu1(x) of M1" if getattr(vae, "codes", None) else "x",
        **({} if error is None else {"classification_error": error}),
    }
    with writing(path, "--out"):
        path.write_text(json.dumps(record, indent=2) + "\n")
    if vae.labelled and not vae.semi_supervised:  # M2's bound sums the class out
        typer.echo("the conditional VAE's bounds are on log p(x | y), the class given")
    on_codes = getattr(vae, "codes", None) is not None
    if on_codes:  # M1+M2 (models/stacked.py)
        typer.echo(
            "M1+M2's bounds are on log p(z₁), the density of M1's codes z₁ = μ₁(x), not on "
            "log p(x); bits per dim divide them by the images' dimensions"
        )
    labels = {
        "elbo_analytic_kl": f"ELBO, {kl} KL",
        "elbo_mc_kl": "ELBO, monte-carlo KL",
        "iwae": f"log p({'z₁' if on_codes else 'x'}) ≥ IWAE, K = {num_samples}",
    }
    typer.echo(f"{x.shape[0]} {split.value} images, {num_samples} samples of z per image")
    typer.echo(f"{'estimate':<34}{'nats per image':>20}{'bits per dim':>14}")
    if kl == "monte-carlo" and "elbo_mc_kl" in bounds:
        # No closed form for this prior and guide: the "analytic" ELBO sampled its KL from the
        # same z, so it is the Monte Carlo row again. One row; the record keeps both keys.
        bounds = {name: bound for name, bound in bounds.items() if name != "elbo_analytic_kl"}
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
    overwrite: OverwriteOption = False,
) -> None:
    """Decode z ~ p(z) with a trained VAE and save the images as a PNG."""
    model = model_file(run, latest)
    name = f"samples-seed{seed}.png" if label is None else f"samples-class{label}-seed{seed}.png"
    checkpoint, vae, _ = _load_trained(model, device)
    path = _output_path(run, out, name, model, overwrite, checkpoint)
    _check_label(vae, label)
    with writing(path, "--out"):
        save_samples(vae, checkpoint.image_shape, path, num, seed, label, checkpoint.class_names)
    typer.echo(path)


@app.command()
@reports_user_errors
def reconstruct(
    run: RunArgument,
    num: Annotated[int, typer.Option(min=1, max=MAX_TILES, help="Number of test images.")] = 16,
    out: Annotated[Path | None, _out_option(".png", "RUN/reconstructions-NUM.png")] = None,
    device: DeviceOption = "auto",
    latest: LatestOption = False,
    overwrite: OverwriteOption = False,
    data: MovedDataOption = None,
    data_dir: MovedDataDirOption = None,
) -> None:
    """Show the first test images of the run's dataset beside their reconstructions."""
    model = model_file(run, latest)
    checkpoint, vae, device_ = _load_trained(model, device)
    test = _split(checkpoint, SplitName.test, device_, data, data_dir)
    images = test.rows(slice(0, num))
    if images.shape[0] < num:
        note(f"the test split has {images.shape[0]} images: showing all of them, not {num}")
    name = f"reconstructions-{images.shape[0]}.png"
    path = _output_path(run, out, name, model, overwrite, checkpoint)
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
    overwrite: OverwriteOption = False,
    data: MovedDataOption = None,
    data_dir: MovedDataDirOption = None,
) -> None:
    """Decode along the line between the posterior means of pairs of test images."""
    model = model_file(run, latest)
    checkpoint, vae, device_ = _load_trained(model, device)
    path = _output_path(run, out, "interpolations.png", model, overwrite, checkpoint)
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
    overwrite: OverwriteOption = False,
    data: MovedDataOption = None,
    data_dir: MovedDataDirOption = None,
) -> None:
    """Scatter the posterior means of a split, coloured by label (PCA beyond two dimensions)."""
    model = model_file(run, latest)
    checkpoint, vae, device_ = _load_trained(model, device)
    path = _output_path(run, out, f"latent-{split.value}.png", model, overwrite, checkpoint)
    images = _split(checkpoint, split, device_, data, data_dir)
    with writing(path, "--out"):
        save_latent_scatter(
            vae, images.stored, images.labels, path, vae.labelled, checkpoint.class_names
        )
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
    overwrite: OverwriteOption = False,
) -> None:
    """Decode a grid over two latent coordinates at normal quantiles (Kingma & Welling, 2014)."""
    model = model_file(run, latest)
    try:
        i, j = (int(d) for d in dims.split(","))
    except ValueError:
        raise UserInputError(f"--dims takes two coordinates such as 0,1, got {dims!r}") from None
    checkpoint, vae, _ = _load_trained(model, device)
    path = _output_path(run, out, "manifold.png", model, overwrite, checkpoint)
    _check_label(vae, label)
    with writing(path, "--out"):
        save_manifold(
            vae, checkpoint.image_shape, path, grid, (i, j), label, checkpoint.class_names
        )
    typer.echo(path)
