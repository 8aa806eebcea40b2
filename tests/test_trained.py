"""After training: load_run, the data transform, encode, score, generate and export."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_digits
from typer.testing import CliRunner

import cli
from pyro_vae import load_run
from pyro_vae.data.transform import DataTransform
from pyro_vae.runs.trained import CARD, DESCRIPTION, WEIGHTS

ROOT = Path(__file__).resolve().parents[1]
FAST = ["--epochs", "2", "--hidden-dims", "32"]


def run(*args: object):
    return CliRunner().invoke(cli.app, [str(a) for a in args])


def ok(*args: object):
    result = run(*args)
    assert result.exit_code == 0, result.output
    return result


def refused(*args: object) -> str:
    """A user's mistake: exit status 2 and one line naming it, no traceback."""
    result = run(*args)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error")]
    assert len(errors) == 1, result.output
    return errors[0]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("trained")
    made = {
        "vae": [],
        "cvae": ["--model", "cvae"],
        "m2": ["--model", "m2", "--labels", "100"],
        "iaf": ["--guide", "iaf", "--likelihood", "bernoulli", "--binarize", "static"],
    }
    for name, options in made.items():
        ok("train", "--out", root / name, *FAST, *options)
    return {name: root / name for name in made}


@pytest.fixture(scope="module")
def digits_data():
    bunch = load_digits()
    return bunch.data, bunch.target


def write_pngs(folder: Path, images: np.ndarray, size: int = 8) -> list[Path]:
    """Grey PNGs (values 0..16 scaled to 0..255), in class subfolders by the image's digit."""
    paths = []
    for i, image in enumerate(images):
        path = folder / f"class{i % 2}" / f"img{i:02d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        pixels = (image.reshape(8, 8) * 255 / 16).round().astype(np.uint8)
        Image.fromarray(pixels).resize((size, size)).save(path)
        paths.append(path)
    return paths


def test_load_run_gives_an_evaluation_mode_model_on_the_device(runs):
    model = load_run(runs["vae"])
    assert not model.vae.training and model.device == torch.device("cpu")
    assert model.image_shape == (1, 8, 8) and model.epochs_trained == 2
    assert model.source == runs["vae"] / "checkpoint.pt"


def test_load_run_takes_best_unless_latest(tmp_path):
    ok("train", "--out", tmp_path / "r", *FAST, "--epochs", "3", "--patience", "5")
    assert load_run(tmp_path / "r").source.name == "best.pt"
    assert load_run(tmp_path / "r", latest=True).source.name == "checkpoint.pt"


def test_raw_digits_arrays_are_scaled_as_the_run_was(runs, digits_data):
    model = load_run(runs["vae"])
    x, _ = digits_data
    test = model.split("test")
    # The run's own test images, given as the raw 0..16 arrays they came from, encode alike.
    raw = torch.as_tensor(x, dtype=torch.float32)
    rows = next(i for i in range(len(raw)) if torch.allclose(raw[i] / 16, test.x[0]))
    assert torch.allclose(model.encode(x[rows : rows + 1]), model.encode(test.x[:1]))
    # (N, H, W) and flat rows are the same images
    assert torch.equal(model.encode(x[:5]), model.encode(x[:5].reshape(5, 8, 8)))


def test_image_files_are_decoded_to_the_run_shape(runs, digits_data, tmp_path):
    model = load_run(runs["vae"])
    x, _ = digits_data
    write_pngs(tmp_path / "same", x[:6])
    write_pngs(tmp_path / "big", x[:6], size=16)  # resized to the run's 8 × 8
    same = model.data(tmp_path / "same")
    assert same.stored.shape == (6, 64) and same.stored.dtype == torch.uint8
    assert same.names[0] == "class0/img00.png" and same.labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert model.data(tmp_path / "big").stored.shape == (6, 64)
    one = model.data(tmp_path / "same" / "class1" / "img01.png")
    assert torch.equal(one.stored[0], same.stored[3]) and one.labels is None


def test_a_binarized_run_binarizes_grey_data_seeded(runs, digits_data):
    model = load_run(runs["iaf"])
    x, _ = digits_data
    a, b = model.data(x[:10]), model.data(x[:10])
    assert a.stored.dtype == torch.bool and torch.equal(a.stored, b.stored)
    assert not torch.equal(a.stored, model.data(x[:10], seed=1).stored)
    binary = (x[:10] > 8).astype(np.float32)  # already binary: kept as they are
    assert torch.equal(model.data(binary).stored, torch.as_tensor(binary > 0.5).reshape(10, -1))


