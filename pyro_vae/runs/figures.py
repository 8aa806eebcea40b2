"""Pictures of a run: grids of grey or RGB images, reconstructions beside their inputs, and the
ELBO curve.

Uses matplotlib's object-oriented ``Figure`` (no pyplot), so no global backend or figure state is
touched and nothing needs a display. matplotlib is imported where a picture is drawn: a third of a
second that a command which draws nothing (or not yet) does not wait for.
"""

import textwrap
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from pyro_vae.inference.trainer import EpochMetrics
from pyro_vae.runs.outputs import PNG_METADATA

PAD_VALUE = 0.5  # grey lines between images, distinct from black (0) and white (1) pixels
TITLE_POINTS = 9  # the titles' font size
# A grid of one or two small tiles is narrower than any title: its picture is at least this
# wide (the grid centred), so that the title, wrapped, takes three lines at most.
MIN_TITLED_INCHES = 2.0


def wrapped(title: str, width_inches: float) -> str:
    """``title`` broken into lines that fit ``width_inches`` at TITLE_POINTS: DejaVu Sans, the
    default font, averages under 0.6 em a character, and a tenth of an inch is kept each side."""
    per_line = max(8, int((width_inches - 0.2) * 72 / (0.6 * TITLE_POINTS)))
    return "\n".join(textwrap.wrap(title, per_line)) or title


def image_chw(image_shape: Sequence[int]) -> tuple[int, int, int]:
    """(C, H, W) of ``image_shape``: (C, H, W) with C = 1 (grey) or 3 (RGB), or (H, W) for grey
    (the shape of runs from before colour)."""
    if len(image_shape) == 2:
        height, width = image_shape
        return 1, height, width
    if len(image_shape) == 3 and image_shape[0] in (1, 3):
        channels, height, width = image_shape
        return channels, height, width
    raise ValueError(f"pictures need image_shape (H, W) or (C, H, W), C 1 or 3: {image_shape}")


