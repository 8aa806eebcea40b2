"""Name-to-class registries for the swappable components (priors, likelihoods, guides, networks)."""

import inspect
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from torch import nn

from pyro_vae.core.errors import UserInputError

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
    supplied = accepted(cls, context or {})
    check_options(registry, spec, kind, *args, **supplied, **options)
    return cls(*args, **supplied, **options)


def accepted(function: Callable[..., Any], context: Mapping[str, Any]) -> dict[str, Any]:
    """The items of ``context`` that ``function`` (a constructor, say) takes by name."""
    parameters = inspect.signature(function).parameters
    return {name: value for name, value in context.items() if name in parameters}


# The registries a user adds to from Python, by the kind of component: named in the advice.
PUBLIC_NAMES = {
    "prior": "PRIORS",
    "likelihood": "LIKELIHOODS",
    "guide": "GUIDES",
    "network": "NETWORKS",
}


def registered(registry: Mapping[str, Any], name: str, kind: str) -> Any:
    """The entry registered as ``name`` (a class; a network's is its pair of classes); an
    unknown name is the user's mistake, in every registry alike."""
    try:
        return registry[name]
    except KeyError:
        raise UserInputError(unknown(registry, name, kind)) from None


def unknown(registry: Mapping[str, Any], name: str, kind: str) -> str:
    """Why ``name`` is no ``kind`` here, and how to make it one. A run trained with a component
    registered from Python names it in its checkpoint, but the registration lived in that
    process only: a later command knows the component only where the same code runs again."""
    message = f"unknown {kind} {name!r}: choose one of {', '.join(registry)}"
    public = PUBLIC_NAMES.get(kind)
    if public is None:
        return message
    return (
        f"{message}; a {kind} registered from Python (pyro_vae.{public}[{name!r}] = ...) is "
        "known only where that code runs: register it, then use the Python API "
        "(pyro_vae.load_checkpoint(RUN).build_vae(), resume_run, train_run)"
    )


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
