"""The ``train`` command's side of the terminal: the options a resumed run may take, the command
line to print as advice, Ctrl-C and SIGTERM, progress bars and the summary of a run.

Split from train.py, which declares the options and calls the library; this module is the CLI's
too, and prints: the library (pyro_vae) never does. Its progress display (``WorkProgress``) also
serves ``evaluate`` (runs.py).
"""

import contextlib
import inspect
import math
import shlex
import signal
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, replace
from enum import Enum
from pathlib import Path
from typing import Any, ClassVar

import torch
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from pyro_vae import (
    GUIDES,
    LIKELIHOODS,
    PRIORS,
    EpochMetrics,
    RunConfig,
    RunResult,
    UserInputError,
    load_checkpoint,
)
from pyro_vae.cli.common import note
from pyro_vae.core.config import DataConfig, ModelConfig, TrainConfig
from pyro_vae.inference.distributed import Replicas, disconnect
from pyro_vae.runs.runner import RunHooks

stderr = Console(stderr=True)


# Options a resumed run may set: what it may change, and where its data are now.
RESUMABLE_OPTIONS = {
    *("resume", "epochs", "lr", "device", "checkpoint_every", "data", "data_dir", "tensorboard"),
    "patience",
}


def explicit_options(ctx: typer.Context) -> set[str]:
    """The options given on the command line (or in the environment), not left at defaults."""
    return {
        name
        for name in ctx.params
        if getattr(ctx.get_parameter_source(name), "name", "") in ("COMMANDLINE", "ENVIRONMENT")
    }


# The options of `train` that set the TrainConfig field of their name.
TRAIN_KEYS = (
    *("elbo", "num_particles", "lr", "batch_size", "epochs", "seed", "device", "beta"),
    *("kl_warmup", "free_bits", "lr_schedule", "lr_step", "lr_factor", "lr_min", "patience"),
    *("labels", "alpha"),
)


# Which configuration keys each option of `train` sets: what --config FILE gives way to.
OPTION_FIELDS: dict[str, list[tuple[str, str]]] = {
    "dataset": [("data", "dataset"), ("data", "path")],
    "data": [("data", "dataset"), ("data", "path")],
    "data_dir": [("data", "data_dir")],
    "download": [("data", "download")],
    "binarize": [("data", "binarize")],
    "split": [("data", "split")],
    "image_size": [("data", "image_size")],
    "crop": [("data", "crop")],
    "channels": [("data", "channels")],
    "layout": [("data", "layout")],
    "latent_dim": [("model", "latent_dim")],
    "model": [("model", "kind")],
    "network": [("model", "network"), ("model", "hidden_dims")],
    "hidden_dims": [("model", "hidden_dims")],
    "guide": [("model", "guide"), ("model", "guide_options")],
    "flows": [("model", "guide_options")],
    "prior": [("model", "prior"), ("model", "prior_options")],
    "components": [("model", "prior_options")],
    "likelihood": [("model", "likelihood"), ("model", "likelihood_options")],
    "sigma": [("model", "likelihood_options")],
    **{name: [("train", name)] for name in TRAIN_KEYS},
}


# The options of `train` that set one keyword of a component's options, and that component.
COMPONENT_OF = {"flows": "guide", "components": "prior", "sigma": "likelihood"}


def with_config_file(
    options: RunConfig, path: Path, values: dict[str, dict[str, Any]], given: set[str]
) -> RunConfig:
    """The configuration ``values`` read from ``path`` (``read_config_file``), with the options
    given on the command line (``given``) in place of its values."""
    merged = {name: dict(values.get(name, {})) for name in ("model", "data", "train")}
    mine = options.to_dict()
    for option in given:
        for section, key in OPTION_FIELDS.get(option, []):
            component = COMPONENT_OF.get(option, option)
            if key.endswith("_options") and component in COMPONENT_OF.values():
                stored = values.get("model", {}).get(component, asdict(ModelConfig())[component])
                file_options = merged[section].get(key, {})
                if mine["model"][component] == stored and isinstance(file_options, dict):
                    # The file's component named again (--guide iaf), or one of its options set
                    # (--flows 4): the file's other options for it stay.
                    merged[section][key] = {**file_options, **mine[section][key]}
                    continue
            merged[section][key] = mine[section][key]
    stored_kind = values.get("model", {}).get("kind", ModelConfig.kind)
    if "model" in given and mine["model"]["kind"] not in (stored_kind, "m2"):
        for key in ("labels", "alpha"):  # M2's, which config_file_options dropped with a note
            merged["train"][key] = mine["train"][key]
    try:
        return RunConfig.from_dict(merged)
    except TypeError as error:  # a value of the wrong type, such as "epochs": "ten"
        raise UserInputError(f"--config {path}: a value has the wrong type ({error})") from None


