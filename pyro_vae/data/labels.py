"""Class labels as the labelled models read them: one-hot codes, checks, a labelled subset.

Every dataset here carries labels (the digits, MNIST's label files, ``y`` in an ``.npz``, the
subfolders of an image folder, CIFAR-10's batches); ``Dataset.num_classes`` says how many classes
they number, 0 where the data have none. The conditional VAE (models/cvae.py) and M2
(models/m2.py) read them.
"""

import logging

import torch

from pyro_vae.core.errors import UserInputError
from pyro_vae.data.datasets import Dataset

log = logging.getLogger(__name__)


def one_hot(y: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Integer classes (...) as float32 one-hot rows (..., num_classes).

    A comparison rather than ``F.one_hot``, which checks the labels' range by reading them: this
    one is a plain tensor operation, so a recorded step (inference/fast/replay.py) can hold it.
    """
    classes = torch.arange(num_classes, device=y.device)
    return (y.unsqueeze(-1) == classes).to(torch.float32)


def check_labels(data: Dataset, model: str) -> None:
    """Refuse data that a model reading labels cannot learn from: no labels, a negative one or
    one beyond the training images' classes, fewer than two classes, or a class number with no
    training image (a gap)."""
    if data.num_classes == 0:
        raise UserInputError(
            f"`kind` {model} reads the images' classes, but {data.name} has no labels: save "
            "them as 'y' in the .npz, or put each class's images in a subfolder of its own "
            "(or train `kind` vae)"
        )
    for name, split in (("train", data.train), ("validation", data.val), ("test", data.test)):
        if len(split) and int(split.labels.min()) < 0:
            raise UserInputError(
                f"`kind` {model} reads classes 0, 1, 2, ..., but the {name} split has the "
                f"label {int(split.labels.min())}: number the classes from 0"
            )
        if len(split) and int(split.labels.max()) >= data.num_classes:
            raise UserInputError(  # an official test split with a class the rest lacks
                f"the {name} split has the label {int(split.labels.max())}, beyond the "
                f"{data.num_classes} classes of the training images: use the same classes"
            )
    # Every class 0..K−1 among the training images: an empty one would be a class the model
    # keeps a place for (a share of p(y), a row of samples) and never sees.
    counts = torch.bincount(data.train.labels, minlength=data.num_classes)
    missing = (counts == 0).nonzero().flatten().tolist()
    if data.num_classes < 2 or missing:
        what = (
            f"only the class {data.num_classes - 1}"
            if data.num_classes < 2
            else f"no training image of class {', '.join(map(str, missing[:5]))}"
            + (", ..." if len(missing) > 5 else "")
        )
        raise UserInputError(
            f"`kind` {model} needs two classes at least, numbered 0, 1, 2, ... without gaps, "
            f"but {data.name} has {what}: renumber the labels"
        )


def check_label(label: int, num_classes: int) -> None:
    """A class asked for by the user, ``--label K``, must be one the model knows."""
    if not 0 <= label < num_classes:
        raise UserInputError(
            f"--label {label} is not a class of this model: give one from 0 to {num_classes - 1}"
        )


def choose_labelled(labels: torch.Tensor, count: int, seed: int) -> torch.Tensor:
    """Indices of ``count`` rows whose labels are kept, balanced by class and chosen by ``seed``.

    Each class present gets count // C rows, the first count % C classes (in a seeded order)
    one more, as in Kingma et al. (2014); a class with too few images is refused.
    """
    classes = labels.unique()
    available = len(labels)
    if count > available:
        raise UserInputError(
            f"`labels` {count} is more than the {available} training images: give at most "
            f"{available}"
        )
    if count < len(classes):
        log.info(
            "--labels %d is fewer than the %d classes: %d of them keep no labelled image, and "
            "M2 can only cluster their images without knowing which class they are (give "
            "--labels %d or more for one of each)",
            count, len(classes), len(classes) - count, len(classes),
        )  # fmt: skip
    generator = torch.Generator().manual_seed(seed)
    extra = torch.randperm(len(classes), generator=generator)[: count % len(classes)]
    chosen = []
    for position, label in enumerate(classes.tolist()):
        members = (labels == label).nonzero().flatten().cpu()
        wanted = count // len(classes) + int(bool((extra == position).any()))
        if wanted > len(members):
            most = len(members) * len(classes)
            raise UserInputError(
                f"`labels` {count} asks for {wanted} images of class {label}, which has "
                f"{len(members)} training images: give at most {most} labels (balanced by class)"
            )
        chosen.append(members[torch.randperm(len(members), generator=generator)[:wanted]])
    return torch.cat(chosen).sort().values.to(labels.device)
