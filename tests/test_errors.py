"""Every mistake a user can make gets one line, exit status 2, no traceback, nothing overwritten.

One table lists them all: the command line (built in a fresh folder, beside a copy of a trained
run) and the words the error must contain.
"""

import fcntl
import json
import shutil
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from test_loaders import write_mnist
from typer.testing import CliRunner

import cli
from pyro_vae.runs.checkpoint import FORMAT_VERSION

Setup = Callable[[Path, Path], list]  # (empty folder, a trained run copied into it) -> arguments


def edited_checkpoint(run: Path, edit: Callable[[dict], None]) -> Path:
    payload = torch.load(run / "checkpoint.pt", weights_only=True)
    edit(payload)
    torch.save(payload, run / "checkpoint.pt")
    return run


def unregistered(run: Path, field: str) -> Path:
    """``run`` as if trained with a component registered from Python under the name 'mine'
    (``pyro_vae.NETWORKS['mine'] = ...``), which a later process does not know."""
    edited_checkpoint(run, lambda p: p["config"]["model"].update({field: "mine"}))
    record = json.loads((run / "config.json").read_text())
    record["config"]["model"][field] = "mine"
    (run / "config.json").write_text(json.dumps(record))
    return run


# Every command that rebuilds a run's model, for each registry a component can come from.
_REBUILDERS = {
    "evaluate": lambda t, r: ["evaluate", r, "--num-samples", "2"],
    "sample": lambda t, r: ["sample", r],
    "resume": lambda t, r: ["train", "--resume", r, "--epochs", "3"],
    "config": lambda t, r: ["train", "--config", r / "config.json", "--out", t / "new"],
}
UNREGISTERED = {
    f"{field} registered in Python, then {command}": (
        lambda t, r, field=field, args=args: args(t, unregistered(r, field)),
        f"pyro_vae.{registry}['mine'] = ...",
    )
    for field, registry in (
        ("network", "NETWORKS"),
        ("prior", "PRIORS"),
        ("guide", "GUIDES"),
        ("likelihood", "LIKELIHOODS"),
    )
    for command, args in _REBUILDERS.items()
}


def image_folder(tmp: Path, broken: bool = False) -> Path:
    """A folder of 30 small PNG images (and, if ``broken``, one file that is no image)."""
    from PIL import Image

    folder = tmp / "photos"
    folder.mkdir()
    for i in range(30):
        Image.new("RGB", (8, 8), (8 * i, 0, 0)).save(folder / f"{i}.png")
    if broken:
        (folder / "broken.png").write_bytes(b"not a PNG")
    return folder


def npy(tmp: Path, array: np.ndarray) -> Path:
    np.save(tmp / "data.npy", array)
    return tmp / "data.npy"


def corrupt_idx(tmp: Path, cut: bool) -> Path:
    raw = write_mnist(tmp / "data", compress=False)
    images = raw / "t10k-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[:-5] if cut else b"\x89PNG not an IDX file")
    return tmp / "data"


