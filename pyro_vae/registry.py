"""Name-to-class registries for the swappable components (priors, likelihoods)."""

import inspect
from collections.abc import Mapping
from typing import Any, TypeVar

from torch import nn

from pyro_vae.errors import UserInputError

Component = TypeVar("Component", bound=nn.Module)


def build(
    registry: Mapping[str, type[Component]],
    spec: "str | Component",
    kind: str,
    *args: Any,
    **options: Any,
) -> Component:
    """``spec`` itself if it is a module, else an instance of the class registered under it."""
    if isinstance(spec, nn.Module):
        return spec
    try:
        cls = registry[spec]
    except KeyError:
        raise UserInputError(
            f"unknown {kind} {spec!r}: choose one of {', '.join(registry)}"
        ) from None
    try:  # check the options against the signature first, so a TypeError inside stays a bug
        inspect.signature(cls).bind(*args, **options)
    except TypeError as error:
        raise UserInputError(f"bad options for {kind} {spec!r}: {error}") from None
    return cls(*args, **options)
