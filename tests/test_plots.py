import matplotlib.image
import pytest
import torch

from pyro_vae.inference.trainer import EpochMetrics
from pyro_vae.runs.figures import (
    PAD_VALUE,
    image_grid,
    save_elbo_curve,
    save_image_grid,
    save_latent_grid,
    save_reconstruction_grid,
    save_scatter,
)

RED, GREEN, BLUE = torch.eye(3)  # (R, G, B) of each


def coloured_tiles(colours: list[torch.Tensor], height: int, width: int) -> torch.Tensor:
    """One plain (3, height, width) image per colour, flattened channel-major: (N, 3·H·W)."""
    images = torch.stack(colours).reshape(-1, 3, 1, 1).expand(-1, 3, height, width)
    return images.reshape(len(colours), -1)


def test_image_grid_places_each_image_in_its_tile():
    images = torch.rand(5, 6).clamp(0.01, 0.99)  # five 2×3 images
    grid = image_grid(images, (2, 3), ncols=3)
    assert grid.shape == (2 * 3 + 1, 3 * 4 + 1)
    for k in range(5):
        row, col = divmod(k, 3)
        tile = grid[1 + row * 3 : 1 + row * 3 + 2, 1 + col * 4 : 1 + col * 4 + 3]
        assert torch.equal(tile, images[k].reshape(2, 3))
    assert torch.all(grid[4:6, 9:12] == PAD_VALUE)  # the empty sixth tile
    assert torch.all(grid[0] == PAD_VALUE) and torch.all(grid[:, -1] == PAD_VALUE)


@pytest.mark.parametrize("image_shape", [(1, 2, 3), (3, 2, 3)])
def test_image_grid_places_each_channel_of_each_image_in_its_tile(image_shape):
    channels = image_shape[0]
    images = torch.rand(5, channels, 2, 3).clamp(0.01, 0.99)  # channel-major, as the data are
    grid = image_grid(images.reshape(5, -1), image_shape, ncols=3)
    assert grid.shape == ((2 * 3 + 1, 3 * 4 + 1) if channels == 1 else (7, 13, 3))
    for k in range(5):
        row, col = divmod(k, 3)
        tile = grid[1 + row * 3 : 1 + row * 3 + 2, 1 + col * 4 : 1 + col * 4 + 3]
        expected = images[k].permute(1, 2, 0)  # (H, W, C)
        assert torch.equal(tile, expected.squeeze(-1) if channels == 1 else expected)
    assert torch.all(grid[4:6, 9:12] == PAD_VALUE)  # the empty sixth tile
    assert torch.all(grid[0] == PAD_VALUE) and torch.all(grid[:, -1] == PAD_VALUE)


def test_an_image_shape_of_height_and_width_is_one_grey_channel():
    images = torch.rand(4, 6)
    assert torch.equal(image_grid(images, (2, 3), 2), image_grid(images, (1, 2, 3), 2))
    with pytest.raises(ValueError, match="C 1 or 3"):
        image_grid(torch.rand(4, 12), (2, 2, 3), 2)


def test_red_green_and_blue_images_keep_their_colours_in_the_grid():
    grid = image_grid(coloured_tiles([RED, GREEN, BLUE], 2, 2), (3, 2, 2), ncols=3)
    for k, colour in enumerate((RED, GREEN, BLUE)):
        assert torch.equal(grid[1:3, 1 + 3 * k : 3 + 3 * k], colour.expand(2, 2, 3))
    assert torch.all(grid[0] == PAD_VALUE)  # the separators stay grey in every channel


def test_saved_colour_pictures_are_in_colour_and_grey_ones_grey(tmp_path):
    colours = coloured_tiles([RED, GREEN, BLUE, RED], 8, 8)
    path = save_image_grid(colours, (3, 8, 8), tmp_path / "colour.png", ncols=2)
    pixels = matplotlib.image.imread(path)[..., :3]  # (height, width, RGB); PNGs may add alpha
    assert pixels.shape[:2] == ((2 * 9 + 1) * 8, (2 * 9 + 1) * 8)
    centre = 8 * 5  # the middle of the first tile, in screen pixels
    assert pixels[centre, centre].tolist() == pytest.approx([1, 0, 0], abs=0.02)  # red
    assert pixels[centre, centre + 9 * 8].tolist() == pytest.approx([0, 1, 0], abs=0.02)  # green
    path = save_image_grid(torch.rand(4, 64), (1, 8, 8), tmp_path / "grey.png", ncols=2)
    pixels = matplotlib.image.imread(path)[..., :3]
    assert (pixels[..., 0] == pixels[..., 1]).all() and (pixels[..., 1] == pixels[..., 2]).all()
    values = [-1.0, 1.0]
    path = save_latent_grid(colours, (3, 8, 8), tmp_path / "m.png", values, ("a", "b"), "t")
    pixels = matplotlib.image.imread(path)[..., :3]
    assert (abs(pixels[..., 0] - pixels[..., 1]) > 0.5).any()  # a colour picture