CASES: dict[str, tuple[Setup, str]] = {
    # options
    "unknown ELBO": (lambda t, r: ["train", "--elbo", "foo"], "'--elbo'"),
    "zero epochs": (lambda t, r: ["train", "--epochs", "0"], "'--epochs'"),
    "zero batch size": (lambda t, r: ["train", "--batch-size", "0"], "'--batch-size'"),
    "negative latent size": (lambda t, r: ["train", "--latent-dim", "-1"], "'--latent-dim'"),
    "zero learning rate": (lambda t, r: ["train", "--lr", "0"], "'--lr'"),
    "negative learning rate": (lambda t, r: ["train", "--lr", "-0.1"], "'--lr'"),
    "zero particles": (lambda t, r: ["train", "--num-particles", "0"], "'--num-particles'"),
    "bad layer sizes": (lambda t, r: ["train", "--hidden-dims", "64,x"], "'--hidden-dims'"),
    "zero sigma": (lambda t, r: ["train", "--sigma", "0"], "'--sigma'"),
    "sigma without gaussian": (
        lambda t, r: ["train", "--likelihood", "bernoulli", "--sigma", "0.5"],
        "--sigma applies to --likelihood gaussian",
    ),
    "unknown prior": (lambda t, r: ["train", "--prior", "nope"], "'--prior'"),
    "components without mixture": (
        lambda t, r: ["train", "--components", "3"],
        "--components applies to --prior mog or vamp",
    ),
    "unknown guide": (lambda t, r: ["train", "--guide", "gamma"], "'--guide'"),
    "unknown activation": (lambda t, r: ["train", "--activation", "sigmoid"], "'--activation'"),
    "unknown matmul precision": (
        lambda t, r: ["train", "--matmul-precision", "low"],
        "'--matmul-precision'",
    ),
    "unknown matmul precision in a config file": (
        lambda t, r: [
            "train",
            "--config",
            _text(t / "p.toml", '[train]\nmatmul_precision = "low"\n'),
        ],
        "unknown matrix product precision 'low': choose one of highest, high, medium",
    ),
    "zero flows": (lambda t, r: ["train", "--guide", "iaf", "--flows", "0"], "'--flows'"),
    "flows without iaf": (
        lambda t, r: ["train", "--guide", "full", "--flows", "3"],
        "--flows applies to --guide iaf, not full: drop --flows",
    ),
    "free bits with a full guide": (
        lambda t, r: ["train", "--elbo", "analytic", "--guide", "full", "--free-bits", "0.5"],
        "use --guide diagonal with --free-bits",
    ),
    "compile not true or false in a config file": (
        lambda t, r: ["train", "--config", _text(t / "c.toml", '[train]\ncompile = "yes"\n')],
        "[train] compile must be true or false, got 'yes'",
    ),
    "guide options not a table": (
        lambda t, r: ["train", "--config", _text(t / "c.toml", "[model]\nguide_options = 3\n")],
        "[model] guide_options must be a table of keywords",
    ),
    "a misspelt guide with options in a config file": (
        lambda t, r: [
            "train",
            "--config",
            _text(t / "c.toml", '[model]\nguide = "IAF"\nguide_options = {flows = 2}\n'),
        ],
        "unknown guide 'IAF': choose one of diagonal, full, iaf",
    ),
    "an iaf context size that is no number": (
        lambda t, r: [
            "train",
            "--config",
            _text(t / "c.toml", '[model]\nguide = "iaf"\nguide_options = {context_dim = "x"}\n'),
        ],
        "context_dim (guide_options) must be a whole number",
    ),
    "iaf layers narrower than z": (
        lambda t, r: [
            "train",
            "--config",
            _text(t / "c.toml", '[model]\nguide = "iaf"\nguide_options = {hidden_dims = [4]}\n'),
        ],
        "must be sizes of at least the latent dimension (8)",
    ),
    "a guide option named like a parameter of the registry's own": (
        lambda t, r: [
            "train",
            "--config",
            _text(t / "c.toml", '[model]\nguide = "iaf"\nguide_options = {name = 1}\n'),
        ],
        "bad options for guide 'iaf'",
    ),
    "flows in a config file for a guide without flows": (
        lambda t, r: [
            "train",
            "--config",
            _text(t / "c.toml", '[model]\nguide = "full"\nguide_options = {flows = 2}\n'),
        ],
        "the config file's [model] guide_options flows applies to guide iaf, not full: remove",
    ),
    "mixture components in a config file that are no number": (
        lambda t, r: [
            "train",
            "--config",
            _text(t / "c.toml", '[model]\nprior = "mog"\nprior_options = {num_components = "x"}\n'),
        ],
        "[model] prior_options num_components must be a whole number of at least 1, got 'x'",
    ),
    "a sigma in a config file that is no number": (
        lambda t, r: [
            "train",
            "--config",
            _text(t / "c.toml", '[model]\nlikelihood_options = {sigma = "x"}\n'),
        ],
        "[model] likelihood_options sigma must be a number, got 'x'",
    ),
    "flows in a config file not whole": (
        lambda t, r: [
            "train",
            "--config",
            _text(t / "c.toml", '[model]\nguide = "iaf"\nguide_options = {flows = 0}\n'),
        ],
        "[model] guide_options flows must be a whole number of at least 1, got 0",
    ),
    "unknown binarization": (lambda t, r: ["train", "--binarize", "sometimes"], "'--binarize'"),
    "unknown device": (lambda t, r: ["train", "--device", "tpu"], "'--device'"),
    "cuda without a GPU": (lambda t, r: ["train", "--device", "cuda"], "CUDA is not available"),
    "two data sources": (
        lambda t, r: ["train", "--data", npy(t, np.ones((30, 4))), "--dataset", "mnist"],
        "give one of them",
    ),
    # output
    "run directory in use": (lambda t, r: ["train", "--out", r], "holds a trained run"),
    "output is a file": (lambda t, r: ["train", "--out", r / "config.json"], "is a file"),
    "picture over a data file": (
        lambda t, r: ["sample", r, "--out", npy(t, np.ones((3, 4)))],
        "must name a .png file",
    ),
    # checkpoints
    "missing checkpoint": (lambda t, r: ["sample", t / "nowhere"], "no checkpoint at"),
    "truncated checkpoint": (
        lambda t, r: ["sample", _truncate(r / "checkpoint.pt", 2000)],
        "not a readable checkpoint",
    ),
    "corrupted checkpoint": (
        lambda t, r: ["reconstruct", _overwrite(r / "checkpoint.pt", b"\x00" * 4096)],
        "not a readable checkpoint",
    ),
    "foreign checkpoint": (
        lambda t, r: ["sample", _foreign(t / "weights.pt")],
        "not a pyro-vae checkpoint",
    ),
    "newer checkpoint format": (
        lambda t, r: [
            "sample",
            edited_checkpoint(r, lambda p: p.update(format_version=FORMAT_VERSION + 1)),
        ],
        "upgrade pyro-vae",
    ),
    "checkpoint config and weights disagree": (
        lambda t, r: [
            "sample",
            edited_checkpoint(r, lambda p: p["config"]["model"].update(latent_dim=5)),
        ],
        "do not fit its own configuration",
    ),
    **UNREGISTERED,
    # resuming
    "resume a run stopped before its first checkpoint": (
        lambda t, r: ["train", "--resume", _never_saved(r)],
        "stopped before its first checkpoint, so there is nothing to resume",
    ),
    "sample a run stopped before its first checkpoint": (
        lambda t, r: ["sample", _never_saved(r)],
        "train it again into the same folder",
    ),
    "resume sets an option the run has none of": (
        lambda t, r: ["train", "--resume", r, "--epochs", "3", "--labels", "5"],
        "--labels (the run has none) cannot change",
    ),
    "--dataset folder without --data": (
        lambda t, r: ["train", "--dataset", "folder", "--out", t / "new"],
        "give it with --data DIR",
    ),
    "--dataset array without --data": (
        lambda t, r: ["train", "--dataset", "array", "--out", t / "new"],
        "give it with --data FILE",
    ),
    "resume changes the model": (
        lambda t, r: ["train", "--resume", r, "--epochs", "3", "--latent-dim", "2"],
        "--latent-dim (the run has 8) cannot change",
    ),
    "resume a finished run": (lambda t, r: ["train", "--resume", r], "has finished its 1 epochs"),
    "resume with --out": (lambda t, r: ["train", "--resume", r, "--out", t / "x"], "drop --out"),
    "resume nothing": (lambda t, r: ["train", "--resume", t / "nowhere"], "no checkpoint at"),
    # data
    "corrupted IDX file": (
        lambda t, r: ["train", "--dataset", "mnist", "--data-dir", corrupt_idx(t, cut=False)],
        "not an IDX file",
    ),
    "truncated IDX file": (
        lambda t, r: ["train", "--dataset", "mnist", "--data-dir", corrupt_idx(t, cut=True)],
        "truncated or damaged",
    ),
    "no IDX files": (
        lambda t, r: ["train", "--dataset", "kmnist", "--data-dir", t],
        "no kmnist IDX files",
    ),
    "NaN in the array": (
        lambda t, r: ["train", "--data", npy(t, np.array([[0.5, np.nan]] * 30))],
        "NaN or infinite",
    ),
    "infinity in the array": (
        lambda t, r: ["train", "--data", npy(t, np.array([[0.5, np.inf]] * 30))],
        "NaN or infinite",
    ),
    "array of rank 1": (lambda t, r: ["train", "--data", npy(t, np.ones(30))], "(N, D)"),
    "array with no rows": (lambda t, r: ["train", "--data", npy(t, np.ones((0, 4)))], "no data"),
    "grey data, binary likelihood": (
        lambda t, r: ["train", "--likelihood", "bernoulli"],
        "binary (0 or 1)",
    ),
    "data above 1, continuous Bernoulli": (
        lambda t, r: [
            "train",
            "--data",
            npy(t, np.full((30, 4), 2.0)),
            "--likelihood",
            "continuous-bernoulli",
        ],
        "in [0, 1]",
    ),
    # values that cannot be trained on
    "infinite sigma": (lambda t, r: ["train", "--sigma", "inf"], "'--sigma'"),
    "sigma too small for float32": (lambda t, r: ["train", "--sigma", "1e-30"], "from 1e-06"),
    "sigma too large": (lambda t, r: ["train", "--sigma", "1e30"], "to 1e+06"),
    "infinite learning rate": (lambda t, r: ["train", "--lr", "inf"], "'--lr'"),
    "negative seed": (lambda t, r: ["train", "--seed", "-1"], "'--seed'"),
    "seed of 2^32": (lambda t, r: ["train", "--seed", str(2**32)], "'--seed'"),
    "huge seed": (lambda t, r: ["train", "--seed", "9" * 40], "'--seed'"),
    "negative sampling seed": (lambda t, r: ["sample", r, "--seed", "-5"], "'--seed'"),
    "layers too large for memory": (
        lambda t, r: ["train", "--hidden-dims", "1000000000"],
        "lower --hidden-dims",
    ),
    "mixture components too many for memory": (
        lambda t, r: ["train", "--prior", "vamp", "--components", "1000000000000"],
        "--components",
    ),
    "particles too many for memory": (
        lambda t, r: ["train", "--num-particles", "100000000"],
        "lower --num-particles",
    ),
    "a device torch knows, pyro-vae does not": (
        lambda t, r: ["train", "--device", "mps"],
        "choose auto, cpu, cuda or cuda:N",
    ),
    "a malformed CUDA device": (lambda t, r: ["train", "--device", "cuda:x"], "cuda:N"),
    "a device for sampling that torch does not know": (
        lambda t, r: ["sample", r, "--device", "tpu"],
        "choose auto, cpu, cuda or cuda:N",
    ),
    "a picture of more images than can be seen": (
        lambda t, r: ["sample", r, "--num", "100000000"],
        "'--num'",
    ),
    "a manifold grid too fine to draw": (
        lambda t, r: ["manifold", r, "--grid", "100000"],
        "'--grid'",
    ),
    # output locations that cannot be written
    "run directory below a file": (
        lambda t, r: ["train", "--out", npy(t, np.ones((3, 4))) / "run"],
        "is a file, not a folder",
    ),
    "run directory where nothing can be created": (
        lambda t, r: ["train", "--out", "/proc/pyro-vae-run"],
        "cannot write /proc/pyro-vae-run",
    ),
    "run directory on a read-only system folder": (
        lambda t, r: ["train", "--out", "/sys/pyro-vae-run"],
        "cannot write /sys/pyro-vae-run",
    ),
    "picture where nothing can be created": (
        lambda t, r: ["sample", r, "--out", "/proc/samples.png"],
        "cannot write /proc",
    ),
    "picture below a file": (
        lambda t, r: ["manifold", r, "--out", npy(t, np.ones((3, 4))) / "m.png"],
        "is a file, not a folder",
    ),
    "an evaluation written over the run's own record": (
        lambda t, r: ["evaluate", r, "--num-samples", "2", "--out", r / "config.json"],
        "is a file of the run itself",
    ),
    "evaluation where nothing can be created": (
        lambda t, r: ["evaluate", r, "--num-samples", "2", "--out", "/proc/e.json"],
        "cannot write /proc",
    ),
    # data that cannot be read as images, or scored
    "text file named .npy": (
        lambda t, r: ["train", "--data", _text(t / "data.npy", "0.1,0.2\n")],
        "not a NumPy .npy or .npz file",
    ),
    "objects in an .npz": (
        lambda t, r: ["train", "--data", npz(t, x=np.array([[1, "a"]] * 30, dtype=object))],
        "holds Python objects",
    ),
    "complex array": (
        lambda t, r: ["train", "--data", npy(t, np.ones((30, 4)) * (1 + 1j))],
        "complex numbers",
    ),
    "labels that do not match the images": (
        lambda t, r: ["train", "--data", npz(t, x=np.ones((30, 4)), y=np.zeros(29, int))],
        "do not label the 30 images",
    ),
    "signed integers that are not pixels": (
        lambda t, r: ["train", "--data", npy(t, np.full((30, 4), -7, dtype=np.int64))],
        "not pixel intensities",
    ),
    "values too large to score": (
        lambda t, r: ["train", "--data", npy(t, np.full((30, 4), 1e25, dtype=np.float32))],
        "beyond what float32 networks can train on",
    ),
    "values beyond float32": (
        lambda t, r: ["train", "--data", npy(t, np.full((30, 4), 1e300))],
        "beyond float32's range",
    ),
    # images: the networks, folders, array layouts and the 8-bit likelihood
    "conv networks on vectors": (
        lambda t, r: ["train", "--network", "conv", "--data", npy(t, np.ones((30, 30)))],
        "no image shape: use --network mlp",
    ),
    "more conv stages than the images have pixels": (
        lambda t, r: ["train", "--network", "conv", "--hidden-dims", "8,16,32,64"],
        "too small for 4 conv stages",
    ),
    "an image size of zero": (
        lambda t, r: ["train", "--data", image_folder(t), "--image-size", "8x0"],
        "'--image-size'",
    ),
    "a channel count no image has": (
        lambda t, r: ["train", "--data", image_folder(t), "--channels", "4"],
        "'--channels'",
    ),
    "an image option for a dataset that is no folder": (
        lambda t, r: ["train", "--crop"],
        "--crop applies to --data DIR",
    ),
    "a layout for data that is no array": (
        lambda t, r: ["train", "--layout", "nhwc"],
        "--layout applies to --data FILE",
    ),
    "a folder with no images": (
        lambda t, r: ["train", "--data", _with_file(t / "notes", "readme.txt")],
        "no image files in",
    ),
    "an image file that does not decode": (
        lambda t, r: ["train", "--data", image_folder(t, broken=True)],
        "cannot be decoded: broken.png",
    ),
    "no data at the --data path": (
        lambda t, r: ["train", "--data", t / "missing"],
        "no file or folder at",
    ),
    "a 4-d array whose channels cannot be told": (
        lambda t, r: ["train", "--data", npy(t, np.ones((30, 5, 6, 7), dtype=np.uint8))],
        "name the order with --layout",
    ),
    "the 8-bit likelihood on data that are not 8-bit": (
        lambda t, r: ["train", "--likelihood", "discretized-logistic"],
        "8-bit pixel values k/255",
    ),
    "no CIFAR-10 batches in the data folder": (
        lambda t, r: ["train", "--dataset", "cifar10", "--data-dir", t],
        "no CIFAR-10",
    ),
    "moved data for a run not trained on a file": (
        lambda t, r: ["evaluate", r, "--data", npy(t, np.ones((30, 64)))],
        "not on a data file or folder: drop --data",
    ),
    # run directories: one writer, one identity
    "resume a run another process is training": (
        lambda t, r: ["train", "--resume", _locked(r), "--epochs", "3"],
        "is being trained by process",
    ),
    "train into a folder another process is training": (
        lambda t, r: ["train", "--out", _locked(t / "busy"), "--overwrite"],
        "is being trained by process",
    ),
    "checkpoint copied in from another run": (
        lambda t, r: [
            "train",
            "--resume",
            edited_checkpoint(r, lambda p: p.update(run_id="f" * 32)),
            "--epochs",
            "3",
        ],
        "belongs to another run",
    ),
    "values too large for float32 networks, Laplace": (
        lambda t, r: ["train", "--likelihood", "laplace", "--data", npy(t, np.full((30, 4), 1e30))],
        "beyond what float32 networks can train on",
    ),
    "an .npz holding something else than arrays": (
        lambda t, r: ["train", "--data", _zip_with_text(t / "data.npz")],
        "does not hold NumPy arrays",
    ),
    "time values": (
        lambda t, r: ["train", "--data", npy(t, np.ones((30, 4), dtype="timedelta64[s]"))],
        "expected numbers",
    ),
    "an IDX file of no images": (
        lambda t, r: ["train", "--dataset", "mnist", "--data-dir", _empty_idx(t)],
        "holds no images",
    ),
    "a path too long for the file system": (
        lambda t, r: ["train", "--out", t / ("x" * 300)],
        "File name too long",
    ),
    "a data file that is a loop of links": (
        lambda t, r: ["train", "--data", _link_loop(t / "loop.npy")],
        "no file or folder at",
    ),
    "a folder of yours with a file a run would write over": (
        lambda t, r: ["train", "--out", _with_file(t / "project", "config.json")],
        "would write over (config.json)",
    ),
    "a lock that is a link": (
        lambda t, r: ["train", "--out", _lock_link(t / "linked", t / "notes.txt")],
        "is not a lock file that pyro-vae made",
    ),
    "--overwrite with --resume": (
        lambda t, r: ["train", "--resume", r, "--overwrite", "--epochs", "3"],
        "--overwrite starts a new run",
    ),
    "a checkpoint whose format is not a number": (
        lambda t, r: ["sample", edited_checkpoint(r, lambda p: p.update(format_version="x"))],
        "its format is not a number",
    ),
    "a checkpoint of NaN weights": (
        lambda t, r: ["train", "--resume", _nan_weights(r), "--epochs", "3"],
        "not finite numbers",
    ),
    # the training practice's options, and --config FILE
    "free bits with the Monte Carlo KL": (
        lambda t, r: ["train", "--free-bits", "0.5"],
        "use --elbo analytic with --free-bits",
    ),
    "free bits with a mixture prior": (
        lambda t, r: ["train", "--elbo", "analytic", "--prior", "mog", "--free-bits", "0.5"],
        "use --prior standard or gaussian with --free-bits",
    ),
    "beta with iwae": (
        lambda t, r: ["train", "--elbo", "iwae", "--beta", "4"],
        "--elbo mc, analytic or stl",
    ),
    "zero beta": (lambda t, r: ["train", "--beta", "0"], "'--beta'"),
    "unknown lr schedule": (lambda t, r: ["train", "--lr-schedule", "linear"], "'--lr-schedule'"),
    "lr factor above one": (
        lambda t, r: ["train", "--lr-schedule", "step", "--lr-factor", "2"],
        "'--lr-factor': must lie strictly between 0 and 1",
    ),
    "a schedule's option without it": (
        lambda t, r: ["train", "--lr-min", "1e-5"],
        "--lr-min applies to --lr-schedule cosine, not constant",
    ),
    "warm-up longer than the run": (
        lambda t, r: ["train", "--epochs", "3", "--kl-warmup", "5"],
        "--kl-warmup 5 is longer than the run's 3 epochs",
    ),
    "a beta too small for float32": (lambda t, r: ["train", "--beta", "1e-46"], "beta must lie"),
    "a beta too large for float32": (lambda t, r: ["train", "--beta", "1e39"], "beta must lie"),
    "a string where a number belongs in a config file": (
        lambda t, r: ["train", "--config", _text(t / "c.toml", '[train]\nbeta = "2"\n')],
        "beta must be a number, got '2'",
    ),
    "cosine floor above the rate": (
        lambda t, r: ["train", "--lr-schedule", "cosine", "--lr-min", "0.1"],
        "--lr-min (0.1) must be below --lr",
    ),
    "zero lr step": (lambda t, r: ["train", "--lr-step", "0"], "'--lr-step'"),
    "negative warm-up": (lambda t, r: ["train", "--kl-warmup", "-1"], "'--kl-warmup'"),
    "negative free bits": (lambda t, r: ["train", "--free-bits", "-1"], "'--free-bits'"),
    "zero patience": (lambda t, r: ["train", "--patience", "0"], "'--patience'"),
    "missing config file": (
        lambda t, r: ["train", "--config", t / "nope.toml"],
        "no such file",
    ),
    "config file that is not TOML": (
        lambda t, r: ["train", "--config", _text(t / "c.toml", "epochs = = 3")],
        "is not valid TOML",
    ),
    "config file that is not JSON": (
        lambda t, r: ["train", "--config", _text(t / "c.json", '{"train": {}}\n{}')],
        "is not valid JSON",
    ),
    "config file with an unknown key": (
        lambda t, r: ["train", "--config", _text(t / "c.toml", "[train]\nepoch = 3\n")],
        "unknown keys ['epoch'] in [train]",
    ),
    "config file with a value of the wrong type": (
        lambda t, r: ["train", "--config", _text(t / "c.toml", '[train]\nepochs = "ten"\n')],
        "epochs must be a whole number of at least 1, got 'ten'",
    ),
    "config file with a float for a whole number": (
        lambda t, r: ["train", "--config", _text(t / "c.toml", "[train]\nbatch_size = 64.0\n")],
        "batch_size must be a whole number",
    ),
    "config file with a string for a number": (
        lambda t, r: ["train", "--config", _text(t / "c.toml", '[train]\nlr = "fast"\n')],
        "lr must be a number, got 'fast'",
    ),
    "resume changing beta": (
        lambda t, r: ["train", "--resume", r, "--epochs", "3", "--beta", "2"],
        "--beta (the run has 1.0) cannot change",
    ),
    "config file with a number for the layers": (
        lambda t, r: ["train", "--config", _text(t / "c.toml", "[model]\nhidden_dims = 5\n")],
        "[model] hidden_dims must be a list of layer sizes, got 5",
    ),
    "config file with a number for component options": (
        lambda t, r: ["train", "--config", _text(t / "c.toml", "[model]\nprior_options = 3\n")],
        "[model] prior_options must be a table of keywords",
    ),
    "config with resume": (
        lambda t, r: ["train", "--resume", r, "--config", r / "config.json"],
        "drop --config",
    ),
    # training
    "diverging learning rate": (
        lambda t, r: ["train", "--lr", "5", "--sigma", "0.1", "--out", t / "run"],
        "learning rate",
    ),
    # labels: the conditional VAE and M2
    "unknown model": (lambda t, r: ["train", "--model", "m3"], "'--model'"),
    "m2 without --labels": (lambda t, r: ["train", "--model", "m2"], "needs --labels N"),
    "--labels without m2": (
        lambda t, r: ["train", "--model", "cvae", "--labels", "100"],
        "use them with --model m2",
    ),
    "zero labels": (lambda t, r: ["train", "--model", "m2", "--labels", "0"], "'--labels'"),
    "negative alpha": (
        lambda t, r: ["train", "--model", "m2", "--labels", "10", "--alpha", "-1"],
        "'--alpha'",
    ),
    "more labels than images": (
        lambda t, r: ["train", "--model", "m2", "--labels", "5000", "--out", t / "run"],
        "give at most 1437",
    ),
    "more labels than a class has": (
        lambda t, r: ["train", "--model", "m2", "--labels", "1437", "--out", t / "run"],
        "balanced by class",
    ),
    "m2 with the analytic ELBO": (
        lambda t, r: ["train", "--model", "m2", "--labels", "50", "--elbo", "analytic"],
        "use --elbo mc",
    ),
    "m2 with beta": (
        lambda t, r: ["train", "--model", "m2", "--labels", "50", "--beta", "2"],
        "drop --beta",
    ),
    "cvae with the VampPrior": (
        lambda t, r: ["train", "--model", "cvae", "--prior", "vamp", "--out", t / "run"],
        "use --prior standard, gaussian or mog",
    ),
    "cvae on data without labels": (
        lambda t, r: [
            "train",
            "--model",
            "cvae",
            "--data",
            npy(t, np.random.rand(40, 4, 4)),
            "--out",
            t / "run",
        ],
        "has no labels",
    ),
    "m2 on negative labels": (
        lambda t, r: [
            "train",
            "--model",
            "m2",
            "--labels",
            "4",
            "--data",
            npz(t, x=np.random.rand(40, 4, 4), y=np.arange(40) % 4 - 1),
            "--out",
            t / "run",
        ],
        "number the classes from 0",
    ),
    "cvae on labels of one class": (
        lambda t, r: [
            "train",
            "--model",
            "cvae",
            "--data",
            npz(t, x=np.random.rand(40, 4, 4), y=np.zeros(40, dtype=np.int64)),
            "--out",
            t / "run",
        ],
        "needs two classes at least",
    ),
    "cvae on labels with a gap": (
        lambda t, r: [
            "train",
            "--model",
            "cvae",
            "--data",
            npz(t, x=np.random.rand(40, 4, 4), y=np.arange(40) % 3 * 2),
            "--out",
            t / "run",
        ],
        "no training image of class 1, 3: renumber the labels",
    ),
    "unknown model in a config file": (
        lambda t, r: ["train", "--config", _text(t / "c.toml", '[model]\nkind = "m3"\n')],
        "unknown model 'm3'",
    ),
    "labels as text in a config file": (
        lambda t, r: [
            "train",
            "--config",
            _text(t / "c.toml", '[model]\nkind = "m2"\n[train]\nlabels = "x"\n'),
        ],
        "labels must be a whole number",
    ),
    "sample --label of an unlabelled model": (
        lambda t, r: ["sample", r, "--label", "3"],
        "train with --model cvae",
    ),
    "manifold --label of an unlabelled model": (
        lambda t, r: ["manifold", r, "--label", "3"],
        "only a model trained with labels knows",
    ),
}


