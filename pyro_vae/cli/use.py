"""The commands that use a trained run on data: encode, score, generate and export (on the app of
common.py; the package imports this module to register them). Each reads new data with ``--data``
(a file or folder, made into the run's kind of rows by its data transform) or a split of the
run's own data, and writes tables, arrays or files that nothing of the user's is replaced by.
"""

import json
from pathlib import Path
from typing import Annotated

import numpy as np
import pyro
import torch
import typer

from pyro_vae import UserInputError
from pyro_vae.cli.common import DeviceOption, app, note, reports_user_errors
from pyro_vae.cli.runs import MAX_TILES, LatestOption, MovedDataDirOption, SplitName
from pyro_vae.cli.training import WorkProgress
from pyro_vae.core.config import MAX_SEED
from pyro_vae.data.transform import NewData
from pyro_vae.inference.evaluate import Bound, classification_error
from pyro_vae.runs.figures import save_image_grid
from pyro_vae.runs.model_card import model_card
from pyro_vae.runs.outputs import (
    PNG_METADATA,
    check_output,
    check_output_folder,
    check_table_suffix,
    write_table,
    written_whole,
)
from pyro_vae.runs.rundir import is_run_dir, writing
from pyro_vae.runs.trained import (
    CARD,
    DESCRIPTION,
    WEIGHTS,
    TrainedModel,
    export_run,
    is_export,
    load_run,
)

RunArgument = Annotated[
    Path,
    typer.Argument(help="Run directory (or its checkpoint.pt), or a folder written by export."),
]
NewDataOption = Annotated[
    Path | None,
    typer.Option(
        "--data",
        help="New data: an array (.npy, .npz with x and y), an image file, a folder of images "
        "(class subfolders give labels) or an IDX file.",
        show_default="the run's --split",
    ),
]
LabelOption = Annotated[
    int | None,
    typer.Option(
        help="A model trained with labels: read every image as this class.",
        show_default="the data's labels; M2: its classifier's",
    ),
]
SeedOption = Annotated[int, typer.Option(min=0, max=MAX_SEED, help="Seed for the samples of z.")]
OverwriteOption = Annotated[
    bool, typer.Option("--overwrite", help="Replace an existing output file of yours.")
]


RunDataOption = Annotated[
    Path | None,
    typer.Option(
        help="Without --data: the run's data file or image folder, if it has moved since training.",
        show_default=False,
    ),
]


def _read(
    model: TrainedModel,
    data: Path | None,
    split: SplitName,
    run_data: Path | None,
    data_dir: Path | None,
) -> NewData:
    if data is not None:
        return model.data(data)
    try:
        return model.split(
            split.value,
            path=None if run_data is None else str(run_data),
            data_dir=None if data_dir is None else str(data_dir),
        )
    except UserInputError as error:
        raise UserInputError(
            f"the run's {split.value} images cannot be read ({error.marked.rstrip('.')}); if "
            "they have moved, --run-data (a data file or image folder) or --data-dir (the MNIST "
            "family's folder) says where they are now, and --data reads new data instead"
        ) from None


def _describe(new: NewData) -> dict[str, np.ndarray]:
    """The columns that say which image a row is: its index, file and label where known."""
    columns = {"index": np.arange(len(new))}
    if new.names is not None:
        columns["file"] = np.array(new.names)
    if new.labels is not None:
        columns["label"] = new.labels.cpu().numpy()
    return columns


@app.command()
@reports_user_errors
def encode(
    run: RunArgument,
    out: Annotated[
        Path, typer.Option(help="Table to write: .npy (a structured array), .csv or .parquet.")
    ],
    data: NewDataOption = None,
    split: Annotated[SplitName, typer.Option(help="Without --data: the run's images.")] = "test",
    label: LabelOption = None,
    num_samples: Annotated[
        int,
        typer.Option(min=2, max=100_000, help="A flow guide's draws of z per image."),
    ] = 256,
    overwrite: OverwriteOption = False,
    device: DeviceOption = "auto",
    latest: LatestOption = False,
    run_data: RunDataOption = None,
    data_dir: MovedDataDirOption = None,
) -> None:
    """Per image, the mean and standard deviation of q(z|x) over each latent coordinate."""
    check_table_suffix(out)
    model = load_run(run, device, latest)
    check_output(out, overwrite, data=model.config.data)
    new = _read(model, data, split, run_data, data_dir)
    codes = model.codes(new, label=label, num_samples=num_samples)
    columns = _describe(new)
    if codes.classes is not None:
        columns["class"] = codes.classes.cpu().numpy()  # the class each code was computed for
    columns["mean"] = codes.mean.cpu().numpy()
    columns["std"] = codes.std.cpu().numpy()
    with writing(out, "--out"):
        write_table(out, columns)
    if not codes.exact:
        note(
            f"the {model.config.model.guide} guide has no closed-form mean: mean and std are "
            f"estimated from {num_samples} draws of z per image (--num-samples)"
        )
    typer.echo(f"{len(new)} codes of {codes.mean.shape[1]} dimensions")
    typer.echo(out)


