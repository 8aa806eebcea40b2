"""Each configuration field declared once, where it is defined (model_config.py, data_config.py,
train_config.py): its option of ``pyro-vae train``, its help, its bounds, and whether a resumed
run may change it.

The dataclasses carry an :class:`Option` in each field's metadata (``declared(...)`` makes it).
From these declarations alone come the configuration's own checks of each value (:func:`check`),
the command line's options, their parsers and ``--help``, the keys a ``--config`` file may set,
the rule for ``--resume`` and the flags the CLI names in errors (cli/options.py and
cli/configure.py). Checks between fields stay in each ``__post_init__``.

Torch-free, and free of the CLI's packages: a declaration is plain data.
"""

import dataclasses
import math
import types
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Union, get_args, get_origin

from pyro_vae.core.errors import UserInputError

# What ``--resume RUN`` does with an option given again.
REFUSED = "refused"  # the run keeps its value: given a different one, the resume is refused
MAY_CHANGE = "may change"  # a resumed run takes the new value (only TrainConfig's: resume_run)
LOCATION = "location"  # where the run's data are now, if they have moved (the same data)


@dataclass(frozen=True)
class Spelling:
    """How the command line writes a tuple of sizes: ``256,128``, or ``48x64`` (H x W)."""

    separator: str
    what: str  # the advice for a bad one: "comma-separated positive layer sizes such as 256,128"
    square: bool = False  # one number is both height and width ("64" is 64x64)

    def parse(self, text: str) -> tuple[int, ...]:
        parts = text.lower().replace("×", "x").split(self.separator)
        if self.square and len(parts) == 1:
            parts = parts * 2
        fits = (len(parts) == 2 or not self.square) and all(p.strip().isdecimal() for p in parts)
        if not fits or min(int(part) for part in parts) < 1:
            raise UserInputError(f"expected {self.what}, got {text!r}")
        return tuple(int(part) for part in parts)

    def spell(self, sizes: tuple[int, ...]) -> str:
        return self.separator.join(map(str, sizes))


LAYER_SIZES = Spelling(",", "comma-separated positive layer sizes such as 256,128")
IMAGE_SIZE = Spelling("x", "a size such as 64 or 48x64 (H x W)", square=True)


@dataclass(frozen=True)
class Option:
    """One field's declaration (or one keyword's of a component's options, in ``keys``)."""

    flag: str | None = None  # its option of `pyro-vae train`; None: a config file's key only
    help: str = ""
    # Bounds on a number, checked by the configuration and by the option's parser alike:
    # included (low <= x), or excluded where ``strict`` (0 < x < 1). Numbers must be finite.
    low: float | None = None
    high: float | None = None
    strict: bool = False
    # The names a string may take: a tuple (checked here), or the name of the registry of them
    # ("priors": the CLI lists it, the registry checks it when the run is built).
    choices: tuple[str, ...] | str = ()
    noun: str = ""  # what an unknown choice is called ("ELBO estimator"); the field's name if ""
    resume: str = REFUSED
    # The field whose choice this value belongs to: where the command line changes that choice,
    # a config file's value of this one is dropped (a conv's channels are no MLP's units).
    follows: str | None = None
    # (field, values): the option means something only where that field takes one of them.
    applies: tuple[str, tuple[str, ...]] | None = None
    spelling: Spelling | None = None  # how the command line writes a tuple
    reads: type | None = None  # what the command line reads, if not the field's type (a Path)
    shown_default: str | bool | None = None  # what --help says of an unset option's default
    # A check of what this machine can do (a device), made where the option is parsed; the
    # configuration itself may be made on one machine and trained on another.
    usable: Callable[[Any], None] | None = None
    key: str | None = None  # a keyword of a component's options: its name
    # A dict field's keywords that are options of their own (likelihood_options: --sigma).
    keys: tuple["Option", ...] = ()


def require(condition: bool, message: str) -> None:
    """A check between fields: ``message`` (its fields marked) unless ``condition`` holds."""
    if not condition:
        raise UserInputError(message)


def declared(flag: str | None = None, **declaration: Any) -> dict[str, Option]:
    """A dataclass field's metadata: ``field(default=8, metadata=declared("--latent-dim"))``."""
    return {"option": Option(flag, **declaration)}


def keyword(key: str, flag: str, kind: type, **declared: Any) -> Option:
    """A keyword of a component's options that is an option too (``--sigma``)."""
    return Option(flag, key=key, reads=kind, **declared)


