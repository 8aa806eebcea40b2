"""What a recorded step may assume of the components it stands for, and a watch that checks it.

A recording (inference/fast/replay.py) keeps the tensor operations of one step and nothing of the
Python that issued them: a float read by ``forward``, a number drawn with ``random`` or NumPy, a
module-level value, the very tensor object held in a buffer. Replayed, the graph reads the tensors
that were the module's parameters and buffers when it was recorded, and uses every other value as
it was then. So a graph stands for a component only when that component says its step is **static**:

- its ``forward`` computes from its parameters, its buffers (read, or updated in place), its
  inputs, its submodules and torch's own random numbers, and from Python values set once;
- it keeps nothing between calls (no cache) and draws nothing from Python's or NumPy's generators.

A class says so with ``recordable = True`` in its own body. The declaration is not inherited: a
subclass may change ``forward``, so it declares for itself. torch.nn's own layers are static.
Everything else is trained eagerly, with a log line naming it.

A declaration is a promise, and a few broken ones are cheap to catch, so they are: a component
that changes its Python state while the step is recorded (a cache, a counter) or draws from Python
or NumPy's generators is found out at the recording; one whose attributes, parameters, buffers,
submodules or hooks are reassigned between steps (a σ annealed by ``self.sigma = ...``) is found
out at the next step, by a ``StateWatch`` that costs about 16 µs a step. Either way the step is
taken eagerly from then on, with a log line saying why. What no watch sees (a value read from
the environment or a module-level variable) an audit in inference/fast/replay.py catches where it
shows: the replay compared with the eager step, now and then. A value meant to change during
training (a KL weight on a schedule) belongs in a buffer updated in place (``self.beta.fill_(b)``):
the graph reads buffers at every replay, so nothing needs recording again.
"""

import operator
import random
from collections.abc import Iterable
from itertools import chain
from typing import Any

import numpy as np
import pyro
import torch
from torch import nn

# Classes whose instances are static whatever their subclasses do: torch's own layers.
_STATIC_MODULES = ("torch.nn.modules.",)
# And the few of Pyro's modules that the IAF guide holds, read for this in pyro-ppl 1.9: the
# conditional flow keeps its network and options; ``condition`` makes a new transform, whose
# cache lives for that one step; the networks compute from their weights and masks (buffers).
# Another Pyro may have changed them: its steps are eager until they are read again.
_STATIC_CLASSES = (
    frozenset(
        {
            "pyro.distributions.transforms.affine_autoregressive.ConditionalAffineAutoregressive",
            "pyro.nn.auto_reg_nn.ConditionalAutoRegressiveNN",
            "pyro.nn.auto_reg_nn.MaskedLinear",
        }
    )
    if pyro.__version__.startswith("1.9.")
    else frozenset()
)


def declares_static(cls: type) -> bool:
    """Whether instances of ``cls`` may be recorded: it says so in its own body, or is torch's
    (or one of the Pyro modules above)."""
    return (
        vars(cls).get("recordable", False) is True
        or cls.__module__.startswith(_STATIC_MODULES)
        or f"{cls.__module__}.{cls.__qualname__}" in _STATIC_CLASSES
    )


def undeclared(named: Iterable[tuple[str, Any]]) -> str | None:
    """The first of ``named`` (name, object) whose class does not declare itself static, described
    for a log line; None when every one does."""
    for name, value in named:
        if not declares_static(type(value)):
            return f"{name} ({type(value).__qualname__})" if name else type(value).__qualname__
    return None


_HOOK_TABLES = ("hook", "hooks")  # a module's hook dictionaries: _forward_hooks, ...


def hooks_in(named: Iterable[tuple[str, Any]], parameters: Iterable[torch.Tensor]) -> str | None:
    """The first hook (user code that runs inside a step) among ``named``'s modules, their
    parameters and torch's global module hooks, described for a log line; None if there is none.
    A ``forward`` set on an instance counts: it replaces the class's."""
    for name, value in named:
        attributes = vars(value)
        if "forward" in attributes:
            return f"{_dotted(name, 'forward')} is set on the instance"
        for key, table in attributes.items():
            if isinstance(table, dict) and table and key.endswith(_HOOK_TABLES):
                return f"{name or 'the VAE'} has a hook ({key.strip('_')})"
    if any(
        p._backward_hooks or getattr(p, "_post_accumulate_grad_hooks", None) for p in parameters
    ):
        return "a parameter has a gradient hook"
    if any(getattr(torch.nn.modules.module, table) for table in _GLOBAL_HOOKS):
        return "a global module hook is registered"
    return None


_GLOBAL_HOOKS = tuple(
    name for name in vars(torch.nn.modules.module) if name.startswith("_global_") and "hook" in name
)


