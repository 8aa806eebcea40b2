"""A conv VAE trained from a folder of colour images, end to end through the command line."""

import json

import matplotlib.image
import numpy as np
import pytest
from PIL import Image

from pyro_vae import load_checkpoint
from tests.test_cli import run

HEIGHT, WIDTH = 12, 10  # no power of two: the conv stack pads and crops


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """40 colour images in two classes, PNG and JPEG; three of another size, one grey."""
    root = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    for i in range(40):
        label = "red" if i % 2 else "blue"
        (root / label).mkdir(exist_ok=True)
        pixels = rng.integers(0, 60, (HEIGHT, WIDTH, 3), dtype=np.uint8)
        pixels[..., 0 if label == "red" else 2] += 180  # a colour per class
        image = Image.fromarray(pixels)
        if i < 3:
            image = image.resize((WIDTH + 3, HEIGHT + 2))
        if i == 3:
            image = image.convert("L")
        image.save(root / label / (f"{i}.png" if i % 3 else f"{i}.jpg"))
    return root


@pytest.fixture(scope="module")
def conv_run(folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "conv"
    result = run(
        "train", "--data", folder, "--out", out, "--network", "conv", "--hidden-dims", "4,8",
        "--latent-dim", "3", "--likelihood", "discretized-logistic", "--epochs", "2",
        "--batch-size", "8",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    return out, result.output


def assert_colour_picture(path):
    picture = matplotlib.image.imread(path)[..., :3]
    assert picture.shape[0] > 20 and picture.shape[1] > 20
    assert np.abs(picture[..., 0] - picture[..., 2]).max() > 0.05, f"{path.name} is grey"


def test_a_conv_vae_trains_from_an_image_folder(conv_run):
    out, output = conv_run
    assert "converted 4 of 40 images" in output  # 3 resized and 1 from grey, counted in a note
    assert {p.name for p in out.iterdir()} == {
        *("checkpoint.pt", "config.json", "metrics.jsonl", "timing.jsonl"),
        *("elbo_curve.png", "reconstructions.png", "samples.png"),
    }
    record = json.loads((out / "config.json").read_text())
    assert record["data"]["image_shape"] == [3, HEIGHT, WIDTH]
    assert (
        record["data"]["num_train"] + record["data"]["num_val"] + record["data"]["num_test"] == 40
    )
    assert record["config"]["model"]["network"] == "conv"
    assert record["config"]["data"]["dataset"] == "folder"
    checkpoint = load_checkpoint(out)
    assert checkpoint.image_shape == (3, HEIGHT, WIDTH)
    vae = checkpoint.build_vae()
    assert vae.likelihood.scale.raw.shape == (3,)  # one learnt scale per channel
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(metrics) == 2 and all(np.isfinite(m["val_elbo"]) for m in metrics)
    for name in ("reconstructions.png", "samples.png"):
        assert_colour_picture(out / name)


def test_every_picture_and_evaluate_work_in_colour(conv_run, tmp_path):
    out, _ = conv_run
    result = run("evaluate", out, "--num-samples", "5")
    assert result.exit_code == 0, result.output
    scores = json.loads((out / "evaluation-test-k5.json").read_text())
    # A probability, not a density: log p(x|z) ≤ 0 and KL ≥ 0, so the ELBO is a code length > 0.
    assert 0 < scores["bounds"]["elbo_analytic_kl"]["bits_per_dim"] < 32
    for command, name, *options in (
        ("sample", "samples-cli.png"),
        ("reconstruct", "reconstructions-cli.png", "--num", "4"),
        ("interpolate", "interpolations.png", "--pairs", "2"),
        ("manifold", "manifold.png"),
    ):
        path = tmp_path / name
        result = run(command, out, "--out", path, *options)
        assert result.exit_code == 0, (command, result.output)
        assert_colour_picture(path)
    result = run("latent", out, "--out", tmp_path / "latent.png")
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--network", "conv", "--data", "{vectors}"], "vectors of 30 values with no image shape"),
        (["--image-size", "16"], "--image-size applies to --data DIR"),
        (["--data", "{empty}"], "no image files in"),
        (["--data", "{folder}", "--image-size", "8x0"], "expected a size such as 64"),
        (
            ["--data", "{folder}", "--network", "conv", "--hidden-dims", "4,8,16,32"],
            "too small for 4 conv stages",
        ),
        (["--data", "{folder}", "--likelihood", "discretized-logistic", "--image-size", "8"], None),
    ],
)
def test_image_mistakes_are_one_line_errors(arguments, message, folder, tmp_path):
    vectors = tmp_path / "vectors.npy"
    np.save(vectors, np.random.default_rng(0).random((20, 30), dtype=np.float32))
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no images here")
    places = {"vectors": vectors, "empty": tmp_path / "empty", "folder": folder}
    arguments = [a.format(**places) for a in arguments]
    result = run("train", "--out", tmp_path / "run", "--epochs", "1", *arguments)
    if message is None:  # the control: the same folder and options, well given, train
        assert result.exit_code == 0, result.output
        assert load_checkpoint(tmp_path / "run").image_shape == (3, 8, 8)
        return
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    assert not (tmp_path / "run").exists()  # nothing written for a run that never started