def test_saved_pictures_are_pngs_with_the_grid_proportions(tmp_path):
    path = save_image_grid(torch.rand(16, 64), (8, 8), tmp_path / "grid.png", ncols=8)
    height, width, _ = matplotlib.image.imread(path).shape
    # 2 rows and 8 columns of 8×8 tiles with 1-pixel separators, 8 screen pixels per image pixel
    assert (height, width) == ((2 * 9 + 1) * 8, (8 * 9 + 1) * 8)
    grey = save_reconstruction_grid(
        torch.rand(4, 64), torch.rand(4, 64), (8, 8), tmp_path / "r.png"
    )
    originals, reconstructions = torch.rand(4, 3 * 64), torch.rand(4, 3 * 64)
    rgb = save_reconstruction_grid(originals, reconstructions, (3, 8, 8), tmp_path / "rgb.png")
    assert matplotlib.image.imread(rgb).shape == matplotlib.image.imread(grey).shape  # same size


def test_a_short_runs_elbo_curve_has_whole_epochs_on_its_axis(tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    history = [EpochMetrics(e, -50.0 + e, -49.0 + e, "closed-form", "closed-form") for e in (1, 2)]
    ticks = []
    original = Figure.savefig

    def spy(figure, *args, **kwargs):
        ticks.extend(t for t in figure.axes[0].get_xticks() if 0.5 <= t <= 2.5)
        return original(figure, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", spy)
    save_elbo_curve(history, tmp_path / "curve.png")
    assert ticks and all(float(t).is_integer() for t in ticks)


def drawn_titles(monkeypatch) -> list:
    """Collects, for every picture saved, its titles' boxes and the figure's box, in pixels."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    seen, savefig = [], Figure.savefig

    def saving(figure, *args, **kwargs):
        savefig(figure, *args, **kwargs)
        renderer = FigureCanvasAgg(figure).get_renderer()
        figure.draw(renderer)  # the layout as saved
        texts = [figure._suptitle, *(axes.title for axes in figure.axes)]
        boxes = [t.get_window_extent(renderer) for t in texts if t is not None and t.get_text()]
        seen.append((boxes, figure.bbox))

    monkeypatch.setattr(Figure, "savefig", saving)
    return seen


LONG = "decoded means of z ~ p(z), one row per class (0 to 9, top to bottom), and then some"


@pytest.mark.parametrize(
    "draw",
    [
        lambda p: save_image_grid(torch.rand(1, 64), (8, 8), p, ncols=1, title=LONG),
        lambda p: save_image_grid(torch.rand(2, 784), (28, 28), p, ncols=1, title=LONG),
        lambda p: save_image_grid(torch.rand(10, 64), (8, 8), p, ncols=1, title=LONG),
        lambda p: save_image_grid(torch.rand(3, 4096), (64, 64), p, ncols=3, title=LONG),
        lambda p: save_reconstruction_grid(torch.rand(1, 64), torch.rand(1, 64), (8, 8), p),
        lambda p: save_latent_grid(
            torch.rand(4, 64), (8, 8), p, [-1.0, 1.0], ("z_0", "z_1"), LONG + LONG
        ),
        lambda p: save_scatter(torch.rand(20, 2), torch.arange(20) % 3, p, ("a", "b"), LONG),
    ],
    ids=[
        "one tile",
        "a column of digits",
        "ten rows",
        "three 64-pixel tiles",
        "one pair",
        "manifold",
        "scatter",
    ],
)
def test_every_title_fits_its_picture(draw, tmp_path, monkeypatch):
    """However narrow the grid (one tile of 8×8 pixels), its title is inside the picture."""
    seen = drawn_titles(monkeypatch)
    draw(tmp_path / "p.png")
    ((boxes, figure),) = seen
    assert boxes
    for box in boxes:
        assert box.x0 >= 0 and box.x1 <= figure.width, (box, figure)
        assert box.y0 >= 0 and box.y1 <= figure.height, (box, figure)
