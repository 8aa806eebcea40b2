"""A training run from configuration to run directory: the facade that the CLI calls.

A run directory holds:
    checkpoint.pt         config, model, optimizer, history, RNG states (see runs/checkpoint.py)
    config.json           the configuration, versions, device and command line, for people
    metrics.jsonl         one JSON object per finished epoch (see train.EpochMetrics)
    timing.jsonl          seconds of each epoch's steps (apart: timings never repeat exactly)
    elbo_curve.png        training and validation ELBO against epochs
    reconstructions.png   test images beside their reconstructions
    samples.png           decoded means of z ~ p(z)

A run can stop (Ctrl-C, a kill, a crash) and continue with ``resume_run``: the checkpoint is
written after every epoch, and every ``checkpoint_every`` steps if asked, and a resumed run ends
with the same parameters and metrics as one that never stopped.

Under torchrun every process calls the same function with its ``Replicas``; they train together
and rank 0 alone writes the run directory.
"""

import contextlib
import json
import logging
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pyro
import torch
from torch.optim.lr_scheduler import CosineAnnealingLR

from pyro_vae.core.config import RESUMABLE, RunConfig
from pyro_vae.core.errors import UserInputError
from pyro_vae.core.train_config import DEFAULT_ALPHA, default_alpha
from pyro_vae.data.datasets import Dataset, load_dataset, load_run_data
from pyro_vae.data.labels import check_labels
from pyro_vae.inference.distributed import SINGLE_PROCESS, Replicas
from pyro_vae.inference.m2_trainer import SemiSupervisedTrainer, paper_alpha
from pyro_vae.inference.schedules import extend_cosine
from pyro_vae.inference.trainer import (
    EpochMetrics,
    StepCallback,
    Trainer,
    TrainingDiverged,
    supports_free_bits,
)
from pyro_vae.models.build import MODELS, build_model, check_run, with_widths
from pyro_vae.models.vae import VAE
from pyro_vae.runs.budget import check_budget
from pyro_vae.runs.checkpoint import (
    check_run_dir,
    environment,
    load_checkpoint,
    restore_rng_state,
)
from pyro_vae.runs.features import load_features, load_m1_weights
from pyro_vae.runs.rundir import (
    BEST,
    CHECKPOINT,
    CONFIG,
    check_unlocked,
    clear_run_files,
    run_lock,
    writing,
)
from pyro_vae.runs.tensorboard import summary_writer_class
from pyro_vae.runs.writer import RunWriter, write_atomically

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunResult:
    config: RunConfig  # as trained (a resumed run's, with its changes)
    run_dir: Path
    device: torch.device
    history: list[EpochMetrics]
    epoch_seconds: list[float]
    files: list[Path]  # what this process wrote (nothing, on a replica other than rank 0)
    finished: bool  # False when should_stop ended the run early (it can be resumed)
    steps_done: int  # steps of the unfinished epoch saved in the checkpoint (0 if none)
    stopped_early: bool = False  # --patience ended it: no better validation ELBO for so long
    best_epoch: int | None = None  # the epoch best.pt holds, with --patience
    active_units: int | None = None  # latent dimensions in use at the end (evaluate.active_units)
    free_bits_possible: bool = True  # whether this model's KL is per dimension (--free-bits)


@dataclass(frozen=True)
class RunHooks:
    """What a caller may see and steer while a run trains; all optional."""

    on_step: StepCallback | None = None  # after every step, for a progress display
    on_epoch: Callable[[EpochMetrics], None] | None = None  # after every epoch
    should_stop: Callable[[], bool] | None = None  # checked at every step: save and stop
    checkpoint_every: int | None = None  # also save every this many steps
    command: Sequence[str] | None = None  # the command line, recorded in config.json
    tensorboard: bool = False  # also write TensorBoard events into the run directory