def npz(tmp: Path, **arrays: np.ndarray) -> Path:
    np.savez(tmp / "data.npz", **arrays)
    return tmp / "data.npz"


def _text(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _with_file(folder: Path, name: str) -> Path:
    folder.mkdir()
    (folder / name).write_text("mine")
    return folder


def _zip_with_text(path: Path) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("hello.txt", "not an array")
    return path


def _empty_idx(tmp: Path) -> Path:
    raw = write_mnist(tmp / "data", compress=False)
    images = raw / "t10k-images-idx3-ubyte"
    images.write_bytes(bytes([0, 0, 8, 3]) + (0).to_bytes(4, "big") + (28).to_bytes(4, "big") * 2)
    (raw / "train-images-idx3-ubyte").unlink()
    return tmp / "data"


def _link_loop(path: Path) -> Path:
    path.symlink_to(path)
    return path


def _lock_link(folder: Path, target: Path) -> Path:
    folder.mkdir()
    target.write_text("mine")
    (folder / ".lock").symlink_to(target)
    return folder


def _nan_weights(run: Path) -> Path:
    def poison(payload: dict) -> None:
        name = next(iter(payload["model_state"]))
        payload["model_state"][name] = payload["model_state"][name] * float("nan")

    return edited_checkpoint(run, poison)


_HELD_LOCKS: list = []  # open files whose locks stand for a training process, until the test ends


def _locked(run_dir: Path) -> Path:
    """``run_dir`` as another process training in it would leave it: its lock held."""
    run_dir.mkdir(exist_ok=True)
    file = open(run_dir / ".lock", "a+")  # noqa: SIM115 (kept open: it holds the lock)
    fcntl.flock(file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    file.write("4242\n")
    file.flush()
    _HELD_LOCKS.append(file)
    return run_dir


def _never_saved(run: Path) -> Path:
    """``run`` as a run killed before its first checkpoint leaves it: its record, no checkpoint."""
    (run / "checkpoint.pt").unlink()
    return run


def _truncate(path: Path, size: int) -> Path:
    path.write_bytes(path.read_bytes()[:size])
    return path


def _overwrite(path: Path, content: bytes) -> Path:
    path.write_bytes(content)
    return path


def _foreign(path: Path) -> Path:
    torch.save({"weights": torch.zeros(3)}, path)
    return path


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("trained") / "run"
    result = CliRunner().invoke(
        cli.app, ["train", "--out", str(out), "--epochs", "1", "--hidden-dims", "16"]
    )
    assert result.exit_code == 0, result.output
    return out


def snapshot(folder: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.fixture(autouse=True)
def release_held_locks():
    yield
    while _HELD_LOCKS:
        _HELD_LOCKS.pop().close()


@pytest.mark.parametrize("setup, message", CASES.values(), ids=CASES.keys())
def test_user_mistakes_get_one_line_and_exit_status_2(setup, message, trained_run, tmp_path):
    if message == "CUDA is not available" and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    run = tmp_path / "trained"
    shutil.copytree(trained_run, run)
    args = [str(a) for a in setup(tmp_path, run)]
    assert_user_error(args, message, tmp_path)


def assert_user_error(args: list[str], message: str, folder: Path) -> None:
    """``args`` end in one ``Error:`` line containing ``message``, exit status 2, no traceback,
    every file under ``folder`` still there as it was, and no default run directory started."""
    before = snapshot(folder)
    default_runs = Path.cwd() / "runs"  # where train writes without --out
    runs_before = set(default_runs.iterdir()) if default_runs.is_dir() else set()
    result = CliRunner().invoke(cli.app, args)
    assert result.exit_code == 2, result.output
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("Error")]
    assert len(error_lines) == 1, result.stderr
    assert message in error_lines[0]
    assert "Traceback" not in result.output
    after = snapshot(folder)
    assert all(after.get(path) == content for path, content in before.items())
    runs_after = set(default_runs.iterdir()) if default_runs.is_dir() else set()
    assert runs_after == runs_before  # no run directory was started


def test_a_download_without_a_network_is_one_line(tmp_path, monkeypatch):
    """torchvision's own failure (no network here: it is made to fail as it would)."""
    import urllib.error

    import torchvision.datasets

    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torchvision.datasets, "MNIST", offline)
    args = ["train", "--dataset", "mnist", "--download", "--data-dir", str(tmp_path / "data")]
    assert_user_error(args, "could not download mnist", tmp_path)


@pytest.mark.parametrize(
    "environment, message",
    [
        ({"WORLD_SIZE": "abc"}, "not numbers of processes"),
        ({"WORLD_SIZE": "2"}, "this is not a torchrun launch"),
        ({"WORLD_SIZE": "2", "RANK": "0"}, "MASTER_ADDR, MASTER_PORT are not"),
    ],
)
def test_a_stray_distributed_environment_is_one_line(environment, message, tmp_path, monkeypatch):
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    assert_user_error(["train", "--out", str(tmp_path / "run")], message, tmp_path)