def refuse_changes_on_resume(ctx: typer.Context, out: Path | None, resume: Path) -> None:
    """Refuse options that would change a resumed run; accept those given at its stored value."""
    if out is not None:
        raise UserInputError("--resume RUN names the run directory: drop --out")
    given = explicit_options(ctx) - RESUMABLE_OPTIONS
    if not given:
        return
    if "overwrite" in given:
        raise UserInputError("--overwrite starts a new run; --resume continues one: drop one")
    stored = _stored_options(load_checkpoint(resume).config)
    changed = sorted(name for name in given if _option_value(ctx.params[name]) != stored.get(name))
    if changed:
        flags = ", ".join(
            f"--{name.replace('_', '-')} (the run has "
            f"{'none' if stored.get(name) is None else stored.get(name)})"
            for name in changed
        )
        raise UserInputError(
            f"a resumed run keeps its configuration, so {flags} cannot change (only --epochs, "
            "--lr, --patience, --device, --checkpoint-every, --tensorboard and the data's "
            "location can): drop them, or start a new run"
        )


def _option_value(value: Any) -> Any:
    return value.value if isinstance(value, Enum) else value


def _stored_options(config: RunConfig) -> dict[str, Any]:
    """The run's configuration as the values of ``train``'s options."""
    model, data, train = (asdict(section) for section in (config.model, config.data, config.train))
    values = _option_values(model, data, train)
    values["sigma"] = model["likelihood_options"].get(
        "sigma", _default(LIKELIHOODS, model["likelihood"], "sigma")
    )
    values["components"] = model["prior_options"].get(
        "num_components", _default(PRIORS, model["prior"], "num_components")
    )
    values["flows"] = model["guide_options"].get("flows", _default(GUIDES, model["guide"], "flows"))
    return values


def _option_values(model: dict, data: dict, train: dict) -> dict[str, Any]:
    """A configuration's sections as the values of ``train``'s options, by parameter name."""
    return {
        "dataset": data["dataset"],
        "data": Path(data["path"])
        if data["dataset"] in ("array", "folder") and data["path"]
        else None,
        "data_dir": Path(data["data_dir"]),
        "download": data["download"],
        "binarize": data["binarize"],
        "split": data.get("split", DataConfig.split),
        "image_size": _joined(data["image_size"], "x"),
        "crop": data["crop"],
        "channels": data["channels"],
        "layout": data["layout"],
        "latent_dim": model["latent_dim"],
        "model": model["kind"],
        "network": model["network"],
        "hidden_dims": _joined(model["hidden_dims"], ","),
        "guide": model["guide"],
        "flows": model["guide_options"].get("flows"),
        "prior": model["prior"],
        "likelihood": model["likelihood"],
        "sigma": model["likelihood_options"].get("sigma"),
        "components": model["prior_options"].get("num_components"),
        **{name: train[name] for name in TRAIN_KEYS},
    }


def _joined(sizes: Any, separator: str) -> str | None:
    """A list of sizes as the option spells it (``64x64``, ``256,128``); None stays None."""
    return None if sizes is None else separator.join(map(str, sizes))