def image_grid(images: torch.Tensor, image_shape: Sequence[int], ncols: int) -> torch.Tensor:
    """Tile ``images`` (N, D), flattened channel-major from (N, C, H, W), into one picture with
    1-pixel separators between tiles: (rows, cols) for grey images, (rows, cols, 3) for RGB."""
    channels, height, width = image_chw(image_shape)
    n = images.shape[0]
    nrows = -(-n // ncols)  # ceiling division
    tiles = images.detach().float().cpu().clamp(0, 1).reshape(n, channels, height, width)
    blanks = torch.full((nrows * ncols - n, channels, height, width), PAD_VALUE)
    tiles = torch.cat([tiles, blanks])
    tiles = F.pad(tiles, (1, 0, 1, 0), value=PAD_VALUE)  # separator above and left of each tile
    tiles = tiles.reshape(nrows, ncols, channels, height + 1, width + 1)
    grid = tiles.permute(0, 3, 1, 4, 2)  # (rows, H+1, cols, W+1, C)
    grid = grid.reshape(nrows * (height + 1), ncols * (width + 1), channels)
    grid = F.pad(grid, (0, 0, 0, 1, 0, 1), value=PAD_VALUE)  # close the right and bottom edges
    return grid.squeeze(-1) if channels == 1 else grid


def _show(axes, grid: torch.Tensor) -> None:
    """Draw an ``image_grid``: an RGB array as it is, a grey one on a fixed 0-to-1 grey scale."""
    if grid.ndim == 3:
        axes.imshow(grid.numpy(), interpolation="nearest")
    else:
        axes.imshow(grid.numpy(), cmap="gray", vmin=0, vmax=1, interpolation="nearest")


def save_image_grid(
    images: torch.Tensor,
    image_shape: Sequence[int],
    path: Path,
    ncols: int = 8,
    title: str | None = None,
) -> Path:
    """Save ``images`` (N, D), values in [0, 1], as a grid PNG at ``path``."""
    from matplotlib.figure import Figure

    grid = image_grid(images, image_shape, ncols)
    _, height, width = image_chw(image_shape)
    inches_per_pixel = 0.08 if max(height, width) <= 16 else 0.03  # small images, bigger pixels
    grid_width = grid.shape[1] * inches_per_pixel
    width_inches = max(grid_width, MIN_TITLED_INCHES) if title else grid_width
    title = wrapped(title, width_inches) if title else None
    # 0.4 inches for a line of title, and a line's height (1.25 × the size) for each more
    title_inches = 0.4 + title.count("\n") * 1.25 * TITLE_POINTS / 72 if title else 0.0
    height_inches = grid.shape[0] * inches_per_pixel + title_inches
    figure = Figure(figsize=(width_inches, height_inches))
    margin = (width_inches - grid_width) / 2 / width_inches  # the grid centred
    axes = figure.add_axes((margin, 0, 1 - 2 * margin, 1 - title_inches / height_inches))
    _show(axes, grid)
    axes.set_axis_off()
    if title:
        figure.suptitle(title, fontsize=TITLE_POINTS, y=1 - 0.1 / height_inches, va="top")
    figure.savefig(path, dpi=100, metadata=PNG_METADATA)
    return Path(path)


def save_latent_grid(
    images: torch.Tensor,
    image_shape: Sequence[int],
    path: Path,
    values: Sequence[float],
    axis_labels: tuple[str, str],
    title: str,
) -> Path:
    """A square grid of decodes, (rows × columns, D), with the latent values of its columns and
    rows (``values``: columns left to right; rows run the other way, high at the top) on its axes.
    """
    from matplotlib.figure import Figure

    size = len(values)
    grid = image_grid(images, image_shape, size)
    _, height, width = image_chw(image_shape)
    figure = Figure(figsize=(7, 7.4), layout="constrained")
    axes = figure.add_subplot()
    _show(axes, grid)
    shown = range(0, size, max(1, -(-size // 8)))  # at most about eight labels a side
    axes.set_xticks([k * (width + 1) + 1 + width / 2 for k in shown])
    axes.set_xticklabels([f"{values[k]:.2f}" for k in shown], fontsize=8)
    axes.set_yticks([k * (height + 1) + 1 + height / 2 for k in shown])
    axes.set_yticklabels([f"{values[size - 1 - k]:.2f}" for k in shown], fontsize=8)
    axes.set_xlabel(axis_labels[0])
    axes.set_ylabel(axis_labels[1])
    axes.set_title(wrapped(title, 7), fontsize=TITLE_POINTS, pad=8)
    figure.savefig(path, dpi=100, metadata=PNG_METADATA)
    return Path(path)


def save_reconstruction_grid(
    originals: torch.Tensor,
    reconstructions: torch.Tensor,
    image_shape: Sequence[int],
    path: Path,
    ncols: int = 8,
) -> Path:
    """Rows of inputs, each followed by the row of their reconstructions."""
    rows = []
    for start in range(0, originals.shape[0], ncols):
        rows += [originals[start : start + ncols], reconstructions[start : start + ncols]]
    return save_image_grid(
        torch.cat(rows),
        image_shape,
        path,
        ncols=min(ncols, originals.shape[0]),
        title="inputs (odd rows) and their reconstructions (even rows)",
    )


def save_elbo_curve(history: Sequence[EpochMetrics], path: Path) -> Path:
    """Training and validation ELBO (nats per image) against epochs, each labelled with its KL."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    epochs = [m.epoch for m in history]
    figure = Figure(figsize=(6, 4), layout="constrained")
    axes = figure.add_subplot()
    axes.plot(epochs, [m.train_elbo for m in history], label=f"train ({history[0].train_kl} KL)")
    axes.plot(epochs, [m.val_elbo for m in history], label=f"validation ({history[0].val_kl} KL)")
    axes.set_xlabel("epoch")
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))  # no epoch 1.5 on a short run
    axes.set_ylabel("ELBO (nats per image)")
    axes.grid(alpha=0.3)
    axes.legend()
    figure.savefig(path, dpi=100, metadata=PNG_METADATA)
    return Path(path)


def save_scatter(
    points: torch.Tensor,
    labels: torch.Tensor,
    path: Path,
    axis_labels: tuple[str, str],
    title: str,
    class_names: Sequence[str] = (),
) -> Path:
    """Two-dimensional points coloured by their integer labels, with a legend of the labels
    (by their ``class_names``, where the data name their classes)."""
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    points, labels = points.detach().cpu(), labels.detach().cpu()
    figure = Figure(figsize=(6, 5.5), layout="constrained")
    axes = figure.add_subplot()
    colours = colormaps["tab10"]
    for k, label in enumerate(labels.unique().tolist()):
        chosen = labels == label
        name = class_names[label] if 0 <= label < len(class_names) else str(label)
        axes.scatter(*points[chosen].T, s=6, color=colours(k % 10), label=name, alpha=0.8)
    axes.set_xlabel(axis_labels[0])
    axes.set_ylabel(axis_labels[1])
    axes.set_title(wrapped(title, 6), fontsize=TITLE_POINTS)
    axes.legend(markerscale=2, fontsize=8, title="class" if class_names else "label", loc="best")
    figure.savefig(path, dpi=100, metadata=PNG_METADATA)
    return Path(path)
