"""A trained run, ready to use: load it, encode and score new data, decode and generate.

``load_run(path)`` takes a run directory (its ``best.pt`` where it kept one, else its
``checkpoint.pt``), a checkpoint file, or a folder written by ``export_run``; it returns a
``TrainedModel``: the VAE in evaluation mode on its device, with the run's data transform
(data/transform.py), so that every method takes raw data of the run's kind (an array, an image
file, a folder of images, an IDX or ``.npy`` file) as well as rows the model already reads.

An exported model (``export_run``) is the weights as ``safetensors`` (loading them runs no code,
unlike a pickle), the configuration and data transform as JSON, and a model card (Markdown).
"""

import json
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyro
import pyro.distributions as dist
import torch

from pyro_vae.core.config import RunConfig
from pyro_vae.core.devices import resolve_device
from pyro_vae.core.errors import UserInputError
from pyro_vae.data.datasets import as_float, load_run_data
from pyro_vae.data.labels import check_label
from pyro_vae.data.transform import DataTransform, NewData
from pyro_vae.inference.evaluate import image_bounds
from pyro_vae.models.build import build_model
from pyro_vae.models.vae import VAE
from pyro_vae.runs.checkpoint import environment, load_checkpoint
from pyro_vae.runs.rundir import BEST, CHECKPOINT

log = logging.getLogger(__name__)

WEIGHTS = "model.safetensors"  # an exported model's weights
DESCRIPTION = "pyro-vae.json"  # its configuration, data transform and versions
CARD = "README.md"  # its model card
EXPORT_FORMAT = 1  # bump when an export's layout changes; older readers refuse newer exports

Data = Any  # an array, a tensor, a path, or NewData: whatever DataTransform takes
CHUNK = 4096  # images decoded at once by ``sample`` (10⁶ images of 784 floats are 3 GB)
_NO_CLASSES = (
    "a class (--label) only means something to a model trained with labels (--model cvae or "
    "m2): drop it"
)


@dataclass(frozen=True)
class Codes:
    """Per image, the mean and standard deviation of each coordinate of q(z | x)."""

    mean: torch.Tensor  # (N, L)
    std: torch.Tensor  # (N, L)
    exact: bool  # False: estimated from samples of q (a flow's mean has no closed form)
    classes: torch.Tensor | None  # (N,) the class each code was computed for (labelled models)


@dataclass(frozen=True)
class Scores:
    """Per image, bounds on log p(x) in nats; bits per dimension as ``bits_per_dim(nats)``."""

    elbo: torch.Tensor  # (N,) the ELBO, KL in closed form where it has one
    iwae: torch.Tensor  # (N,) the importance-weighted bound, K samples of z
    num_samples: int
    data_dim: int

    def bits_per_dim(self, nats: torch.Tensor) -> torch.Tensor:
        return -nats / (self.data_dim * math.log(2))