def config_file_options(
    path: Path, sections: dict[str, dict[str, Any]], given: set[str], chosen: dict[str, Any]
) -> dict[str, Any]:
    """``train``'s option values from the --config file's ``sections``, for the options not
    ``given``: what the run's configuration is built from, so that it is checked as a whole."""
    defaults = {"model": ModelConfig(), "data": DataConfig(), "train": TrainConfig()}
    model, data, train = (
        {**asdict(defaults[name]), **sections.get(name, {})} for name in ("model", "data", "train")
    )
    for key, kind, what in (
        ("hidden_dims", (list, tuple, type(None)), "a list of layer sizes"),
        ("guide_options", dict, "a table of keywords"),
        ("prior_options", dict, "a table of keywords"),
        ("likelihood_options", dict, "a table of keywords"),
    ):
        if not isinstance(model[key], kind):
            raise UserInputError(
                f"--config {path}: [model] {key} must be {what}, got {model[key]!r}"
            )
    sizes = model["hidden_dims"]
    if sizes is not None and (
        not sizes or not all(isinstance(n, int) and not isinstance(n, bool) for n in sizes)
    ):
        raise UserInputError(
            f"--config {path}: [model] hidden_dims must list whole layer sizes, got {sizes!r}"
        )
    image_size = data["image_size"]
    if image_size is not None and not (
        isinstance(image_size, list | tuple)
        and len(image_size) == 2
        and all(isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in image_size)
    ):
        raise UserInputError(
            f"--config {path}: [data] image_size must be [height, width], got {image_size!r}"
        )
    for key, kind, what in (("path", str | None, "a file name"), ("data_dir", str, "a folder")):
        if not isinstance(data[key], kind):
            raise UserInputError(f"--config {path}: [data] {key} must be {what}, got {data[key]!r}")
    values = _option_values(model, data, train)
    # An option given on the command line decides the ones that go with it, where it changes
    # the file's choice (another likelihood has other options, another model no labels to
    # keep): the file's values for the old choice are dropped, and one note says which.
    dropped = []
    for option, dependent, key in (
        ("likelihood", "sigma", "likelihood_options"),
        ("prior", "components", "prior_options"),
        ("guide", "flows", "guide_options"),
        ("network", "hidden_dims", "hidden_dims"),  # a conv's channels are no MLP's units
    ):
        changed = option in given and _option_value(chosen[option]) != values[option]
        if changed and model[key] and dependent not in given:
            dropped.append(
                f"[model] {key} {_shown(model[key])} (for --{option} {values[option]}, not "
                f"{_option_value(chosen[option])})"
            )
        if changed or values[dependent] is None:
            values.pop(dependent)
    new_model = _option_value(chosen["model"])
    if "model" in given and new_model != values["model"] and new_model != "m2":
        # --labels and --alpha choose M2's labelled images: no other model reads them
        semi = [name for name in ("labels", "alpha") if values[name] is not None]
        for name in semi:
            values.pop(name)
        if semi and not given & {"labels", "alpha"}:
            file_values = " and ".join(f"{name} {train[name]}" for name in semi)
            dropped.append(f"[train] {file_values} (for --model m2, not {new_model})")
    if dropped:
        note(f"--config {path}: dropped the file's {'; '.join(dropped)}: they do not apply here")
    if given & {"data", "dataset"}:
        values.pop("data"), values.pop("dataset")
    # The component options that options also set, checked as the options' parsers check them.
    for name, section, key, positive_real in (
        ("components", "prior_options", "num_components", False),
        ("flows", "guide_options", "flows", False),
        ("sigma", "likelihood_options", "sigma", True),
    ):
        if name in given or name not in values:  # the command line's value replaces the file's
            continue
        value = values[name]
        number = isinstance(value, int | float) and not isinstance(value, bool)
        fits = number and value > 0 and (positive_real or isinstance(value, int))
        if value is not None and not (fits and math.isfinite(value)):
            what = "a positive number" if positive_real else "a whole number of at least 1"
            raise UserInputError(
                f"--config {path}: [model] {section} {key} must be {what}, got {value!r}"
            )
    return {name: value for name, value in values.items() if name not in given}


def _shown(value: Any) -> str:
    """A config file's value as the file would write it (a table, or a list of sizes)."""
    if isinstance(value, dict):
        return "{" + ", ".join(f"{key} = {item!r}" for key, item in value.items()) + "}"
    return repr(list(value)) if isinstance(value, list | tuple) else repr(value)


def _default(registry: Any, name: str, option: str) -> Any:
    parameter = (
        inspect.signature(registry[name]).parameters.get(option) if name in registry else None
    )
    return None if parameter is None else parameter.default


def command_line(ctx: typer.Context, values: dict[str, Any]) -> str:
    """The command that ran, as a user would type it, with ``values`` put in or replaced."""
    chosen = {name: ctx.params[name] for name in explicit_options(ctx)} | values
    words = ["pyro-vae", ctx.info_name or "train"]
    for name, value in chosen.items():
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            words += [flag] if value else []
        elif value is not None:
            words += [flag, shlex.quote(str(_option_value(value)))]
    return " ".join(words)


@contextlib.contextmanager
def training(
    replicas: Replicas, checkpoint_every: int | None, tensorboard: bool = False
) -> Iterator[tuple[RunHooks, "StopRequests"]]:
    """The hooks of a training run: Ctrl-C and SIGTERM handling, a progress bar on rank 0 only."""
    try:
        with _TrainingProgress() as progress, StopRequests(replicas) as stops:
            hooks = RunHooks(
                should_stop=stops,
                checkpoint_every=checkpoint_every,
                command=sys.argv,
                tensorboard=tensorboard,
            )
            if replicas.is_main:
                hooks = replace(hooks, on_step=progress.on_step, on_epoch=progress.on_epoch)
            yield hooks, stops
    except BaseException:
        disconnect(together=False)
        raise
    disconnect()