def train_run(
    config: RunConfig,
    run_dir: Path,
    overwrite: bool = False,
    hooks: RunHooks = RunHooks(),
    replicas: Replicas = SINGLE_PROCESS,
) -> RunResult:
    """Train a VAE as ``config`` says into a new run directory.

    Every check that can fail (options, device, output folder, data against the likelihood, the
    memory a step needs) runs before the first step, so a mistake costs seconds, not a training
    run. The data's locations are recorded as absolute paths. ``overwrite`` replaces a previous
    run's files in ``run_dir`` (and only those); a folder holding only the files of a run that
    never saved a checkpoint is reused without it.
    """
    run_dir = Path(run_dir)
    check_run(config)
    if hooks.tensorboard:
        summary_writer_class()  # the extra is there, before any work
    train = config.train
    if train.kl_warmup > train.epochs:  # checked for a new run only: a stored run always loads
        raise UserInputError(
            f"`kl_warmup` {train.kl_warmup} is longer than the run's {train.epochs} epochs, so β "
            f"would never reach {train.beta:g}: lower `kl_warmup` or raise `epochs`"
        )
    config = replace(config, data=config.data.located(), model=with_widths(config.model))
    if replicas.is_main:
        check_run_dir(run_dir, overwrite)
    device = replicas.device(config.train.device)
    replicas.connect(device)
    pyro.set_rng_seed(config.train.seed)
    data = _load_data(config, device, replicas)
    if MODELS[config.model.kind].labelled:  # as many classes as the data have
        check_labels(data, config.model.kind)
        config = replace(config, model=replace(config.model, num_classes=data.num_classes))
    config, m1 = load_features(config, data)
    if MODELS[config.model.kind].semi_supervised and config.train.alpha is None:
        # written out, so that the run resumes with its weight whatever later defaults say
        alpha = default_alpha(
            config.train.labels,  # check_run refused M2 without them
            config.model.num_classes,
            on_codes=config.train.features is not None,
        )
        config = replace(config, train=replace(config.train, alpha=alpha))
    check_budget(config, data.image_shape, device)
    vae = build_model(config.model, data.image_shape)
    load_m1_weights(vae, m1)
    vae = vae.to(device)
    _check_data(vae, data)
    trainer = make_trainer(vae, config, data, replicas)
    run_id = uuid.uuid4().hex
    with _writer(run_dir, replicas, create=True):
        if replicas.is_main:
            removed = clear_run_files(run_dir)
            if removed:
                names = ", ".join(path.name for path in removed)
                log.warning("removed the previous run's files from %s: %s", run_dir, names)
            _write_record(run_dir, run_id, config, device, data, hooks.command, replicas)
        return _train(config, run_dir, run_id, data, trainer, hooks)


def resume_run(
    run_dir: Path,
    changes: Mapping[str, Any] | None = None,
    hooks: RunHooks = RunHooks(),
    replicas: Replicas = SINGLE_PROCESS,
    data_path: str | None = None,
    data_dir: str | None = None,
) -> RunResult:
    """Continue the run in ``run_dir`` from its checkpoint, exactly where it stopped.

    ``changes`` may set ``epochs`` (to train longer), ``lr`` (after a divergence, say),
    ``patience`` (to go on after an early stop), ``device``, ``compile`` and
    ``matmul_precision`` (core/config.py's ``RESUMABLE``); anything that would change the
    model, the data or the randomness is refused. ``data_path`` / ``data_dir`` say where the
    run's data are now, if they have moved (the same images). The number of processes may
    change too: a distributed run's randomness is tied to the seed, the epoch and the step (see
    inference/distributed.py), so the same number continues it exactly.
    """
    run_dir = Path(run_dir)
    if run_dir.is_file():  # its checkpoint.pt, as the picture commands accept
        run_dir = run_dir.parent
    checkpoint = load_checkpoint(run_dir)
    if hooks.tensorboard:
        summary_writer_class()
    changes = dict(changes or {})
    refused = sorted(set(changes) - set(RESUMABLE))
    if refused:
        raise UserInputError(
            f"a resumed run keeps its configuration, so {', '.join(refused)} cannot change "
            f"(only {', '.join(RESUMABLE)} can): drop those options, or start a new run"
        )
    run_id = _check_identity(run_dir, checkpoint.run_id)
    config = replace(checkpoint.config, train=replace(checkpoint.config.train, **changes))
    if replicas.is_main:
        check_unlocked(run_dir)
    device = replicas.device(config.train.device)
    replicas.connect(device)
    with replicas.main_first() if config.data.download else contextlib.nullcontext():
        data = load_run_data(
            config.data, checkpoint.image_shape, data_path, data_dir, checkpoint.num_images
        )
    data = data.to(device)
    config = replace(config, data=config.data.located(data_path, data_dir))
    unset = MODELS[config.model.kind].semi_supervised and config.train.alpha is None
    if unset and config.train.labels:
        # unset before format 5 meant the paper's α' = 0.1·N, per labelled image this; after it,
        # until runs wrote their α out, the one default of the time
        legacy = checkpoint.format_version < 5
        alpha = paper_alpha(len(data.train), config.train.labels) if legacy else DEFAULT_ALPHA
        config = replace(config, train=replace(config.train, alpha=alpha))
    vae = checkpoint.build_vae(device)
    _check_data(vae, data)
    trainer = make_trainer(vae, config, data, replicas)
    trainer.load_state_dict(checkpoint.trainer_state)
    extended = config.train.epochs != checkpoint.config.train.epochs
    if extended and isinstance(trainer.scheduler, CosineAnnealingLR):  # to lr_min at the end
        history = trainer.history
        rate = extend_cosine(
            trainer.scheduler,
            trainer.epoch,
            config.train.epochs,
            history[-1].lr if history else None,
        )
        if trainer.epoch < config.train.epochs:
            log.info(
                "the cosine schedule goes on from the rate the run has reached (%.3g in epoch "
                "%d) down to --lr-min %g after epoch %d: it is re-planned over the epochs left, "
                "not restarted",
                rate, trainer.epoch + 1, config.train.lr_min, config.train.epochs,
            )  # fmt: skip
    if config.train.lr != checkpoint.config.train.lr:  # a new rate; a schedule goes on from it
        trainer.set_lr(config.train.lr)
    if trainer.epoch >= config.train.epochs and trainer.steps_done == 0:
        raise UserInputError(
            f"{run_dir} has finished its {trainer.epoch} epochs: pass a larger `epochs` to train on"
        )
    stopping, patience = trainer.early_stopping, config.train.patience
    if trainer.steps_done == 0 and stopping.exhausted(trainer.epoch, patience):
        raise UserInputError(
            f"{run_dir} stopped early after epoch {trainer.epoch}: no better validation ELBO "
            f"since epoch {stopping.best_epoch} (`patience` {patience}); pass a larger "
            "`patience` to train on"
        )
    if trainer.epoch >= config.train.epochs:  # stopped inside an epoch past the new target
        raise UserInputError(
            f"{run_dir} has trained {trainer.epoch} epochs and part of the next: `epochs` "
            f"{config.train.epochs} is fewer; pass at least `epochs` {trainer.epoch + 1}"
        )
    if checkpoint.rng_state is not None:
        restore_rng_state(checkpoint.rng_state)
    with _writer(run_dir, replicas, create=False):
        if replicas.is_main:
            _write_record(
                run_dir, run_id, config, device, data, hooks.command, replicas, trainer.epoch
            )
        return _train(config, run_dir, run_id, data, trainer, hooks)