class TrainedModel:
    """A trained VAE and its run's data transform. Build it with ``load_run``."""

    def __init__(
        self,
        vae: VAE,
        transform: DataTransform,
        config: RunConfig,
        source: Path,
        epochs_trained: int,
        run_id: str | None = None,
        num_images: int | None = None,
    ):
        self.vae = vae.eval()
        self.transform = transform
        self.config = config
        self.source = source  # the file or folder the weights came from
        self.epochs_trained = epochs_trained
        self.run_id = run_id
        self.num_images = num_images  # in the run's data, all splits (Checkpoint.num_images)

    @property
    def device(self) -> torch.device:
        return self.vae.kl_weight.device

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return self.transform.image_shape

    def data(self, data: Data, labels: Any = None, seed: int = 0) -> NewData:
        """``data`` as the model reads them, on its device (``DataTransform``; ``seed``: a
        binarizing run's draws). Rows of a tensor on the right device pass through as they are."""
        new = data if isinstance(data, NewData) else self.transform(data, labels, seed)
        stored = new.stored.to(self.device)
        given = None if new.labels is None else new.labels.to(self.device)
        if given is not None and self.vae.labelled and len(given):
            outside = (given < 0) | (given >= self.vae.num_classes)
            if bool(outside.any()):
                raise UserInputError(
                    f"the data's label {int(given[outside][0])} is not a class of this model, "
                    f"whose classes are 0 to {self.vae.num_classes - 1}: give the labels the run "
                    "was trained with"
                )
        return NewData(stored, given, new.names)

    def split(
        self, name: str = "test", path: str | None = None, data_dir: str | None = None
    ) -> NewData:
        """A split ("train", "val" or "test") of the run's own data, read from where the run
        recorded them or from where they have moved (``path``, ``data_dir``: see
        ``data.load_run_data``), on the model's device."""
        dataset = load_run_data(
            self.config.data, self.image_shape, path, data_dir, num_images=self.num_images
        )
        split = getattr(dataset, name)
        labels = split.labels if dataset.num_classes else None
        return self.data(NewData(split.stored, labels, None))

    def _classes(self, new: NewData, label: int | None = None) -> torch.Tensor | None:
        """The classes a labelled model reads for ``new``: ``label`` for all where given, else
        the data's own labels; M2 falls back on its classifier q(y|x)."""
        if not self.vae.labelled:
            if label is not None:
                raise UserInputError(_NO_CLASSES)
            return None
        if label is not None:
            return self._label_tensor(label, len(new))
        if new.labels is not None:
            return new.labels
        if self.vae.classifies:
            return self.vae.classify(new.x)
        raise UserInputError(
            f"a {type(self.vae).__name__} reads each image's class, and these data carry none: "
            "give a class for all (--label K; label=K in Python), or data with labels (a .npz "
            "with 'y', or a folder with a subfolder for each of two classes or more)"
        )

    @torch.no_grad()
    def posterior(
        self, data: Data, labels: Any = None, label: int | None = None
    ) -> dist.Distribution:
        """q(z | x) (and y), batch shape (N,)."""
        new = self.data(data, labels)
        return self.vae.posterior(new.x, self._classes(new, label))

    @torch.no_grad()
    def encode(self, data: Data, labels: Any = None, label: int | None = None) -> torch.Tensor:
        """One code per image, (N, L): the mean of q(z|x) (for a flow, the flows applied to its
        Gaussian's mean, as ``VAE.encode``). ``label``: a labelled model's class for all."""
        new = self.data(data, labels)
        return self.vae.encode(new.x, self._classes(new, label))

    @torch.no_grad()
    def codes(
        self, data: Data, labels: Any = None, label: int | None = None, num_samples: int = 256
    ) -> Codes:
        """The mean and standard deviation of q(z|x) per coordinate: exact for the Gaussian
        families, estimated from ``num_samples`` draws of z for a flow. ``label``: the class a
        labelled model reads for every image (else the data's labels, or M2's q(y|x))."""
        if num_samples < 2:
            raise ValueError(f"a standard deviation needs 2 samples at least, got {num_samples}")
        new = self.data(data, labels)
        classes = self._classes(new, label)
        means, stds, exact = [], [], True
        for start in range(0, len(new), 4096):
            rows = slice(start, start + 4096)
            q = self.vae.posterior(
                as_float(new.stored[rows]), None if classes is None else classes[rows]
            )
            try:
                mean, std = q.mean, q.stddev
            except NotImplementedError:  # a flow: no closed form
                z = q.sample((num_samples,))  # (S, n, L)
                mean, std, exact = z.mean(0), z.std(0), False
            means.append(mean)
            stds.append(std)
        return Codes(torch.cat(means), torch.cat(stds), exact, classes)

    @torch.no_grad()
    def decode(self, z: torch.Tensor, label: int | torch.Tensor | None = None) -> torch.Tensor:
        """The mean of p(x | z) (and y), as images of the run's shape (``output_shape``)."""
        z = torch.as_tensor(z, dtype=torch.float32, device=self.device)
        if z.ndim != 2 or z.shape[1] != self.vae.latent_dim:
            raise ValueError(
                f"decode takes codes of shape (N, {self.vae.latent_dim}), got {tuple(z.shape)}"
            )
        y = self._label_tensor(label, z.shape[0])
        return self._shaped(self.vae.decode(z, y))

    @torch.no_grad()
    def sample(self, num: int, label: int | None = None, seed: int | None = None) -> torch.Tensor:
        """``num`` new images: decoded means of z ~ p(z), of the run's shape. A labelled model
        draws class ``label``, or classes 0, 1, ..., K−1 in turn (``sample_classes``)."""
        if num < 1:
            raise ValueError(f"sample draws 1 image at least, got {num}")
        if seed is not None:
            pyro.set_rng_seed(seed)
        y = self.sample_classes(num, label)
        z = self.vae.prior().sample((num,))  # all at once: the same images however decoded
        rows = [
            self.vae.decode(
                z[start : start + CHUNK], None if y is None else y[start : start + CHUNK]
            )
            for start in range(0, num, CHUNK)
        ]
        return self._shaped(torch.cat(rows))

    def sample_classes(self, num: int, label: int | None = None) -> torch.Tensor | None:
        """The classes ``sample(num, label)`` draws (None for a model without labels)."""
        y = self._label_tensor(label, num)
        if y is None and self.vae.labelled:
            y = torch.arange(num, device=self.device) % self.vae.num_classes
        return y

    @torch.no_grad()
    def score(
        self,
        data: Data,
        labels: Any = None,
        num_samples: int = 1000,
        on_progress: Callable[[int, int], None] | None = None,
        label: int | None = None,
    ) -> Scores:
        """Per image, the ELBO and the importance-weighted bound on log p(x) with K =
        ``num_samples`` (the numbers ``evaluate`` averages). M2 sums its class out; the
        conditional VAE's bounds are on log p(x | y), y the data's labels or ``label``."""
        if num_samples < 1:
            raise ValueError(f"score needs 1 sample of z per image at least, got {num_samples}")
        new = self.data(data, labels)
        self.vae.likelihood.check_data(new.x)
        if self.vae.semi_supervised and label is not None:
            raise UserInputError(
                "M2's bounds sum its class out (log p(x) of the image alone): drop --label"
            )
        # A semi-supervised model's bound reads no class: it sums the class out.
        classes = None if self.vae.semi_supervised else self._classes(new, label)
        bounds = image_bounds(
            self.vae, new.stored, num_samples, on_progress=on_progress, labels=classes
        )
        return Scores(bounds["elbo_analytic_kl"], bounds["iwae"], num_samples, new.stored.shape[1])

    def output_shape(self) -> tuple[int, ...]:
        """Images (C, H, W), or D for data that were plain vectors (an array of rows)."""
        channels, height, _ = self.image_shape
        return (self.transform.data_dim,) if (channels, height) == (1, 1) else self.image_shape

    def _shaped(self, rows: torch.Tensor) -> torch.Tensor:
        return rows.reshape(rows.shape[0], *self.output_shape())

    def _label_tensor(self, label: Any, num: int) -> torch.Tensor | None:
        """``label`` (a class for all ``num``, or one per image) as (num,) classes."""
        if label is None:
            return None
        if not self.vae.labelled:
            raise UserInputError(_NO_CLASSES)
        values = torch.as_tensor(label, device=self.device)
        if values.is_floating_point() or values.is_complex() or values.dtype == torch.bool:
            raise UserInputError(f"a class is a whole number, got {label!r}")
        if values.ndim == 0:
            check_label(int(values), self.vae.num_classes)
            return values.long().expand(num).clone()
        outside = (values < 0) | (values >= self.vae.num_classes)
        if bool(outside.any()):
            check_label(int(values[outside][0]), self.vae.num_classes)
        if values.shape != (num,):
            raise ValueError(
                f"give one class per image, (N,) = ({num},), got {tuple(values.shape)}"
            )
        return values.long()


