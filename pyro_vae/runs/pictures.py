"""Pictures of what a trained VAE does: from the model to images, then to PNGs via runs/figures.py.

Every picture shows means of p(x|z), not samples with pixel noise, and images in their own
channels (grey or RGB) at their true height and width: the dataset's ``image_shape``, (C, H, W),
or (H, W) for grey in a checkpoint from before colour.
"""

import logging
from collections.abc import Sequence
from pathlib import Path

import pyro
import torch

from pyro_vae.core.errors import UserInputError
from pyro_vae.data.datasets import as_float
from pyro_vae.models.vae import VAE
from pyro_vae.runs import figures as plots

log = logging.getLogger(__name__)


def class_title(label: int, class_names: Sequence[str] = ()) -> str:
    """ "class K", and its name where the data named their classes (an image folder's)."""
    named = 0 <= label < len(class_names)
    return f"class {label}" + (f" ({class_names[label]})" if named else "")


@torch.no_grad()
def save_samples(
    vae: VAE,
    image_shape: Sequence[int],
    path: Path,
    num_samples: int,
    seed: int,
    label: int | None = None,
    class_names: Sequence[str] = (),
) -> Path:
    """``num_samples`` decoded means of z ~ p(z), the codes drawn with ``seed``. A model that
    reads labels draws them of class ``label``, or, with None, one row per class:
    ``num_samples`` // K images a row (one at least), class 0 at the top. ``class_names``: the
    classes' names, for the title, where the data have them."""
    pyro.set_rng_seed(seed)
    if not vae.labelled:
        return plots.save_image_grid(
            vae.generate(num_samples), image_shape, path, title="decoded means of z ~ p(z)"
        )
    device = next(vae.parameters()).device
    if label is not None:
        y = torch.full((num_samples,), label, device=device)
        title, columns = f"decoded means of z ~ p(z), {class_title(label, class_names)}", 8
    else:
        k = vae.num_classes
        columns = max(1, num_samples // k)
        if columns * k != num_samples:  # a row per class: not the number asked for
            log.info(
                "%d images asked for %d classes, a row each: drawing %d of each class, %d in "
                "all (--label K draws them all of one class)",
                num_samples, k, columns, columns * k,
            )  # fmt: skip
        y = torch.arange(k, device=device).repeat_interleave(columns)
        first, last = (class_names[0], class_names[-1]) if class_names else (0, k - 1)
        title = f"decoded means of z ~ p(z), one row per class ({first} to {last}, top to bottom)"
    images = vae.generate(len(y), y)
    return plots.save_image_grid(images, image_shape, path, ncols=columns, title=title)


@torch.no_grad()
def save_reconstructions(
    vae: VAE,
    x: torch.Tensor,
    image_shape: Sequence[int],
    path: Path,
    labels: torch.Tensor | None = None,
) -> Path:
    """The images ``x`` (N, D), each row followed by the row of their reconstructions
    (``labels``: their classes, for a model that reads them)."""
    classes = () if labels is None else (labels,)  # a VAE of the user's may take x alone
    return plots.save_reconstruction_grid(x, vae.reconstruct(x, *classes), image_shape, path)


@torch.no_grad()
def save_interpolations(
    vae: VAE,
    starts: torch.Tensor,
    ends: torch.Tensor,
    image_shape: Sequence[int],
    path: Path,
    steps: int = 10,
    labels: torch.Tensor | None = None,
) -> Path:
    """One row per pair: the start image, decodes along the straight line between the two
    codes (``vae.encode``: posterior means) of start and end, and the end image. A model that
    reads labels takes ``labels``, the classes of starts and ends interleaved (as the pairs
    were taken from one split), and decodes the whole row as the start's class."""
    if labels is None:  # a VAE of the user's may take x alone
        start_codes, end_codes = vae.encode(starts), vae.encode(ends)  # (P, latent_dim)
    else:
        start_codes, end_codes = vae.encode(starts, labels[0::2]), vae.encode(ends, labels[1::2])
    t = torch.linspace(0, 1, steps, device=starts.device).reshape(1, steps, 1)
    codes = (1 - t) * start_codes.unsqueeze(1) + t * end_codes.unsqueeze(1)  # (P, steps, L)
    if labels is None:
        decoded = vae.likelihood(vae.decoder(codes)).mean  # (P, steps, D)
    else:
        decoded = vae.decode(codes, labels[0::2].unsqueeze(1).expand(-1, steps))
    rows = torch.cat([starts.unsqueeze(1), decoded, ends.unsqueeze(1)], dim=1)  # (P, steps+2, D)
    return plots.save_image_grid(
        rows.flatten(0, 1),
        image_shape,
        path,
        ncols=steps + 2,
        title="start, decodes along μ(start) → μ(end), end",
    )


@torch.no_grad()
def save_latent_scatter(
    vae: VAE,
    x: torch.Tensor,
    labels: torch.Tensor,
    path: Path,
    encode_labels: bool = False,
    class_names: Sequence[str] = (),
) -> Path:
    """Posterior means μ(x) coloured by label; projected on two principal axes beyond 2-D.
    ``x`` may be stored uint8 rows: the encoder sees a chunk at a time. ``encode_labels``: the
    encoder reads the labels too (q(z | x, y) of a model that reads labels). ``class_names``
    name the legend's classes where the data have names."""
    codes = torch.cat(
        [
            vae.encode(as_float(chunk), *((y,) if encode_labels else ()))
            for chunk, y in zip(x.split(1024), labels.split(1024), strict=True)
        ]
    )
    if codes.shape[1] == 1:
        raise UserInputError("a 1-D latent space has no 2-D picture: train with `latent_dim` 2+")
    if codes.shape[1] == 2:
        return plots.save_scatter(
            codes, labels, path, ("z₁", "z₂"), "posterior means μ(x)", class_names
        )
    centred = codes - codes.mean(0)
    _, singular_values, directions = torch.linalg.svd(centred, full_matrices=False)
    explained = (singular_values[:2] ** 2).sum() / (singular_values**2).sum()
    return plots.save_scatter(
        centred @ directions[:2].T,
        labels,
        path,
        ("principal axis 1", "principal axis 2"),
        f"posterior means μ(x), PCA of {codes.shape[1]} dimensions "
        f"({explained:.0%} of their variance)",
        class_names,
    )


@torch.no_grad()
def save_manifold(
    vae: VAE,
    image_shape: Sequence[int],
    path: Path,
    grid_size: int = 20,
    dims: tuple[int, int] = (0, 1),
    label: int | None = None,
    class_names: Sequence[str] = (),
) -> Path:
    """Decodes over a grid of two latent coordinates (Kingma & Welling, 2014, figure 4).

    The grid is evenly spaced in probability, z = Φ⁻¹(p) for p in (0, 1), so that it covers a
    standard normal prior evenly; other coordinates stay at 0. Rows run from high z_j (top) to
    low, columns from low z_i to high. A model that reads labels decodes as class ``label``
    (None: class 0), which the title names (with its name from ``class_names``, if any).
    """
    i, j = dims
    if not (0 <= i < vae.latent_dim and 0 <= j < vae.latent_dim and i != j):
        raise UserInputError(
            f"--dims {i},{j}: need two different latent coordinates below {vae.latent_dim}"
        )
    device = next(vae.parameters()).device
    probabilities = torch.linspace(0, 1, grid_size + 2, device=device)[1:-1]
    values = torch.distributions.Normal(0.0, 1.0).icdf(probabilities)
    codes = torch.zeros(grid_size, grid_size, vae.latent_dim, device=device)
    codes[:, :, i] = values.unsqueeze(0)  # columns
    codes[:, :, j] = values.flip(0).unsqueeze(1)  # rows
    y = None
    if vae.labelled:
        y = torch.full((grid_size * grid_size,), label or 0, device=device)
    flat = codes.flatten(0, 1)
    decoded = vae.likelihood(vae.decoder(flat)).mean if y is None else vae.decode(flat, y)
    return plots.save_latent_grid(
        decoded,
        image_shape,
        path,
        values.tolist(),
        (f"z_{i}", f"z_{j}"),
        f"decodes over z_{i} and z_{j} at {grid_size} normal quantiles (other coordinates 0)"
        + (f", {class_title(label or 0, class_names)}" if vae.labelled else ""),
    )
