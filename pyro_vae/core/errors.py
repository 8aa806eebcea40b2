"""The one exception type for mistakes in what a user gave us (options, files, data).

Library code raises :class:`UserInputError` with a message that names the problem and the fix; the
CLI shows that message on one line and exits with status 2. Any other exception is a bug in pyro-vae
and keeps its traceback.
"""


class UserInputError(ValueError):
    """A bad option value, file or dataset; the message says what is wrong and how to fix it."""
