"""What every command of the pyro-vae command line shares: the Typer app, how a user's mistake
is reported (one line, exit status 2), notes, registry choices and the --device option.

train.py declares ``train`` and ``experiment`` on this app, runs.py and use.py the commands that
read a trained run; ``pyro-vae`` and ``python cli.py`` run it.
"""

import errno
import functools
import os
from collections.abc import Callable
from enum import Enum
from typing import Annotated, Any, TypeVar

import typer

from pyro_vae import UserInputError, resolve_device
from pyro_vae.core.config import SETTINGS

app = typer.Typer(
    help="Variational autoencoders as Pyro model/guide pairs: train, sample, reconstruct.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,  # plain click output: an error is one "Error: ..." line, as ours are
    pretty_exceptions_show_locals=False,  # a bug's traceback stays readable, without tensor dumps
)
_debug = False  # set by --debug: user errors then show their traceback too


def set_debug(on: bool) -> None:
    """--debug: from now on a user's error shows its traceback too."""
    global _debug
    _debug = on


def note(message: str) -> None:
    """A line the user should read, in the form of the library's notes."""
    typer.echo(f"Note: {message}", err=True)


def choices(name: str, names: Any) -> type[Enum]:
    """A str Enum of a registry's names, so ``--help`` lists every registered component."""
    return Enum(name, {n: n for n in names}, type=str)  # type: ignore[return-value]


Command = TypeVar("Command", bound=Callable[..., Any])


def reports_user_errors(command: Command) -> Command:
    """Show a ``UserInputError`` as one line on stderr and exit with status 2 (no traceback)."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except (UserInputError, OSError) as error:
            if _debug or (isinstance(error, OSError) and not _environmental(error)):
                raise
            if isinstance(error, UserInputError):
                message = error.named(on_the_command_line)
            else:
                message = _describe(error)
            rank = os.environ.get("RANK", "0")
            who = f" (process {rank} of {os.environ.get('WORLD_SIZE')})" if rank != "0" else ""
            typer.echo(f"Error{who}: {' '.join(message.split())}", err=True)  # one line
            raise typer.Exit(2) from None

    return wrapper  # type: ignore[return-value]


# How the command line names each field a library message marks: its option of ``train``, or
# the key of a config file for a field that no option sets.
_NAMES = {s.name: s.option.flag or s.file_key for s in SETTINGS}


def on_the_command_line(field: str) -> str:
    """``latent_dim`` as ``--latent-dim``, ``val_particles`` as ``[train] val_particles``."""
    return _NAMES.get(field, field)


# What the machine refuses for a path a user named (too long, a loop of links, a full disk, a
# read-only file system, no permission): the user's to fix, whichever line of ours met it.
_ENVIRONMENTAL = {
    errno.ENAMETOOLONG, errno.ELOOP, errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM,
    errno.EDQUOT, errno.ENOTDIR, errno.EISDIR,
}  # fmt: skip


def _environmental(error: OSError) -> bool:
    return error.errno in _ENVIRONMENTAL and error.filename is not None


def _describe(error: OSError) -> str:
    return f"cannot use {error.filename} ({error.strerror}): choose another path, or fix this one"


def _device(value: str) -> str:
    try:
        resolve_device(value)
    except (UserInputError, RuntimeError) as error:  # torch raises RuntimeError for 'gpu' etc.
        raise typer.BadParameter(str(error)) from None
    return value


# Every command's --device, said as train's is declared (core/train_config.py).
_DEVICE_HELP = next(s.option.help for s in SETTINGS if s.field == "device")
DeviceOption = Annotated[str, typer.Option(callback=_device, help=_DEVICE_HELP)]