def model_file(run: Path, latest: bool = False) -> Path:
    """The checkpoint to read for ``run`` (a run directory or a checkpoint file): the run's
    best.pt where it kept one, unless ``latest`` asks for the last epoch's checkpoint.pt."""
    run = Path(run)
    if latest and run.name == BEST:
        raise UserInputError(
            f"{run} is the best model, and --latest asks for the last epoch's: give the run "
            f"directory ({run.parent}) with --latest, or drop --latest"
        )
    if not run.is_dir():
        return run
    if (run / BEST).is_file() and not latest:
        log.info(
            "using %s, the model of the best validation ELBO (--latest: the last epoch's)",
            run / BEST,
        )
        return run / BEST
    return run / CHECKPOINT


def is_export(path: Path) -> bool:
    """Whether ``path`` is a folder written by ``export_run``."""
    try:
        description = json.loads((Path(path) / DESCRIPTION).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(description, dict) and description.get("format") == "pyro-vae export"


def load_run(
    path: str | Path, device: str | torch.device = "cpu", latest: bool = False
) -> TrainedModel:
    """The trained model of a run directory, a checkpoint file or an exported folder, in
    evaluation mode on ``device`` ("auto": CUDA where available)."""
    path = Path(path)
    device = resolve_device(device) if isinstance(device, str) else device
    if path.is_dir() and (path / DESCRIPTION).is_file():  # checked, damaged or not, there
        return _load_export(path, device)
    source = model_file(path, latest)
    checkpoint = load_checkpoint(source, device)
    return TrainedModel(
        checkpoint.build_vae(device),
        DataTransform.of_run(
            checkpoint.config.data, checkpoint.image_shape, checkpoint.class_names
        ),
        checkpoint.config,
        source,
        len(checkpoint.trainer_state["history"]),
        checkpoint.run_id,
        checkpoint.num_images,
    )


def export_run(model: TrainedModel, out: Path, card: str) -> list[Path]:
    """Write ``model`` to the folder ``out`` (created): its weights as safetensors, its
    configuration and data transform as JSON, and ``card`` (Markdown) as its README."""
    from safetensors.torch import save_model  # only exporting and loading exports need it

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    description = {
        "format": "pyro-vae export",
        "format_version": EXPORT_FORMAT,
        "environment": environment(),
        "config": model.config.to_dict(),
        "transform": model.transform.to_dict(),
        "epochs_trained": model.epochs_trained,
        "run_id": model.run_id,
        "num_images": model.num_images,
    }
    written = [out / WEIGHTS, out / DESCRIPTION, out / CARD]
    # save_model, not save_file: a VampPrior holds the encoder, whose tensors appear twice in
    # the state dict; save_model stores each once and load_model puts them back.
    save_model(model.vae, str(written[0]), metadata={"format": "pyro-vae"})
    written[1].write_text(json.dumps(description, indent=2) + "\n")
    written[2].write_text(card)
    return written


def _load_export(path: Path, device: torch.device) -> TrainedModel:
    from safetensors import SafetensorError
    from safetensors.torch import load_model

    try:
        description = json.loads((path / DESCRIPTION).read_text())
        if description.get("format") != "pyro-vae export":
            raise ValueError("not a pyro-vae export")
        version = description["format_version"]
        config = RunConfig.from_dict(description["config"])
        transform = DataTransform.from_dict(description["transform"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        raise UserInputError(
            f"{path / DESCRIPTION} is not a readable pyro-vae export ({error}): export the run "
            "again (pyro-vae export RUN --out DIR)"
        ) from None
    if not isinstance(version, int) or version > EXPORT_FORMAT:
        raise UserInputError(
            f"{path} is an export of format {version!r}, newer than this pyro-vae reads "
            f"({EXPORT_FORMAT}): upgrade pyro-vae"
        )
    vae = build_model(config.model, transform.image_shape)
    try:
        load_model(vae, str(path / WEIGHTS), device="cpu")
    except (OSError, SafetensorError, RuntimeError) as error:
        raise UserInputError(
            f"{path / WEIGHTS} cannot be read or does not fit its configuration "
            f"({' '.join(str(error).split())[:200]}): export the run again"
        ) from None
    return TrainedModel(
        vae.to(device),
        transform,
        config,
        path,
        int(description.get("epochs_trained", 0)),
        description.get("run_id"),
        description.get("num_images"),
    )