def test_a_folder_run_resumes_with_its_own_image_options(folder, tmp_path):
    out = tmp_path / "run"
    given = ["--data", folder, "--image-size", "8", "--crop", "--network", "conv"]
    assert run("train", "--out", out, "--epochs", "1", *given).exit_code == 0
    again = run("train", "--resume", out, "--epochs", "2", "--image-size", "8x8", *given[4:])
    assert again.exit_code == 0, again.output
    changed = run("train", "--resume", out, "--epochs", "3", "--image-size", "10")
    assert changed.exit_code == 2 and "--image-size (the run has 8x8)" in changed.output


def test_a_run_records_the_widths_its_network_used(tmp_path):
    """The network's default widths are written out: the run rebuilds whatever defaults say."""
    out = tmp_path / "run"
    assert run("train", "--out", out, "--epochs", "1", "--network", "conv").exit_code == 0
    record = json.loads((out / "config.json").read_text())
    assert record["config"]["model"]["hidden_dims"] == [32, 64]
    # a config file's widths are an MLP's units: another network takes its own default
    mlp = tmp_path / "mlp"
    assert run("train", "--out", mlp, "--epochs", "1", "--hidden-dims", "24").exit_code == 0
    conv = tmp_path / "conv"
    result = run("train", "--config", mlp, "--out", conv, "--network", "conv")
    assert result.exit_code == 0, result.output
    assert load_checkpoint(conv).config.model.hidden_dims == (32, 64)


def test_a_folder_of_large_images_asks_for_a_size(folder, tmp_path, monkeypatch):
    monkeypatch.setattr("pyro_vae.data.image_files.MAX_DECODED_BYTES", 5000)
    result = run("train", "--data", folder, "--out", tmp_path / "run", "--epochs", "1")
    assert result.exit_code == 2 and "give a smaller --image-size" in result.output
    result = run("train", "--data", folder, "--out", tmp_path / "run", "--image-size", "4")
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--data", "missing/photos"], "no file or folder at missing/photos"),
        (["--data", "{folder}", "--image-size", "²"], "expected a size such as 64"),
    ],
)
def test_more_data_mistakes(arguments, message, folder, tmp_path):
    arguments = [a.format(folder=folder) for a in arguments]
    result = run("train", "--out", tmp_path / "run", "--epochs", "1", *arguments)
    assert result.exit_code == 2 and message in result.output


def test_a_folder_that_changed_since_training_is_refused(folder, tmp_path):
    import shutil

    photos = tmp_path / "photos"
    shutil.copytree(folder, photos)
    out = tmp_path / "run"
    assert run("train", "--data", photos, "--out", out, "--epochs", "1").exit_code == 0
    same = run("reconstruct", out, "--num", "2")
    assert same.exit_code == 0, same.output
    assert (
        "Note: read" not in same.output and "converted" not in same.output
    )  # said once, at training
    (photos / "red" / "1.png").unlink()
    changed = run("reconstruct", out, "--num", "2")
    assert changed.exit_code == 2, changed.output
    assert "hold 39 images, but the run was trained on 40" in changed.output


def test_a_run_directory_inside_its_image_folder_is_refused(folder, tmp_path, monkeypatch):
    result = run("train", "--data", folder, "--out", folder / "runs" / "a", "--epochs", "1")
    assert result.exit_code == 2 and "inside the image folder" in result.output
    monkeypatch.chdir(folder)  # the default runs/... would land there too
    result = run("train", "--data", ".", "--epochs", "1")
    assert result.exit_code == 2 and "inside the image folder" in result.output
    assert not (folder / "runs").exists()


def test_too_few_images_for_the_split_say_how_many_are_needed(tmp_path):
    (tmp_path / "few").mkdir()
    for i in range(5):
        Image.new("RGB", (8, 8), (i * 40, 0, 0)).save(tmp_path / "few" / f"{i}.png")
    result = run("train", "--data", tmp_path / "few", "--out", tmp_path / "run", "--epochs", "1")
    assert result.exit_code == 2 and "give at least 15 images" in result.output


def test_the_pictures_name_a_folders_classes(folder, tmp_path, monkeypatch):
    """A folder's class names, not their numbers: the latent legend, manifold's and sample's
    class (and the checkpoint keeps them, for the commands that do not read the images)."""
    from matplotlib.figure import Figure

    out = tmp_path / "cvae"
    result = run(
        "train", "--data", folder, "--out", out, "--model", "cvae", "--hidden-dims", "16",
        "--latent-dim", "2", "--epochs", "1", "--batch-size", "8", "--image-size", "8",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    texts, savefig = [], Figure.savefig

    def saving(figure, *args, **kwargs):
        titles = [figure._suptitle, *(axes.title for axes in figure.axes)]
        texts.append(" ".join(t.get_text() for t in titles if t is not None))
        legends = [axes.get_legend() for axes in figure.axes if axes.get_legend() is not None]
        texts[-1] += " legend: " + ",".join(t.get_text() for lg in legends for t in lg.texts)
        savefig(figure, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", saving)
    for command, *options in (
        ("latent",),
        ("manifold", "--label", "1", "--grid", "3"),
        ("sample", "--label", "1", "--num", "2"),
    ):
        result = run(command, out, "--out", tmp_path / f"{command}.png", *options)
        assert result.exit_code == 0, (command, result.output)
    latent, manifold, sample = texts
    assert "legend: blue,red" in latent
    assert "class 1 (red)" in manifold.replace("\n", " ")
    assert "class 1 (red)" in sample.replace("\n", " ")
