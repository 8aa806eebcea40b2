"""What a recorded step may assume of the components it stands for, and a watch that checks it.

A recording (recorded.py) keeps the tensor operations of one step and nothing of the Python that
issued them: a float read by ``forward``, a number drawn with ``random`` or NumPy, a module-level
value, the very tensor object held in a buffer. Replayed, the graph reads the tensors that were
the module's parameters and buffers when it was recorded, and uses every other value as it was
then. So a graph stands for a component only when that component says its step is **static**:

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
out at the next step, by a ``StateWatch`` that costs a few microseconds. Either way the step is
taken eagerly from then on, with a log line saying why. A value meant to change during training
(a KL weight on a schedule) belongs in a buffer updated in place (``self.beta.fill_(b)``): the
graph reads buffers at every replay, so nothing needs recording again.
"""

import random
from collections.abc import Iterable
from itertools import chain
from typing import Any

import numpy as np
from torch import nn

# Classes whose instances are static whatever their subclasses do: torch's own layers.
_STATIC_MODULES = ("torch.nn.modules.",)


def declares_static(cls: type) -> bool:
    """Whether instances of ``cls`` may be recorded: it says so in its own body, or is torch's."""
    return vars(cls).get("recordable", False) is True or cls.__module__.startswith(_STATIC_MODULES)


def undeclared(named: Iterable[tuple[str, Any]]) -> str | None:
    """The first of ``named`` (name, object) whose class does not declare itself static, described
    for a log line; None when every one does."""
    for name, value in named:
        if not declares_static(type(value)):
            return f"{name} ({type(value).__qualname__})" if name else type(value).__qualname__
    return None


class StateWatch:
    """The Python state of some objects (their attributes, and for modules their parameters,
    buffers, submodules and hooks) as it was at construction, to compare with and restore.

    Values are compared as Python compares them (``sigma == 1.0``), and the entries of a module's
    dictionaries (``_parameters``, ``_buffers``, ...) by identity: a graph reads the very tensor
    object it was recorded with. A value changed in place inside a list or dict held as an
    attribute is not seen.
    """

    def __init__(self, named: Iterable[tuple[str, Any]]):
        named = list(named)
        self._names = [name for name, _ in named]
        self._attributes = [vars(value) for _, value in named]
        self._attribute_copies = [dict(attributes) for attributes in self._attributes]
        # The dictionaries of a module's own state (parameters, buffers, submodules, hooks).
        self._tables = [
            (name, table)
            for name, attributes in zip(self._names, self._attributes, strict=True)
            for table in attributes.values()
            if isinstance(table, dict)
        ]
        self._table_copies = [dict(table) for _, table in self._tables]
        self._all_tables = [table for _, table in self._tables]
        # Most tables are empty hook dictionaries: their sizes say enough of them.
        self._filled_tables = [table for table in self._all_tables if table]
        self._table_entries = self._entries()

    def _entries(self) -> list[int]:
        # Built by iterators alone, in C: a few microseconds at every step for a whole VAE.
        values = chain.from_iterable(map(dict.values, self._filled_tables))
        return [*map(len, self._all_tables), *map(id, values)]

    def changed(self) -> str | None:
        """What has changed since construction, described for a log line, or None."""
        if self._entries() != self._table_entries:
            for (name, table), copy in zip(self._tables, self._table_copies, strict=True):
                keys = [k for k in table.keys() | copy.keys() if table.get(k) is not copy.get(k)]
                if keys:
                    return f"{_dotted(name, min(map(str, keys)))} was reassigned"
        if not _equal(self._attributes, self._attribute_copies):
            for name, attributes, copy in zip(
                self._names, self._attributes, self._attribute_copies, strict=True
            ):
                keys = [
                    k for k in attributes.keys() | copy.keys() if not _same(attributes, copy, k)
                ]
                if keys:
                    return f"{_dotted(name, min(keys))} changed"
        return None

    def restore(self) -> None:
        """Put every attribute and dictionary entry back as it was at construction."""
        for (_, table), copy in zip(self._tables, self._table_copies, strict=True):
            table.clear()
            table.update(copy)
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


class PythonGenerators:
    """Where Python's and NumPy's global generators stood at construction, to compare and to
    restore: a recording must leave them where it found them, as if it had never run."""

    def __init__(self) -> None:
        self._python, self._numpy = random.getstate(), np.random.get_state()

    def moved(self) -> bool:
        _, keys, position, *_ = np.random.get_state()
        _, saved_keys, saved_position, *_ = self._numpy
        return (
            random.getstate() != self._python
            or position != saved_position
            or not np.array_equal(keys, saved_keys)
        )

    def restore(self) -> None:
        random.setstate(self._python)
        np.random.set_state(self._numpy)


def module_parts(vae: nn.Module) -> list[tuple[str, nn.Module]]:
    """Every module a VAE's step runs, named as in ``named_modules`` (the VAE itself as '')."""
    return list(vae.named_modules(remove_duplicate=True))