@contextlib.contextmanager
def _writer(run_dir: Path, replicas: Replicas, create: bool) -> Iterator[None]:
    """Rank 0 as the run directory's one writer, for the block (the other replicas write none)."""
    if not replicas.is_main:
        yield
        return
    if create:
        with writing(run_dir, "--out"):
            run_dir.mkdir(parents=True, exist_ok=True)
    with run_lock(run_dir):
        yield


def _check_identity(run_dir: Path, run_id: str | None) -> str:
    """The run's id, after checking that the checkpoint and config.json are of the same run."""
    try:
        recorded = json.loads((run_dir / CONFIG).read_text()).get("run_id")
    except (OSError, ValueError, AttributeError):  # no record, or not ours: the checkpoint rules
        recorded = None
    if run_id is not None and recorded is not None and run_id != recorded:
        raise UserInputError(
            f"{run_dir / CHECKPOINT} belongs to another run (id {run_id[:8]}) than "
            f"{run_dir / CONFIG} (id {recorded[:8]}): a checkpoint copied in from elsewhere? "
            "Put this run's own checkpoint back, or resume the copy in a folder of its own"
        )
    return run_id or recorded or uuid.uuid4().hex  # a checkpoint from before run ids


def _load_data(config: RunConfig, device: torch.device, replicas: Replicas) -> Dataset:
    # Every replica holds the whole dataset; a download happens once, on rank 0, the others wait.
    with replicas.main_first() if config.data.download else contextlib.nullcontext():
        return load_dataset(config.data).to(device)


def make_trainer(
    vae: VAE, config: RunConfig, data: Dataset, replicas: Replicas = SINGLE_PROCESS
) -> Trainer:
    """The trainer of ``vae``: M2's (semi-supervised, on the labels it keeps) or the ELBO's."""
    if vae.semi_supervised:
        return SemiSupervisedTrainer(vae, config.train, data, replicas)
    return Trainer(vae, config.train, replicas)


def _check_data(vae: VAE, data: Dataset) -> None:
    for split in data.modelled_splits():
        for chunk in split.chunks():
            vae.likelihood.check_data(chunk)
    note = _scale_note(vae, data)
    if note:
        log.warning(note)


def _scale_note(vae: VAE, data: Dataset) -> str | None:
    if data.train.stored.dtype == torch.uint8:  # pixel values, in [0, 1] once converted
        return None
    return vae.likelihood.scale_note(data.train.x)


