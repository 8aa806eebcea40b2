"""``train``'s options, made from the configuration's declarations (core/*_config.py): each field
with a flag becomes an option of that name, help, default, range and check, in the order of the
declarations. What is no configuration (where the run goes, how it is watched) is declared here.

A value goes from the command line to the configuration (``to_field``: ``"256,128"`` to
``(256, 128)``) and back (``shown``), so that --config files, --resume and errors all speak of
the same field.
"""

import inspect
import os
import shlex
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from pyro_vae import DATASETS, GUIDES, LIKELIHOODS, NETWORKS, PRIORS, UserInputError
from pyro_vae.cli.common import choices
from pyro_vae.core.config import SETTINGS
from pyro_vae.core.options import MAY_CHANGE, Setting, problem

# The registries a declaration names as its choices (``choices="priors"``).
REGISTRIES: dict[str, Any] = {
    "datasets": DATASETS,
    "networks": NETWORKS,
    "guides": GUIDES,
    "priors": PRIORS,
    "likelihoods": LIKELIHOODS,
}


@dataclass(frozen=True)
class RunOption:
    """An option of ``train`` that is no configuration: where the run goes, how it is watched."""

    annotation: Any  # Annotated[type, typer.Option(...)]
    default: Any
    on_resume: str  # MAY_CHANGE, or why a resumed run refuses it


# Before the configuration's options in --help, and after them.
RUN_OPTIONS = {
    "out": RunOption(
        Annotated[
            Path | None,
            typer.Option(help="Run directory to create.", show_default="runs/DATASET-DATE-TIME"),
        ],
        None,
        "--resume RUN names the run directory: drop --out",
    ),
    "overwrite": RunOption(
        Annotated[
            bool, typer.Option("--overwrite", help="Reuse --out even if it already holds files.")
        ],
        False,
        "--overwrite starts a new run; --resume continues one: drop one",
    ),
    "config": RunOption(
        Annotated[
            Path | None,
            typer.Option(
                "--config",
                help="Start from this configuration: a run's config.json, or a JSON or TOML file "
                "of its sections (model, data, train); options given here override it.",
                show_default=False,
            ),
        ],
        None,
        "--resume continues a run with its own configuration: drop --config (to train anew "
        "from it, give --config RUN/config.json without --resume)",
    ),
    "resume": RunOption(
        Annotated[
            Path | None,
            typer.Option(help="Continue the run in this directory from its last checkpoint."),
        ],
        None,
        MAY_CHANGE,
    ),
}
WATCH_OPTIONS = {
    "checkpoint_every": RunOption(
        Annotated[
            int | None,
            typer.Option(
                min=1,
                help="Also save a checkpoint every this many steps.",
                show_default="every epoch",
            ),
        ],
        None,
        MAY_CHANGE,
    ),
    "tensorboard": RunOption(
        Annotated[
            bool,
            typer.Option(
                "--tensorboard",
                help="Also write TensorBoard events into the run directory (curves, pictures, "
                "hyperparameters): pip install 'pyro-vae[tensorboard]'.",
            ),
        ],
        False,
        MAY_CHANGE,
    ),
}


def parameter(setting: Setting) -> str:
    """The option's parameter name, as Typer passes it (``--latent-dim``: ``latent_dim``)."""
    assert setting.option.flag is not None
    return setting.option.flag.removeprefix("--").replace("-", "_")


# The configuration's options of `train`, by parameter name.
FLAGGED = {parameter(s): s for s in SETTINGS if s.option.flag is not None}


def to_field(setting: Setting, value: Any) -> Any:
    """An option's value as its field holds it: ``"256,128"`` as (256, 128), a Path as text."""
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, str) and setting.option.spelling is not None:
        return setting.option.spelling.parse(value)
    return os.fspath(value) if isinstance(value, Path) else value


def shown(setting: Setting, value: Any) -> str:
    """A field's value as the option writes it: (256, 128) as ``256,128``; None as ``none``."""
    if value is None:
        return "none"
    spelling = setting.option.spelling
    return spelling.spell(value) if spelling is not None else str(value)