@dataclass(frozen=True, eq=False)  # each one found once: compared, and hashed, by identity
class Setting:
    """A declared value, found in its section: a field, or a keyword of a dict field."""

    section: str  # "model", "data" or "train": its table in a config file
    field: str  # the dataclass field that holds it
    option: Option
    kind: type  # int, float, str, bool, tuple or dict: what the configuration holds
    optional: bool  # None allowed
    default: Any  # the configuration's default (None for a keyword: the component's own)

    @property
    def name(self) -> str:
        """How messages mark it: the field, or ``field.key`` for a keyword."""
        key = self.option.key
        return f"{self.field}.{key}" if key else self.field

    @property
    def file_key(self) -> str:
        """How a config file names it: ``[model] latent_dim``, ``[train] lr``."""
        key = self.option.key
        return f"[{self.section}] {self.field}" + (f" {key}" if key else "")


def settings(sections: Mapping[str, type]) -> tuple[Setting, ...]:
    """Every declared value of the configuration's sections, in the order of their declaration,
    each keyword right after the field whose choice it follows (--sigma after --likelihood)."""
    found: list[Setting] = []
    for section, cls in sections.items():
        fields = [f for f in dataclasses.fields(cls) if "option" in f.metadata]
        keywords = {}
        for f in fields:
            option: Option = f.metadata["option"]
            kind, optional = _value_type(f.type)
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            found.append(Setting(section, f.name, option, kind, optional, default))
            for key in option.keys:
                keywords.setdefault(option.follows, []).append(
                    Setting(section, f.name, key, key.reads or str, True, None)
                )
        for leader, extra in keywords.items():
            at = next(i for i, s in enumerate(found) if s.field == leader) + 1
            found[at:at] = extra
    return tuple(found)


def _value_type(annotation: Any) -> tuple[type, bool]:
    """(int, True) for ``int | None``; (tuple, False) for ``tuple[int, ...]``."""
    members = get_args(annotation) if _is_union(annotation) else (annotation,)
    kinds = [get_origin(m) or m for m in members if m is not type(None)]
    return kinds[0], len(kinds) < len(members)


def _is_union(annotation: Any) -> bool:
    return isinstance(annotation, types.UnionType) or get_origin(annotation) is Union


def check(instance: Any) -> None:
    """Each option field of a configuration section, by its declaration: its type, its bounds,
    its choices and, for a dict field, the keywords option as options."""
    for f in dataclasses.fields(instance):
        option = f.metadata.get("option")
        if option is None:
            continue
        value = getattr(instance, f.name)
        kind, optional = _value_type(f.type)
        wrong = problem(option, kind, optional, value)
        if wrong is not None:
            raise UserInputError(f"`{f.name}` {wrong}")
        names = option.choices
        if isinstance(names, tuple) and names and value is not None and value not in names:
            raise UserInputError(
                f"unknown {option.noun or f.name} {value!r}: choose one of {', '.join(names)}"
            )
        for key in option.keys:
            if key.key in value:
                wrong = problem(key, key.reads or str, False, value[key.key])
                if wrong is not None:
                    raise UserInputError(f"`{f.name}.{key.key}` {wrong}")


def problem(option: Option, kind: type, optional: bool, value: Any) -> str | None:
    """What is wrong with ``value`` for a field of this type and declaration, said after the
    field's name (``must be a positive number, got 0``); None if nothing is."""
    if value is None and optional:
        return None
    whole = isinstance(value, int) and not isinstance(value, bool)
    if kind is bool:
        return None if isinstance(value, bool) else f"must be true or false, got {value!r}"
    if kind is int:
        low, high = option.low, option.high
        within = whole and (low is None or value >= low) and (high is None or value <= high)
        if within:
            return None
        bounds = f" of at least {low}" if high is None else f" from {low} to {high}"
        return f"must be a whole number{bounds if low is not None else ''}, got {value!r}"
    if kind is float:
        if not (whole or isinstance(value, float)):
            return f"must be a number, got {value!r}"
        return None if _within(option, value) else f"{_bounds(option)}, got {value!r}"
    if kind is str:
        return None if isinstance(value, str) else f"must be a string, got {value!r}"
    if kind is dict:
        return None if isinstance(value, dict) else f"must be a table of keywords, got {value!r}"
    return None  # tuples: their sections check them (a size's shape is theirs to say)


def _within(option: Option, value: float) -> bool:
    low, high, strict = option.low, option.high, option.strict
    if not math.isfinite(value):
        return False
    above = low is None or (value > low if strict else value >= low)
    below = high is None or (value < high if strict else value <= high)
    return above and below


def _bounds(option: Option) -> str:
    low, high = option.low, option.high
    if low is not None and high is not None:
        return f"must lie {'strictly ' if option.strict else ''}between {low:g} and {high:g}"
    if low == 0:
        return (
            "must be a positive finite number"
            if option.strict
            else "must be a finite number, 0 or more"
        )
    if low is not None:
        return f"must be {'above' if option.strict else 'at least'} {low:g}"
    if high is not None:
        return f"must be {'below' if option.strict else 'at most'} {high:g}"
    return "must be a finite number"
