"""How ``train``'s options become a run's configuration, on top of a ``--config`` file where one
is given, and what a resumed run accepts of them: all by the declarations (core/*_config.py), so an
option needs nothing here of its own.
"""

import inspect
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from pyro_vae import RunConfig, UserInputError, load_checkpoint
from pyro_vae.cli.common import note
from pyro_vae.cli.options import (
    FLAGGED,
    REGISTRIES,
    RUN_OPTIONS,
    WATCH_OPTIONS,
    parameter,
    shown,
    to_field,
)
from pyro_vae.core.config import SECTIONS, SETTINGS
from pyro_vae.core.config_file import read_config_file
from pyro_vae.core.options import LOCATION, MAY_CHANGE, REFUSED, Setting
from pyro_vae.core.registry import accepts, registered
from pyro_vae.inference.distributed import Replicas

SETTING = {s.name: s for s in SETTINGS}  # by the name messages mark it with


class FileNames:
    """The fields whose values a --config file gave: an error raised within names them as the
    file's keys (``[train] epochs``), not as options the user never typed."""

    def __init__(self, path: Path | None, names: dict[str, str]):
        self.path, self.names = path, names

    def __enter__(self) -> "FileNames":
        return self

    def __exit__(self, kind: type | None, error: BaseException | None, tb: TracebackType | None):
        if isinstance(error, UserInputError) and error.names() & set(self.names):
            message = error.named(lambda name: self.names.get(name, f"`{name}`"))
            raise UserInputError(f"--config {self.path}: {message}") from None


def run_config(given: dict[str, Any], explicit: set[str]) -> tuple[RunConfig, FileNames]:
    """The run's configuration: the options given on the command line (``explicit``) over the
    --config file's values, over the defaults; checked as a whole."""
    path = given["config"]
    file = read_config_file(str(path)) if path is not None else {}
    sections = {name: dict(file.get(name, {})) for name in SECTIONS}
    chosen = {
        FLAGGED[name]: to_field(FLAGGED[name], given[name]) for name in explicit & set(FLAGGED)
    }
    if "data" in explicit:  # the path decides the dataset
        chosen[SETTING["dataset"]] = _dataset_at(given["data"], explicit)
    dropped = _drop_followers(sections, chosen)
    if dropped:
        note(f"--config {path}: dropped the file's {'; '.join(dropped)}: they do not apply here")
    for setting, value in chosen.items():
        section = sections[setting.section]
        if setting.option.key is None:
            section[setting.field] = value
        elif isinstance(options := section.get(setting.field, {}), dict):
            # the file's other keywords for the component stay (a wrong type stays, for its check)
            section[setting.field] = {**options, setting.option.key: value}
    with FileNames(path, _from_file(sections, file, chosen)) as names:
        try:
            config = RunConfig.from_dict(sections)
        except TypeError as error:  # a value of the wrong type, such as "epochs": "ten"
            raise UserInputError(f"--config {path}: a value has the wrong type ({error})") from None
        _check_applies(config, chosen)
    return config, names


def _dataset_at(data: Path, explicit: set[str]) -> str:
    if "dataset" in explicit:
        raise UserInputError("--data and --dataset both name the data: give one of them")
    if not data.exists():
        raise UserInputError(
            f"no file or folder at {data}: give a .npy/.npz file or a folder of images (--data)"
        )
    return "folder" if data.is_dir() else "array"


def _drop_followers(sections: dict[str, dict[str, Any]], chosen: dict[Setting, Any]) -> list[str]:
    """Where the command line changes a choice of the file (another likelihood, another model),
    the file's values for the old one no longer apply: removed, and said, one part per choice."""
    said = []
    for leader, value in chosen.items():
        before = sections[leader.section].get(leader.field, leader.default)
        followers = [s for s in SETTINGS if s.option.follows == leader.field and not s.option.key]
        if leader.option.key is not None or value == before or not followers:
            continue
        gone: dict[str, list[str]] = {}  # by section: --model's followers are in two
        for follower in followers:
            if follower.field not in sections[follower.section]:
                continue
            old = sections[follower.section].pop(follower.field)
            also_given = any(s.field == follower.field for s in chosen)
            if old != follower.default and not also_given:
                gone.setdefault(follower.section, []).append(f"{follower.field} {_in_file(old)}")
        if gone:
            values = " and ".join(f"[{section}] {' and '.join(v)}" for section, v in gone.items())
            said.append(f"{values} (for {leader.option.flag} {before}, not {value})")
    return said


def _in_file(value: Any) -> str:
    """A config file's value as the file would write it (a table, or a list of sizes)."""
    if isinstance(value, dict):
        return "{" + ", ".join(f"{key} = {item!r}" for key, item in value.items()) + "}"
    return repr(list(value)) if isinstance(value, list | tuple) else repr(value)