def _parameter(setting: Setting) -> inspect.Parameter:
    declared = setting.option
    kind: Any = setting.kind
    if declared.choices:
        names = declared.choices
        kind = choices(setting.field, REGISTRIES[names] if isinstance(names, str) else names)
    elif declared.spelling is not None:
        kind = str
    elif declared.reads is not None:
        kind = declared.reads
    default = setting.default
    if default is not None and declared.reads is Path:
        default = Path(default)
    # Click's ranges show in --help and name the option in their errors; an excluded bound
    # (a positive number) is the check's alone, which infinity must fail as well.
    ranged = kind is int or (kind is float and not declared.strict)
    bounds = {"min": declared.low, "max": declared.high} if ranged else {}
    shown_default = True if declared.shown_default is None else declared.shown_default
    flags = [declared.flag]
    if kind is bool and setting.optional:  # unset, yes or no: --compile/--no-compile
        flags = [f"{declared.flag}/--no-{declared.flag.removeprefix('--')}"]
    info = typer.Option(
        *flags,
        help=declared.help,
        callback=_checked(setting),
        show_default=shown_default,
        **bounds,
    )
    annotation = kind | None if setting.optional else kind
    return inspect.Parameter(
        parameter(setting),
        inspect.Parameter.KEYWORD_ONLY,
        default=default,
        annotation=Annotated[annotation, info],
    )


def _checked(setting: Setting) -> Callable[[Any], Any]:
    """The option's parser: the field's own check, run on the command line's value so that the
    error names the option as click names it (``Invalid value for '--lr'``)."""

    def check(value: Any) -> Any:
        if value is None:
            return value
        try:
            field_value = to_field(setting, value)
            wrong = problem(setting.option, setting.kind, setting.optional, field_value)
            if wrong is not None:
                raise typer.BadParameter(wrong)
            if setting.option.usable is not None:
                setting.option.usable(field_value)
        except (UserInputError, RuntimeError) as error:  # torch: RuntimeError for "gpu" etc.
            raise typer.BadParameter(str(error)) from None
        return value

    return check


def _run_parameter(name: str, declared: RunOption) -> inspect.Parameter:
    return inspect.Parameter(
        name,
        inspect.Parameter.KEYWORD_ONLY,
        default=declared.default,
        annotation=declared.annotation,
    )


Command = TypeVar("Command", bound=Callable[..., Any])


def train_options(command: Command) -> Command:
    """``command(ctx, **options)`` given every option of ``train`` as its signature, which
    Typer reads: the run's options, the configuration's in the order of their declaration, then
    those that watch the run."""
    parameters = [
        inspect.Parameter("ctx", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=typer.Context),
        *(_run_parameter(name, declared) for name, declared in RUN_OPTIONS.items()),
        *(_parameter(setting) for setting in FLAGGED.values()),
        *(_run_parameter(name, declared) for name, declared in WATCH_OPTIONS.items()),
    ]
    command.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
    return command


def explicit_options(ctx: typer.Context) -> set[str]:
    """The options given on the command line (or in the environment), not left at defaults."""
    return {
        name
        for name in ctx.params
        if getattr(ctx.get_parameter_source(name), "name", "") in ("COMMANDLINE", "ENVIRONMENT")
    }


def command_line(ctx: typer.Context, values: dict[str, Any]) -> str:
    """The command that ran, as a user would type it, with ``values`` put in or replaced."""
    chosen = {name: ctx.params[name] for name in explicit_options(ctx)} | values
    words = ["pyro-vae", ctx.info_name or "train"]
    for name, value in chosen.items():
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            setting = FLAGGED.get(name)
            if value:
                words += [flag]
            elif setting is not None and setting.optional:  # a choice of its own: --no-compile
                words += ["--no-" + flag.removeprefix("--")]
        elif value is not None:
            words += [flag, shlex.quote(str(value.value if isinstance(value, Enum) else value))]
    return " ".join(words)