@app.command()
@reports_user_errors
def score(
    run: RunArgument,
    out: Annotated[Path, typer.Option(help="Table to write: .csv, .npy or .parquet.")],
    data: NewDataOption = None,
    split: Annotated[SplitName, typer.Option(help="Without --data: the run's images.")] = "test",
    num_samples: Annotated[
        int, typer.Option(min=1, max=10**6, help="Importance samples K per image.")
    ] = 1000,
    label: LabelOption = None,
    top: Annotated[
        int,
        typer.Option(
            min=0, max=MAX_TILES, help="Show and draw this many of the most unusual images."
        ),
    ] = 16,
    seed: SeedOption = 0,
    overwrite: OverwriteOption = False,
    device: DeviceOption = "auto",
    latest: LatestOption = False,
    run_data: RunDataOption = None,
    data_dir: MovedDataDirOption = None,
) -> None:
    """Per image, the ELBO and the importance-weighted bound on log p(x), in nats and bits per
    dimension, the most unusual (lowest bound) first; and a picture of the --top of them."""
    check_table_suffix(out)
    picture = out.with_name(f"{out.stem}-top{top}.png")
    model = load_run(run, device, latest)
    check_output(out, overwrite, data=model.config.data)
    draw = top > 0 and model.image_shape[:2] != (1, 1)  # vectors make no picture
    if draw:
        check_output(picture, overwrite, data=model.config.data)
        if data is not None and data.is_dir() and data.resolve() in picture.resolve().parents:
            raise UserInputError(
                f"{picture} would add an image to the folder being scored ({data}): write "
                "--out elsewhere, or pass --top 0"
            )
    new = _read(model, data, split, run_data, data_dir)
    pyro.set_rng_seed(seed)
    with WorkProgress("codes decoded") as progress:
        scores = model.score(new, num_samples=num_samples, on_progress=progress.update, label=label)
    order = torch.argsort(scores.iwae).cpu().numpy()  # most unusual first
    columns = {
        **_describe(new),
        "elbo_nats": scores.elbo.cpu().numpy(),
        "iwae_nats": scores.iwae.cpu().numpy(),
        "elbo_bits_per_dim": scores.bits_per_dim(scores.elbo).cpu().numpy(),
        "iwae_bits_per_dim": scores.bits_per_dim(scores.iwae).cpu().numpy(),
    }
    with writing(out, "--out"):
        write_table(out, {name: values[order] for name, values in columns.items()})
    for name, values in (("ELBO", scores.elbo), (f"IWAE, K = {num_samples}", scores.iwae)):
        bound = Bound.of(values, scores.data_dim)
        typer.echo(
            f"{name:<16} {bound.nats:10.3f} ± {bound.standard_error:.3f} nats per image "
            f"({bound.bits_per_dim:.4f} bits per dim) over {len(new)} images"
        )
    shown = order[:top]
    if len(shown):
        typer.echo(f"the {len(shown)} most unusual (lowest IWAE bound):")
        for i in shown:
            which = new.names[i] if new.names is not None else f"image {i}"
            typer.echo(f"  {which:<40} {columns['iwae_nats'][i]:12.3f} nats")
    if draw and len(shown):
        rows = new.x[torch.as_tensor(shown.copy(), device=new.stored.device)]
        with writing(picture, "--out"):
            save_image_grid(
                rows,
                model.image_shape,
                picture,
                ncols=min(8, len(shown)),
                title=f"{len(shown)} lowest IWAE bounds",
            )
        typer.echo(picture)
    typer.echo(out)