def _write_record(
    run_dir: Path,
    run_id: str,
    config: RunConfig,
    device: torch.device,
    data: Dataset,
    command: Sequence[str] | None,
    replicas: Replicas,
    resumed_at: int | None = None,
) -> None:
    record: dict[str, Any] = {
        "run_id": run_id,  # shared with the checkpoint: a run directory's identity
        "config": config.to_dict(),
        "environment": environment(),
        "device": str(device),
        "processes": replicas.world_size,
        "data": {
            "name": data.name,
            "image_shape": data.image_shape,
            "num_train": len(data.train),
            "num_val": len(data.val),
            "num_test": len(data.test),
            "note": data.note,
        },
        "command": list(command) if command is not None else None,
    }
    if resumed_at is not None:
        record["resumed_after_epoch"] = resumed_at
    write_atomically(run_dir / CONFIG, json.dumps(record, indent=2) + "\n")


def _train(
    config: RunConfig,
    run_dir: Path,
    run_id: str,
    data: Dataset,
    trainer: Trainer,
    hooks: RunHooks,
) -> RunResult:
    """Train on to the configured epochs or an early stop, writing the run directory as it goes;
    a stop on request returns an unfinished run, which ``resume_run`` continues."""
    try:
        with RunWriter(
            run_dir, run_id, config, data, trainer, hooks.checkpoint_every, hooks.tensorboard
        ) as writer:
            finished = _train_epochs(config, data, trainer, hooks, writer)
    except TrainingDiverged as error:
        note = _scale_note(trainer.vae, data)
        raise _with_advice(error, run_dir, config, note) from None
    if not finished:  # stopped on request, checkpoint saved
        return _result(config, run_dir, trainer, False, [run_dir / CHECKPOINT])
    files, active = writer.finish()
    return _result(config, run_dir, trainer, True, files, active)


def _train_epochs(
    config: RunConfig, data: Dataset, trainer: Trainer, hooks: RunHooks, writer: RunWriter
) -> bool:
    """The epochs left: True once done (or stopped early), False where a stop was asked."""
    stopping, patience = trainer.early_stopping, config.train.patience
    device = next(trainer.vae.parameters()).device
    while trainer.epoch < config.train.epochs and not stopping.exhausted(trainer.epoch, patience):
        metrics = trainer.train_epoch(data, hooks.on_step, hooks.should_stop, writer.after_step)
        if metrics is None:  # stopped inside the epoch, after saving it
            return False
        writer.end_of_epoch(metrics)
        if hooks.on_epoch is not None:
            hooks.on_epoch(metrics)
        if hooks.should_stop is not None and trainer.replicas.any(hooks.should_stop(), device):
            return False
    return True


def _result(
    config: RunConfig,
    run_dir: Path,
    trainer: Trainer,
    finished: bool,
    files: list[Path],
    active: int | None = None,
) -> RunResult:
    stopping, patience = trainer.early_stopping, config.train.patience
    return RunResult(
        config,
        run_dir,
        next(trainer.vae.parameters()).device,
        trainer.history,
        trainer.epoch_seconds,
        files if trainer.replicas.is_main else [],
        finished,
        trainer.steps_done,
        stopped_early=stopping.exhausted(trainer.epoch, patience)
        and trainer.epoch < config.train.epochs,
        # best.pt holds it, unless --patience came with a resume after the best epoch
        best_epoch=stopping.best_epoch if (run_dir / BEST).is_file() else None,
        active_units=active,
        free_bits_possible=supports_free_bits(trainer.vae),
    )


def _with_advice(
    error: TrainingDiverged, run_dir: Path, config: RunConfig, scale_note: str | None
) -> TrainingDiverged:
    """The divergence, with what is on disk and the command that goes on from there."""
    if scale_note is not None:  # a lower rate would diverge again: the data are the cause
        return TrainingDiverged(
            f"{error}; here the data's scale is the likely cause, not the learning rate: "
            f"{scale_note}"
        )
    # A tenth of the rate; from an absurd one (above 1), Adam's usual 1e-3 at once.
    lr = float(f"{config.train.lr / 10:.3g}") if config.train.lr <= 1 else 1e-3
    path = run_dir / CHECKPOINT
    if path.is_file():
        saved = load_checkpoint(path).trainer_state
        position = f"epoch {len(saved['history'])}"
        if saved["epoch_in_progress"] is not None:
            position += f" and {saved['epoch_in_progress']['steps_done']} steps"
        return TrainingDiverged(
            f"{error}; {path} holds the last good state (after {position}): continue from it "
            f"with a lower rate: pyro-vae train --resume {run_dir} --lr {lr:g} "
            f"--epochs {config.train.epochs}",
            run_dir=run_dir,
            lower_lr=lr,
            resumable=True,
        )
    return TrainingDiverged(
        f"{error}; no checkpoint had been saved, so there is nothing to resume: train again "
        f"with a lower rate (--lr {lr:g}), into the same --out {run_dir} if you like",
        run_dir=run_dir,
        lower_lr=lr,
        resumable=False,
    )