def _from_file(
    sections: dict[str, dict[str, Any]], file: dict[str, dict[str, Any]], chosen: dict
) -> dict[str, str]:
    """The file's key of each value that came from the file, by the name messages mark."""
    names = {}
    for setting in SETTINGS:
        section, field = sections[setting.section], setting.field
        if setting in chosen or field not in section or field not in file.get(setting.section, {}):
            continue  # the command line's, a default, or a file's value dropped
        held, key = section[field], setting.option.key
        if key is None or (isinstance(held, dict) and key in held):
            names[setting.name] = setting.file_key
    return names


def _check_applies(config: RunConfig, chosen: dict[Setting, Any]) -> None:
    """Refuse a value that means nothing for the choice it goes with: a schedule's option for
    another schedule, a component's keyword for a component without it."""
    for setting in chosen:
        if setting.option.applies is not None:
            field, values = setting.option.applies
            actual = _value(config, SETTING[field])
            if actual not in values:
                raise UserInputError(
                    f"`{setting.name}` applies to `{field}` {' or '.join(values)}, not {actual}: "
                    f"drop `{setting.name}`"
                )
    for setting in SETTINGS:
        if setting.option.key is None:
            continue
        kind = SETTING[setting.field].option.follows  # "guide", for guide_options
        registry = REGISTRIES[SETTING[kind].option.choices]
        name = _value(config, SETTING[kind])
        registered(registry, name, kind)  # a config file's name: the choices never let one by
        key = setting.option.key
        if key not in _value(config, SETTING[setting.field]) or accepts(registry, name, key):
            continue
        takers = " or ".join(n for n in registry if accepts(registry, n, key))
        if setting in chosen:
            raise UserInputError(
                f"`{setting.name}` applies to `{kind}` {takers}, not {name}: drop `{setting.name}`"
            )
        raise UserInputError(
            f"the config file's {setting.file_key} applies to {kind} {takers}, not {name}: "
            "remove it from the file"
        )


def _value(config: RunConfig, setting: Setting) -> Any:
    """The configuration's value of ``setting``; for a component's keyword, the component's
    own default where the configuration sets none."""
    value = getattr(getattr(config, setting.section), setting.field)
    key = setting.option.key
    if key is None:
        return value
    if key in value:
        return value[key]
    kind = SETTING[setting.field].option.follows
    registry = REGISTRIES[SETTING[kind].option.choices]
    component = registry.get(getattr(config.model, kind))
    default = None if component is None else inspect.signature(component).parameters.get(key)
    return None if default is None else default.default


def run_directory(out: Path | None, config: RunConfig, replicas: Replicas) -> Path:
    """Where the run goes: ``out``, or a new folder under runs/ named by the data and the time."""
    data = config.data
    if data.dataset == "folder" and Path(out or ".").resolve().is_relative_to(
        Path(data.path or ".").resolve()
    ):
        raise UserInputError(
            f"the run directory would lie inside the image folder {data.path}, whose images its "
            "pictures would join: choose --out outside it (or run from elsewhere)"
        )
    if out is not None:
        return out
    if replicas.distributed:  # the processes' clocks may straddle a second
        raise UserInputError("a run started by torchrun needs its directory: pass --out DIR")
    name = Path(data.path).stem if data.path is not None else data.dataset
    return Path("runs") / time.strftime(f"{name}-%Y%m%d-%H%M%S")


def resumed_options(given: dict[str, Any], explicit: set[str]) -> tuple[dict, dict]:
    """What a resumed run takes of the options given: the changes it may make (by field) and
    where its data are now. Refuses an option that would change the run."""
    for name, declared in RUN_OPTIONS.items():
        if name in explicit and declared.on_resume != MAY_CHANGE:
            raise UserInputError(declared.on_resume)
    given_again = [FLAGGED[name] for name in sorted(explicit & set(FLAGGED))]
    kept = [s for s in given_again if s.option.resume == REFUSED]
    if kept:
        stored = load_checkpoint(given["resume"]).config
        changed = [s for s in kept if to_field(s, given[parameter(s)]) != _value(stored, s)]
        if changed:
            flags = ", ".join(
                f"{s.option.flag} (the run has {shown(s, _value(stored, s))})" for s in changed
            )
            may = [s.option.flag for s in SETTINGS if s.option.resume == MAY_CHANGE]
            may += ["--" + name.replace("_", "-") for name in WATCH_OPTIONS]
            raise UserInputError(
                f"a resumed run keeps its configuration, so {flags} cannot change (only "
                f"{', '.join(map(str, may))} and the data's location can): drop them, or start a "
                "new run"
            )

    def chosen(rule: str) -> dict[str, Any]:
        return {
            s.field: to_field(s, given[parameter(s)])
            for s in given_again
            if s.option.resume == rule
        }

    return chosen(MAY_CHANGE), chosen(LOCATION)
