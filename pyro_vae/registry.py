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
    /,
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
    cls = registered(registry, spec, kind)
    parameters = inspect.signature(cls).parameters
    supplied = {name: value for name, value in (context or {}).items() if name in parameters}
    check_options(registry, spec, kind, *args, **supplied, **options)
    return cls(*args, **supplied, **options)


def registered(registry: Mapping[str, type[Component]], name: str, kind: str) -> type[Component]:
    """The class registered as ``name``; an unknown name is the user's mistake."""
    try:
        return registry[name]
    except KeyError:
        raise UserInputError(
            f"unknown {kind} {name!r}: choose one of {', '.join(registry)}"
        ) from None


def check_options(
    registry: Mapping[str, type[nn.Module]], name: str, kind: str, /, *args: Any, **options: Any
) -> None:
    """Refuse options that the constructor of ``name`` does not take: checked against its
    signature before any call, so that a TypeError inside a constructor stays a bug."""
    try:
        inspect.signature(registered(registry, name, kind)).bind(*args, **options)
    except TypeError as error:
        raise UserInputError(f"bad options for {kind} {name!r}: {error}") from None


def accepts(registry: Mapping[str, type[nn.Module]], name: str, option: str) -> bool:
    """Whether the component registered as ``name`` takes the keyword argument ``option``."""
    return option in inspect.signature(registry[name]).parameters