class StopRequests:
    """Ctrl-C (SIGINT) and SIGTERM (what ``kill`` and cluster schedulers send) as requests to save
    and stop after the current step; called, says whether one came.

    Stopping between steps, never inside one, keeps the parameters and the optimizer in step;
    a second signal stops at once, without saving. Not under torchrun, though: there the terminal
    and then torchrun itself send each process a SIGINT, and the processes must stop together.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)
    NAMES: ClassVar[dict[int, str]] = {signal.SIGINT: "Ctrl-C", signal.SIGTERM: "SIGTERM"}

    def __init__(self, replicas: Replicas):
        self.replicas = replicas
        self.signal: int | None = None  # the first that came
        self._previous: dict[int, Any] = {}

    def __call__(self) -> bool:
        return self.signal is not None

    def _handle(self, signum: int, frame: object) -> None:
        # Plain writes: a signal may land while rich is still importing a module of its own.
        if self.signal is not None and not self.replicas.distributed:
            print(
                "Aborted at once: this step is not saved (the last checkpoint, if there is one, "
                "is intact).",
                file=sys.stderr,
                flush=True,
            )
            raise SystemExit(128 + signum)  # 130 after Ctrl-C, 143 after SIGTERM
        if self.signal is None and self.replicas.is_main:
            again = "" if self.replicas.distributed else f" ({self.NAMES[signum]} again to abort)"
            print(f"{self.NAMES[signum]}: stopping after this step{again}...", file=sys.stderr)
        self.signal = self.signal or signum

    def __enter__(self) -> "StopRequests":
        for signum in self.SIGNALS:
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)


def summarise(
    result: RunResult, replicas: Replicas, stops: StopRequests, tensorboard: bool = False
) -> None:
    # The shell's code for a process ended by the signal: 128 + its number (130, 143).
    stopped_code = 128 + (stops.signal or signal.SIGINT)
    if not replicas.is_main:  # rank 0 reports for all the processes
        raise typer.Exit(0 if result.finished else stopped_code)
    if not result.finished:
        position = f"epoch {result.history[-1].epoch if result.history else 0}"
        if result.steps_done:
            position += f" and {result.steps_done} steps"
        typer.echo(
            f"Stopped after {position}; the checkpoint is saved. Continue with: "
            f"pyro-vae train --resume {result.run_dir}" + (" --tensorboard" if tensorboard else "")
        )
        raise typer.Exit(stopped_code)
    final = result.history[-1]
    error = f" ± {final.val_elbo_se:.2f}" if final.val_elbo_se is not None else ""
    typer.echo(
        f"Trained {final.epoch} epochs on {result.device} in {sum(result.epoch_seconds):.1f} s "
        f"of SVI steps ({final.train_kl} KL). Validation ELBO: {final.val_elbo:.2f}{error} nats "
        f"per image ({final.val_kl} KL, {result.config.train.val_particles} samples of z each; "
        "± one standard error of sampling them)."
    )
    if final.val_error is not None:
        labels = result.config.train.labels
        typer.echo(
            f"Validation error of q(y|x): {final.val_error:.2%} (trained with {labels} labels)."
        )
    config = result.config
    if result.stopped_early:
        typer.echo(
            f"Stopped early: no better validation ELBO in the {config.train.patience} "
            f"epoch{'s' if config.train.patience != 1 else ''} after epoch {result.best_epoch}."
        )
    if result.best_epoch is not None and result.best_epoch != final.epoch:
        best = result.history[result.best_epoch - 1]
        typer.echo(
            f"best.pt keeps epoch {best.epoch} (validation ELBO {best.val_elbo:.2f}), which "
            "evaluate and the pictures use (--latest for the last epoch's)."
        )
    if result.active_units is not None and collapsed(result.active_units, config.model.latent_dim):
        typer.echo(collapse_note(result.active_units, config, result.free_bits_possible))
    if config.train.elbo == "analytic" and final.train_kl != "closed-form":
        typer.echo(
            f"Note: the {config.model.guide} guide has no closed-form KL to the "
            f"{config.model.prior} prior, so --elbo analytic (TraceMeanField_ELBO) estimated that "
            "term by Monte Carlo."
        )
    typer.echo(f"Run directory: {result.run_dir}")
    for path in result.files:
        typer.echo(f"  {path.name}")


def collapsed(active: int, latent_dim: int) -> bool:
    """None, or almost none, of the latent dimensions in use: at most one in ten."""
    return active <= latent_dim // 10


def collapse_note(active: int, config: RunConfig, free_bits_possible: bool) -> str:
    """What happened, in a sentence, and the remedies that apply to this run: first the
    model's (its likelihood's σ), then the objective's, each one that this run's options accept."""
    model, train = config.model, config.train
    remedies = []
    if model.likelihood == "gaussian":
        sigma = model.likelihood_options.get("sigma", 1.0)
        if sigma > 0.1:
            remedies.append(f"--sigma 0.1 (this run: {sigma:g}; for pixels in [0, 1])")
        remedies.append("--likelihood gaussian-learned")
    objective = []
    warmup = max(1, min(10, train.epochs // 2))  # within the run's epochs, as the option requires
    analytic = "" if train.elbo == "analytic" else "--elbo analytic "
    if model.kind == "m2":  # its own objective: no warm-up, free bits or β to offer
        pass
    elif train.elbo == "iwae":  # no KL term to weight: the ELBO's remedies need an ELBO
        objective.append(f"--elbo analytic --kl-warmup {warmup}")
    elif not train.kl_warmup:
        objective.append(f"--kl-warmup {warmup}")
    if free_bits_possible and not train.free_bits and model.kind != "m2":
        objective.append(f"{analytic}--free-bits 0.5")
    if train.beta > 1:
        objective.append(f"a --beta below this run's {train.beta:g}")
    if objective and remedies:  # measured: with σ too large, the objective does not save it
        remedies.append(
            "or change the objective (" + ", ".join(objective) + "), which on the digits at "
            "σ = 1 did not help the ELBO (experiments/results/rate_distortion.md)"
        )
    else:
        remedies += objective
    advice = "; try " + ", ".join(remedies) if remedies else ""
    if model.kind == "vae":
        what = "every image gets much the same code and the samples look alike"
    else:  # the class reaches the decoder beside the code
        what = "the code says little beyond the class, and samples of one class look alike"
    return (
        f"Note: posterior collapse: {active} of {model.latent_dim} latent dimensions are in use "
        f"(the encoder's mean moves with the image in no more), so {what}{advice}."
    )


class WorkProgress:
    """A progress bar for long work that reports (done, total); shown only past a second."""

    def __init__(self, what: str):
        self.what = what
        self.start = time.monotonic()
        self.progress = Progress(
            TextColumn(what), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=stderr
        )
        self.task: Any = None

    def __enter__(self) -> "WorkProgress":
        return self

    def __exit__(self, *exc: object) -> None:
        if self.task is not None:
            self.progress.stop()

    def update(self, done: int, total: int) -> None:
        if self.task is None:
            if time.monotonic() - self.start < 1.0:  # quick work needs no bar
                return
            self.progress.start()
            self.task = self.progress.add_task(self.what, total=total)
        self.progress.update(self.task, completed=done)


class _TrainingProgress:
    """A progress bar over the run's steps with the live loss and the last validation ELBO."""

    REFRESH_SECONDS = 0.2  # reading the loss forces a device sync: do it a few times a second only

    def __init__(self) -> None:
        self.fields = {"epochs": "…", "loss": "…", "val": "…"}
        self.last_read = 0.0
        self.progress = Progress(
            TextColumn("epochs done {task.fields[epochs]}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("loss {task.fields[loss]}  val ELBO {task.fields[val]}"),
            console=stderr,
        )
        self.task: Any = None

    def __enter__(self) -> "_TrainingProgress":
        return self

    def __exit__(self, *exc: object) -> None:
        if self.task is not None:  # stopping a bar never shown would print an empty line
            self.progress.stop()

    def on_step(self, step: int, num_steps: int, loss: torch.Tensor) -> None:
        if self.task is None:  # only once training runs, not before the checks pass
            self.progress.start()
            self.task = self.progress.add_task("train", total=num_steps, **self.fields)
        if step == 1:
            self.progress.reset(self.task, total=num_steps)
        self.progress.advance(self.task)
        now = time.monotonic()
        if now - self.last_read > self.REFRESH_SECONDS or step == num_steps:
            self.last_read = now
            self.progress.update(self.task, loss=f"{loss.item():.2f}")

    def on_epoch(self, metrics: EpochMetrics) -> None:
        self.progress.update(self.task, epochs=str(metrics.epoch), val=f"{metrics.val_elbo:.2f}")
