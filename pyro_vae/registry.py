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
    context: Mapping[str, Any] | None = None,
    **options: Any,
) -> Component:
    """``spec`` itself if it is a module, else an instance of the class registered under it.

    ``options`` are the user's settings for the component; ``context`` holds what the VAE can
    provide (such as the encoder), passed on only to constructors with a parameter of that name.
    """
    if isinstance(spec, nn.Module):
        return spec
    try:
        cls = registry[spec]
    except KeyError:
        raise UserInputError(
            f"unknown {kind} {spec!r}: choose one of {', '.join(registry)}"
        ) from None
    parameters = inspect.signature(cls).parameters
    supplied = {name: value for name, value in (context or {}).items() if name in parameters}
    try:  # check the options against the signature first, so a TypeError inside stays a bug
        inspect.signature(cls).bind(*args, **supplied, **options)
    except TypeError as error:
        raise UserInputError(f"bad options for {kind} {spec!r}: {error}") from None
    return cls(*args, **supplied, **options)


def accepts(registry: Mapping[str, type[nn.Module]], name: str, option: str) -> bool:
    """Whether the component registered as ``name`` takes the keyword argument ``option``."""
    return option in inspect.signature(registry[name]).parameters