def test_data_of_another_shape_is_refused(runs, tmp_path):
    np.save(tmp_path / "wide.npy", np.zeros((3, 4, 16), dtype=np.uint8))
    np.save(tmp_path / "long.npy", np.zeros((3, 65), dtype=np.float32))
    for name in ("wide.npy", "long.npy"):
        line = refused(
            "encode", runs["vae"], "--out", tmp_path / "c.csv", "--data", tmp_path / name
        )
        assert "(1, 8, 8)" in line
    (tmp_path / "notes.txt").write_text("hello")
    line = refused(
        "score", runs["vae"], "--out", tmp_path / "s.csv", "--data", tmp_path / "notes.txt"
    )
    assert "neither an array" in line
    assert not (tmp_path / "c.csv").exists() and not (tmp_path / "s.csv").exists()


@pytest.mark.parametrize("suffix", [".npy", ".csv", ".parquet"])
def test_encode_writes_means_and_standard_deviations(runs, tmp_path, suffix):
    out = tmp_path / f"codes{suffix}"
    ok("encode", runs["vae"], "--out", out)
    model = load_run(runs["vae"])
    test = model.split("test")
    with torch.no_grad():
        expected = model.vae.posterior(test.x)
    if suffix == ".npy":
        table = np.load(out)
        mean, std, label = table["mean"], table["std"], table["label"]
    else:
        if suffix == ".csv":
            import csv

            with open(out) as file:
                rows = list(csv.DictReader(file))
            frame = {key: np.array([float(row[key]) for row in rows]) for key in rows[0]}
        else:
            import pyarrow.parquet as pq

            frame = {k: np.asarray(v) for k, v in pq.read_table(out).to_pydict().items()}
        mean = np.stack([frame[f"mean_{i}"] for i in range(8)], 1)
        std = np.stack([frame[f"std_{i}"] for i in range(8)], 1)
        label = frame["label"]
    np.testing.assert_allclose(mean, expected.mean.numpy(), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(std, expected.stddev.numpy(), rtol=1e-6)
    assert (label == test.labels.numpy()).all()


def test_encode_a_folder_names_files_and_a_flow_is_estimated(runs, digits_data, tmp_path):
    x, _ = digits_data
    write_pngs(tmp_path / "imgs", x[:4])
    result = ok("encode", runs["iaf"], "--out", tmp_path / "c.npy", "--data", tmp_path / "imgs")
    assert "estimated from 256 draws" in result.output
    table = np.load(tmp_path / "c.npy")
    assert list(table["file"]) == [f"class{i % 2}/img{i:02d}.png" for i in (0, 2, 1, 3)]
    assert table["mean"].shape == (4, 8) and (table["std"] > 0).all()


def test_labelled_models_encode_with_classes(runs, digits_data, tmp_path):
    x, y = digits_data
    np.savez(tmp_path / "d.npz", x=x[:20], y=y[:20])
    ok("encode", runs["cvae"], "--out", tmp_path / "c.npy", "--data", tmp_path / "d.npz")
    assert (np.load(tmp_path / "c.npy")["class"] == y[:20]).all()
    np.save(tmp_path / "x.npy", x[:20])  # no labels: the CVAE needs a class
    assert "class" in refused(
        "encode", runs["cvae"], "--out", tmp_path / "d.npy", "--data", tmp_path / "x.npy"
    )
    ok(
        "encode",
        runs["cvae"],
        "--out",
        tmp_path / "d.npy",
        "--data",
        tmp_path / "x.npy",
        "--label",
        "3",
    )
    assert (np.load(tmp_path / "d.npy")["class"] == 3).all()
    assert "--label 12" in refused(
        "encode",
        runs["cvae"],
        "--out",
        tmp_path / "e.npy",
        "--data",
        tmp_path / "x.npy",
        "--label",
        "12",
    )
    # score reads classes the same way
    score = ["score", runs["cvae"], "--data", tmp_path / "x.npy", "--num-samples", "2"]
    assert "--label K" in refused(*score, "--out", tmp_path / "s.csv")
    ok(*score, "--out", tmp_path / "s.csv", "--label", "3", "--top", "0")
    # M2 without labels: its classifier's classes
    ok("encode", runs["m2"], "--out", tmp_path / "m.npy", "--data", tmp_path / "x.npy")
    model = load_run(runs["m2"])
    expected = model.vae.classify(model.data(x[:20]).x).numpy()
    assert (np.load(tmp_path / "m.npy")["class"] == expected).all()


@pytest.mark.parametrize("kind", ["vae", "m2"])
def test_score_agrees_with_evaluate(runs, tmp_path, kind):
    ok("evaluate", runs[kind], "--num-samples", "20", "--out", tmp_path / "e.json")
    bounds = json.loads((tmp_path / "e.json").read_text())["bounds"]
    for seed, exact in (("0", True), ("1", False)):
        out = tmp_path / f"s{seed}.npy"
        ok("score", runs[kind], "--num-samples", "20", "--out", out, "--seed", seed, "--top", "0")
        table = np.load(out)
        for name, column in (("elbo_analytic_kl", "elbo_nats"), ("iwae", "iwae_nats")):
            mean, se = bounds[name]["nats"], bounds[name]["standard_error"]
            if exact:  # the same samples of z: the same numbers
                assert table[column].mean() == pytest.approx(mean, rel=1e-5)
            else:  # other samples: within the standard errors
                assert abs(table[column].mean() - mean) < 2 * se
    assert (np.diff(table["iwae_nats"]) >= 0).all()  # the most unusual first
    bits = -table["iwae_nats"] / (64 * np.log(2))
    np.testing.assert_allclose(table["iwae_bits_per_dim"], bits, rtol=1e-5)


def test_score_ranks_the_unusual_first_and_draws_them(runs, digits_data, tmp_path):
    x, _ = digits_data
    odd = np.concatenate([x[:30], np.full((2, 64), 16.0)])  # two all-white squares
    np.save(tmp_path / "odd.npy", odd)
    result = ok(
        "score", runs["vae"], "--out", tmp_path / "s.csv", "--data", tmp_path / "odd.npy",
        "--num-samples", "10", "--top", "2",
    )  # fmt: skip
    lines = (tmp_path / "s.csv").read_text().splitlines()
    assert lines[0].startswith("index,elbo_nats,iwae_nats")
    assert {int(lines[1].split(",")[0]), int(lines[2].split(",")[0])} == {30, 31}
    assert "image 30" in result.output and (tmp_path / "s-top2.png").is_file()


def test_generate_arrays_and_pngs(runs, tmp_path):
    ok("generate", runs["vae"], "--num", "5", "--out", tmp_path / "s.npy")
    images = np.load(tmp_path / "s.npy")
    assert images.shape == (5, 1, 8, 8) and images.dtype == np.float32
    model = load_run(runs["vae"])
    assert np.allclose(images, model.sample(5, seed=0).numpy())
    ok("generate", runs["cvae"], "--num", "4", "--label", "7", "--out", tmp_path / "c.npz")
    archive = np.load(tmp_path / "c.npz")
    assert archive["x"].shape == (4, 1, 8, 8) and (archive["y"] == 7).all()
    ok("generate", runs["vae"], "--num", "12", "--out", tmp_path / "pngs")
    files = sorted(p.name for p in (tmp_path / "pngs").iterdir())
    assert files[0] == "sample-000000.png" and len(files) == 12
    assert np.asarray(Image.open(tmp_path / "pngs" / files[0])).shape == (8, 8)
    # again: its own files are replaced; a file of the user's under the same name is not
    ok("generate", runs["vae"], "--num", "12", "--out", tmp_path / "pngs")
    Image.new("L", (8, 8)).save(tmp_path / "pngs" / "sample-000003.png")
    line = refused("generate", runs["vae"], "--num", "12", "--out", tmp_path / "pngs")
    assert "sample-000003.png" in line and "--overwrite" in line
    ok("generate", runs["vae"], "--num", "12", "--out", tmp_path / "pngs", "--overwrite")
    # a folder that does not exist yet, several levels down, is made
    ok("generate", runs["vae"], "--num", "2", "--out", tmp_path / "a" / "b" / "s.npy")
    assert "--label" in refused(
        "generate", runs["vae"], "--label", "1", "--out", tmp_path / "x.npy"
    )


def test_outputs_never_replace_the_users_files(runs, tmp_path):
    mine = tmp_path / "mine.csv"
    mine.write_text("precious\n")
    assert "--overwrite" in refused("encode", runs["vae"], "--out", mine)
    assert mine.read_text() == "precious\n"
    ok("encode", runs["vae"], "--out", mine, "--overwrite")
    # evaluate and the pictures too: a JSON or PNG of the user's stays
    (tmp_path / "e.json").write_text('{"mine": 1}')
    refused("evaluate", runs["vae"], "--num-samples", "2", "--out", tmp_path / "e.json")
    assert json.loads((tmp_path / "e.json").read_text()) == {"mine": 1}
    Image.new("L", (4, 4)).save(tmp_path / "photo.png")
    refused("sample", runs["vae"], "--out", tmp_path / "photo.png")
    # ... but what the tool wrote there itself may be written again
    ok("evaluate", runs["vae"], "--num-samples", "2", "--out", tmp_path / "ours.json")
    ok("evaluate", runs["vae"], "--num-samples", "2", "--out", tmp_path / "ours.json")
    ok("sample", runs["vae"], "--out", tmp_path / "ours.png")
    ok("sample", runs["vae"], "--out", tmp_path / "ours.png")


def test_nothing_is_written_into_a_runs_image_folder(digits_data, tmp_path):
    x, _ = digits_data
    write_pngs(tmp_path / "images", x[:40])
    ok(
        "train",
        "--out",
        tmp_path / "run",
        "--data",
        tmp_path / "images",
        *FAST,
    )
    for command in (
        ["sample", "--out", tmp_path / "images" / "class0" / "new.png"],
        ["reconstruct", "--out", tmp_path / "images" / "class0" / "img00.png", "--overwrite"],
        ["generate", "--out", tmp_path / "images" / "more"],
        ["encode", "--out", tmp_path / "images" / "codes.csv"],
    ):
        assert "image folder" in refused(command[0], tmp_path / "run", *command[1:])
    assert sorted(p.name for p in (tmp_path / "images").rglob("*")) == sorted(
        ["class0", "class1", *(f"img{i:02d}.png" for i in range(40))]
    )


def test_a_run_without_checkpoint_is_one_line(tmp_path):
    (tmp_path / "empty").mkdir()
    for command in ("encode", "score", "export"):
        line = refused(command, tmp_path / "empty", "--out", tmp_path / "x.csv")
        assert "checkpoint" in line


def test_export_loads_in_a_fresh_process_with_identical_codes(runs, digits_data, tmp_path):
    out = tmp_path / "shared"
    result = ok("export", runs["vae"], "--out", out, "--num-samples", "5")
    assert {p.name for p in out.iterdir()} == {WEIGHTS, DESCRIPTION, CARD}
    card = (out / CARD).read_text()
    assert "IWAE, K = 5" in card and "ELBO" in card and "torch" in card and "±" in card
    assert str(out / WEIGHTS) in result.output
    x, _ = digits_data
    np.save(tmp_path / "x.npy", x[:50])
    script = (
        "import sys, numpy as np; from pyro_vae import load_run; "
        "m = load_run(sys.argv[1]); np.save(sys.argv[3], m.encode(np.load(sys.argv[2])).numpy())"
    )
    subprocess.run(
        [sys.executable, "-c", script, str(out), str(tmp_path / "x.npy"), str(tmp_path / "c.npy")],
        check=True,
        cwd=ROOT,
    )
    expected = load_run(runs["vae"]).encode(x[:50]).numpy()
    assert np.array_equal(np.load(tmp_path / "c.npy"), expected)
    # no pickle in the weights: safetensors holds tensors only
    assert (out / WEIGHTS).read_bytes()[8:9] == b"{"
    # an export can be exported again into the same folder, and is a run for the commands
    ok("export", out, "--out", out, "--num-samples", "2")
    ok("generate", out, "--num", "3", "--out", tmp_path / "g.npy")


def test_export_refuses_a_folder_of_the_users(runs, tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "README.md").write_text("my notes")
    assert "--overwrite" in refused("export", runs["vae"], "--out", tmp_path / "mine")
    assert (tmp_path / "mine" / "README.md").read_text() == "my notes"


def test_a_damaged_export_is_one_line(runs, tmp_path):
    out = tmp_path / "shared"
    ok("export", runs["vae"], "--out", out, "--num-samples", "2")
    (out / WEIGHTS).write_bytes(b"not weights")
    assert "export the run again" in refused("generate", out, "--out", tmp_path / "g.npy")
    (out / DESCRIPTION).write_text("{")
    assert "export the run again" in refused("generate", out, "--out", tmp_path / "g.npy")


def test_transform_round_trips_through_json(runs):
    transform = load_run(runs["iaf"]).transform
    assert DataTransform.from_dict(json.loads(json.dumps(transform.to_dict()))) == transform


def test_data_in_every_form_of_the_runs_kind(runs, digits_data):
    from pyro_vae import DataConfig, load_dataset

    model = load_run(runs["vae"])
    x, _ = digits_data
    codes = model.encode(x[:3])
    for same in (x[:3].astype(np.int64), x[:3].astype(np.uint8), torch.as_tensor(x[:3])):
        assert torch.allclose(model.encode(same), codes)  # the digits' 0..16, whatever the type
    assert torch.allclose(model.encode(x[0].reshape(8, 8)), codes[:1])  # one image
    split = load_dataset(DataConfig()).test
    assert torch.equal(model.encode(split), model.encode(split.x))


def test_classes_are_checked_in_python_too(runs):
    cvae, vae = load_run(runs["cvae"]), load_run(runs["vae"])
    z = torch.zeros(2, 8)
    for label in (np.int64(30), np.array([11, 1]), [-5, 1]):
        with pytest.raises(Exception, match="not a class of this model"):
            cvae.decode(z, label=label)
    with pytest.raises(Exception, match="whole number"):
        cvae.sample(2, label=1.5)
    assert cvae.decode(z, label=np.array([1, 2])).shape == (2, 1, 8, 8)
    with pytest.raises(Exception, match="--label"):
        vae.encode(np.zeros((2, 64)), label=3)
    with pytest.raises(ValueError, match="shape"):
        vae.decode(torch.zeros(3, 5))
    with pytest.raises(ValueError):
        vae.sample(0)


def test_label_where_it_means_nothing_is_refused(runs, tmp_path):
    assert "--label" in refused("encode", runs["vae"], "--out", tmp_path / "c.npy", "--label", "1")
    line = refused("score", runs["m2"], "--out", tmp_path / "s.npy", "--label", "1")
    assert "sum its class out" in line


def test_export_never_takes_a_run_or_the_users_folder(runs, tmp_path):
    assert "run directory" in refused("export", runs["vae"], "--out", runs["cvae"])
    (tmp_path / "proj").mkdir()
    (tmp_path / "proj" / DESCRIPTION).write_text('{"my": "settings"}')
    assert "--overwrite" in refused("export", runs["vae"], "--out", tmp_path / "proj")
    assert (tmp_path / "proj" / DESCRIPTION).read_text() == '{"my": "settings"}'


def test_a_moved_folder_run_is_scored_where_its_images_are_now(digits_data, tmp_path):
    x, _ = digits_data
    write_pngs(tmp_path / "images", x[:40])
    ok("train", "--out", tmp_path / "run", "--data", tmp_path / "images", *FAST)
    (tmp_path / "images").rename(tmp_path / "moved")
    line = refused("score", tmp_path / "run", "--out", tmp_path / "s.csv")
    assert "--run-data" in line
    ok("score", tmp_path / "run", "--out", tmp_path / "s.csv", "--run-data", tmp_path / "moved")
    assert len((tmp_path / "s.csv").read_text().splitlines()) == 1 + 4  # the 4 test images
    # the picture of the most unusual would land among the images being scored
    out = tmp_path / "moved" / "s.csv"
    line = refused("score", tmp_path / "run", "--out", out, "--data", tmp_path / "moved")
    assert "--top 0" in line
    ok("score", tmp_path / "run", "--out", out, "--data", tmp_path / "moved", "--top", "0")


def test_a_new_folders_classes_are_matched_by_name(digits_data, tmp_path):
    x, _ = digits_data
    write_pngs(tmp_path / "images", x[:40])  # classes class0, class1
    ok("train", "--out", tmp_path / "run", "--data", tmp_path / "images", *FAST, "--model", "cvae")
    model = load_run(tmp_path / "run")
    assert model.transform.class_names == ("class0", "class1")
    (tmp_path / "new" / "class1").mkdir(parents=True)
    shutil.copy(tmp_path / "images" / "class1" / "img01.png", tmp_path / "new" / "class1" / "a.png")
    assert model.data(tmp_path / "new").labels.tolist() == [1]  # by name, not position
    (tmp_path / "new" / "zzz").mkdir()
    shutil.copy(tmp_path / "images" / "class1" / "img03.png", tmp_path / "new" / "zzz" / "b.png")
    line = refused(
        "encode", tmp_path / "run", "--data", tmp_path / "new", "--out", tmp_path / "c.csv"
    )
    assert "'zzz'" in line and "'class0'" in line
    (tmp_path / "images").rename(tmp_path / "moved")
    ok(
        "export",
        tmp_path / "run",
        "--out",
        tmp_path / "x",
        "--num-samples",
        "2",
        "--run-data",
        tmp_path / "moved",
    )
    assert "class0, class1" in (tmp_path / "x" / CARD).read_text()
    assert load_run(tmp_path / "x").transform.class_names == ("class0", "class1")


def test_table_formats_are_checked_before_any_work(runs, tmp_path, monkeypatch):
    assert ".parquet" in refused("encode", runs["vae"], "--out", tmp_path / "codes.json")
    monkeypatch.setattr("pyro_vae.runs.outputs.parquet_available", lambda: False)
    line = refused("score", runs["vae"], "--out", tmp_path / "s.parquet")
    assert "pip install pyarrow" in line
    assert not list(tmp_path.iterdir())
