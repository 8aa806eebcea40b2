"""The one exception type for mistakes in what a user gave us (options, files, data).

Library code raises :class:`UserInputError` with a message that names the problem and the fix; the
CLI shows that message on one line and exits with status 2. Any other exception is a bug in pyro-vae
and keeps its traceback.

A message names a configuration field between backticks (```latent_dim` must be ...``): a Python
user reads the field's name, the command line shows its option instead (``--latent-dim``), or the
key of the config file the value came from. A keyword of a component's options is marked with its
dictionary (```likelihood_options.sigma```).
"""

import re
from collections.abc import Callable

MARKED = re.compile(r"`([a-z][a-z0-9_]*(?:\.[a-z][a-z0-9_]*)?)`")


class UserInputError(ValueError):
    """A bad option value, file or dataset; the message says what is wrong and how to fix it."""

    def __str__(self) -> str:
        return self.named(python_name)

    @property
    def marked(self) -> str:
        """The message with its fields still marked: for a caller that names them its own way."""
        return super().__str__()

    def named(self, name: Callable[[str], str]) -> str:
        """The message with each marked field replaced by ``name(field)``."""
        return MARKED.sub(lambda match: name(match[1]), self.marked)

    def names(self) -> set[str]:
        """The fields the message names."""
        return set(MARKED.findall(self.marked))


def python_name(field: str) -> str:
    """A field as the Python API spells it: ``latent_dim``; ``sigma (likelihood_options)``."""
    options, _, key = field.partition(".")
    return f"{key} ({options})" if key else field
