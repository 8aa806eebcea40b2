import matplotlib.image
import torch

from pyro_vae.plots import (
    PAD_VALUE,
    image_grid,
    save_elbo_curve,
    save_image_grid,
    save_reconstructions,
)
from pyro_vae.train import EpochMetrics


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


def test_saved_pictures_are_pngs_with_the_grid_proportions(tmp_path):
    path = save_image_grid(torch.rand(16, 64), (8, 8), tmp_path / "grid.png", ncols=8)
    height, width, _ = matplotlib.image.imread(path).shape
    # 2 rows and 8 columns of 8×8 tiles with 1-pixel separators, 8 screen pixels per image pixel
    assert (height, width) == ((2 * 9 + 1) * 8, (8 * 9 + 1) * 8)
    path = save_reconstructions(torch.rand(4, 64), torch.rand(4, 64), (8, 8), tmp_path / "r.png")
    assert path.stat().st_size > 0


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
