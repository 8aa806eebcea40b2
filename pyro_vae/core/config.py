"""Configuration of a run as dataclasses; a checkpoint stores them, so every run can be rebuilt.

Defaults are chosen so that ``pyro-vae train`` finishes on the built-in digits in about a minute on
two CPU cores. One module per section (model_config.py, data_config.py, train_config.py); in each,
every field declares its option of ``pyro-vae train`` beside its default (core/options.py says
what a declaration holds), and each dataclass checks its own values, by those declarations and by
the checks between fields, so a bad option fails before any work starts. A message marks the
fields it names (```lr` must be ...``, see core/errors.py).
"""

from dataclasses import asdict, dataclass, field
from typing import Any

from pyro_vae.core.data_config import BINARIZATIONS, LAYOUTS, SPLITS, DataConfig
from pyro_vae.core.model_config import MODEL_KINDS, ModelConfig
from pyro_vae.core.options import MAY_CHANGE, settings
from pyro_vae.core.train_config import (
    DEVICES,
    ELBO_ESTIMATORS,
    LR_SCHEDULES,
    MAX_BETA,
    MAX_SEED,
    MIN_BETA,
    TrainConfig,
)

__all__ = [
    "BINARIZATIONS",
    "DEVICES",
    "ELBO_ESTIMATORS",
    "LAYOUTS",
    "LR_SCHEDULES",
    "MAX_BETA",
    "MAX_SEED",
    "MIN_BETA",
    "MODEL_KINDS",
    "RESUMABLE",
    "SECTIONS",
    "SETTINGS",
    "SPLITS",
    "DataConfig",
    "ModelConfig",
    "RunConfig",
    "TrainConfig",
]


@dataclass(frozen=True)
class RunConfig:
    """Everything that defines a training run. Each section checks itself; what a model asks of
    its training (M2: labels, its own objective) its class checks, where the run is built
    (models/build.py's ``check_run``)."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "RunConfig":
        return cls(
            model=ModelConfig(**values["model"]),
            data=DataConfig(**values["data"]),
            train=TrainConfig(**values["train"]),
        )


SECTIONS = {"model": ModelConfig, "data": DataConfig, "train": TrainConfig}
SETTINGS = settings(SECTIONS)  # every declared value, in the order of its declaration
# What a resumed run may change (resume_run): not the model, the data or the seed.
RESUMABLE = tuple(s.field for s in SETTINGS if s.option.resume == MAY_CHANGE)