@app.command()
@reports_user_errors
def generate(
    run: RunArgument,
    out: Annotated[
        Path,
        typer.Option(
            help="samples.npy (images as an array), samples.npz (x and, for a labelled "
            "model, y), or a folder (a name without a suffix): one PNG per image."
        ),
    ],
    num: Annotated[int, typer.Option(min=1, max=10**6, help="Number of images.")] = 64,
    label: Annotated[
        int | None,
        typer.Option(
            help="A model trained with labels: images of this class.",
            show_default="classes 0, 1, ..., K-1 in turn",
        ),
    ] = None,
    seed: Annotated[
        int, typer.Option(min=0, max=MAX_SEED, help="Seed for the codes z ~ p(z).")
    ] = 0,
    overwrite: OverwriteOption = False,
    device: DeviceOption = "auto",
    latest: LatestOption = False,
) -> None:
    """New data: decoded means of z ~ p(z), as an array or as PNG files."""
    suffix = out.suffix.lower()
    if suffix not in ("", ".npy", ".npz"):
        raise UserInputError(
            f"--out {out}: write .npy, .npz, or a folder of PNG files (a name with no suffix)"
        )
    model = load_run(run, device, latest)
    names = [f"sample-{i:06d}.png" for i in range(num)]  # one width for any --num: never mixed
    if suffix:
        check_output(out, overwrite, data=model.config.data)
    else:
        check_output(out / names[0], True, data=model.config.data)  # not in the run's data
        if model.image_shape[:2] == (1, 1):
            raise UserInputError(
                "the run's data are vectors, not images: write them as an array (--out samples.npy)"
            )
        check_output_folder(out, names, overwrite, "--out")
    images = model.sample(num, label, seed)
    classes = model.sample_classes(num, label)
    with writing(out, "--out"):
        if suffix == ".npy":
            with written_whole(out) as tmp, open(tmp, "wb") as file:
                np.save(file, images.cpu().numpy())
        elif suffix == ".npz":
            arrays = {"x": images.cpu().numpy()}
            if classes is not None:
                arrays["y"] = classes.cpu().numpy()
            with written_whole(out) as tmp, open(tmp, "wb") as file:
                np.savez(file, **arrays)
        else:
            _save_pngs(images, out, names)
    if classes is not None and label is None:
        typer.echo(f"classes 0 to {model.vae.num_classes - 1} in turn (--label K: one class)")
    typer.echo(f"{num} images of shape {tuple(images.shape[1:])}")
    typer.echo(out)


def _save_pngs(images: torch.Tensor, folder: Path, names: list[str]) -> None:
    """Each image (C, H, W), values in [0, 1] (clipped: a Gaussian's mean may stray), as PNG."""
    from PIL import Image, PngImagePlugin

    folder.mkdir(parents=True, exist_ok=True)
    info = PngImagePlugin.PngInfo()
    for key, value in PNG_METADATA.items():
        info.add_text(key, value)
    pixels = (images.clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
    for image, name in zip(pixels, names, strict=True):
        array = image[0] if image.shape[0] == 1 else image.transpose(1, 2, 0)  # (H, W[, 3])
        Image.fromarray(array).save(folder / name, pnginfo=info)


@app.command()
@reports_user_errors
def export(
    run: RunArgument,
    out: Annotated[Path, typer.Option(help="Folder to write the shareable model into.")],
    num_samples: Annotated[
        int,
        typer.Option(min=1, max=10**6, help="Importance samples K per image for the card."),
    ] = 1000,
    seed: SeedOption = 0,
    overwrite: OverwriteOption = False,
    device: DeviceOption = "auto",
    latest: LatestOption = False,
    data_dir: MovedDataDirOption = None,
    run_data: RunDataOption = None,
) -> None:
    """Write the model to share: weights (safetensors, no pickle), its configuration and data
    transform (JSON), and a model card with its held-out ELBO and IWAE bound (Markdown)."""
    model = load_run(run, device, latest)
    if is_run_dir(out):
        raise UserInputError(
            f"{out} is a run directory, whose commands would then read the export instead of "
            "the run: choose another --out"
        )
    if is_export(out):
        overwrite = True  # an earlier export: its three files are the tool's own
    check_output(out / WEIGHTS, True, data=model.config.data)  # not in the run's data
    check_output_folder(out, [WEIGHTS, DESCRIPTION, CARD], overwrite, "--out")
    test = _read(model, None, SplitName.test, run_data, data_dir)
    pyro.set_rng_seed(seed)
    with WorkProgress("codes decoded") as progress:
        scores = model.score(test, num_samples=num_samples, on_progress=progress.update)
    error = None
    if test.labels is not None and model.vae.classifies:
        error = classification_error(model.vae, test)
    card = model_card(model, scores, len(test), error, _training_versions(run))
    with writing(out, "--out"):
        written = export_run(model, out, card)
    for path in written:
        typer.echo(path)


def _training_versions(run: Path) -> dict[str, str] | None:
    """The versions the run was trained with, from its config.json where it has one."""
    folder = run if run.is_dir() else run.parent
    try:
        record = json.loads((folder / "config.json").read_text())
        return dict(record["environment"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