class StateWatch:
    """The Python state of some objects as it was at construction, to compare with and restore:
    their attributes; for modules their parameters, buffers, submodules and hooks; gradient hooks
    on ``parameters``; torch's global module hooks.

    Attribute values are compared as Python compares them (``sigma == 1.0``); the entries of the
    dictionaries an object holds (``_parameters``, ``_buffers``, hooks, a user's dict) by
    identity, since a graph reads the very tensor object it was recorded with; so are the items of
    a list held as an attribute. A value changed in place inside an array, or a draw from a
    private NumPy generator, is not seen.
    """

    def __init__(self, named: Iterable[tuple[str, Any]], parameters: Iterable[torch.Tensor] = ()):
        named = list(named)
        self._names = [name for name, _ in named]
        self._attributes = [vars(value) for _, value in named]
        self._attribute_copies = [dict(attributes) for attributes in self._attributes]
        self._parameters = list(parameters)
        # (object's name, attribute, dictionary) for every dictionary an object holds.
        self._tables = [
            (name, key, table)
            for name, attributes in zip(self._names, self._attributes, strict=True)
            for key, table in attributes.items()
            if isinstance(table, dict)
        ]
        self._table_copies = [dict(table) for *_, table in self._tables]
        self._all_tables = [table for *_, table in self._tables]
        # Most tables are empty hook dictionaries: their sizes say enough of them.
        self._filled_tables = [table for table in self._all_tables if table]
        # Where each table but the hooks' is held, to fetch it anew: one replaced wholesale
        # (``self.options = {...}``) is a change too.
        held = [(name, key) for name, key, _ in self._tables if not key.endswith(_HOOK_TABLES)]
        self._table_owners = [self._attributes[self._names.index(name)] for name, _ in held]
        self._table_keys = [key for _, key in held]
        # Lists held as attributes (a cache that appends, say), their items compared by identity.
        self._lists = [
            (name, key, value)
            for name, attributes in zip(self._names, self._attributes, strict=True)
            for key, value in attributes.items()
            if isinstance(value, list)
        ]
        self._list_copies = [list(value) for *_, value in self._lists]
        self._table_entries = self._entries()

    def _entries(self) -> list[int]:
        # Built by iterators alone, in C: a few microseconds at every step for a whole VAE.
        values = chain.from_iterable(map(dict.values, self._filled_tables))
        tables = map(dict.get, self._table_owners, self._table_keys)
        lists = [value for *_, value in self._lists]
        items = chain.from_iterable(lists)
        return [
            *map(len, self._all_tables),
            *map(id, values),
            *map(id, tables),
            *map(len, lists),
            *map(id, items),
        ]

    def changed(self) -> str | None:
        """What has changed since construction, described for a log line, or None."""
        if self._entries() != self._table_entries:
            for (name, key, table), copy in zip(self._tables, self._table_copies, strict=True):
                if self._attributes[self._names.index(name)].get(key) is not table:
                    return f"{_dotted(name, key)} was replaced"
                keys = [k for k in table.keys() | copy.keys() if table.get(k) is not copy.get(k)]
                if keys:
                    return f"{_describe_entry(name, key, min(keys, key=str))} was reassigned"
            for (name, key, value), copy in zip(self._lists, self._list_copies, strict=True):
                if len(value) != len(copy) or any(map(operator.is_not, value, copy)):
                    return f"{_dotted(name, key)} (a list) changed"
        if not _equal(self._attributes, self._attribute_copies):
            for name, attributes, copy in zip(
                self._names, self._attributes, self._attribute_copies, strict=True
            ):
                keys = [
                    k for k in attributes.keys() | copy.keys() if not _same(attributes, copy, k)
                ]
                if keys:
                    return f"{_dotted(name, min(keys))} changed"
        return hooks_in([], self._parameters)

    def restore(self) -> None:
        """Put every attribute and dictionary entry back as it was at construction."""
        for (*_, table), copy in zip(self._tables, self._table_copies, strict=True):
            table.clear()
            table.update(copy)
        for (*_, value), copy in zip(self._lists, self._list_copies, strict=True):
            value[:] = copy
        for attributes, copy in zip(self._attributes, self._attribute_copies, strict=True):
            attributes.clear()
            attributes.update(copy)


def _equal(a: Any, b: Any) -> bool:
    try:
        return a == b  # identical objects compare equal without being asked, tensors included
    except Exception:  # a tensor or an array replaced by another: no single truth value
        return False


def _same(a: dict, b: dict, key: str) -> bool:
    if key not in a or key not in b:
        return False
    return _equal({key: a[key]}, {key: b[key]})


def _dotted(name: str, attribute: str) -> str:
    return f"{name}.{attribute}" if name else attribute


def _describe_entry(name: str, table: str, key: Any) -> str:
    if table in ("_parameters", "_buffers", "_modules"):
        return _dotted(name, str(key))
    if table.endswith(_HOOK_TABLES):
        return f"a hook of {name or 'the VAE'} ({table.strip('_')})"
    return f"{_dotted(name, table)}[{key!r}]"


class PythonGenerators:
    """Where Python's and NumPy's global generators stood at construction, to compare and to
    restore: a recording must leave them where it found them, as if it had never run."""

    def __init__(self) -> None:
        self._python, self._numpy = random.getstate(), np.random.get_state()

    def moved(self) -> bool:
        _, keys, position, has_gauss, cached = np.random.get_state()
        _, saved_keys, saved_position, saved_has_gauss, saved_cached = self._numpy
        return (
            random.getstate() != self._python
            or (position, has_gauss, cached) != (saved_position, saved_has_gauss, saved_cached)
            or not np.array_equal(keys, saved_keys)
        )

    def restore(self) -> None:
        random.setstate(self._python)
        np.random.set_state(self._numpy)


def module_parts(vae: nn.Module) -> list[tuple[str, nn.Module]]:
    """Every module a VAE's step runs, named as in ``named_modules`` (the VAE itself as '')."""
    return list(vae.named_modules(remove_duplicate=True))
