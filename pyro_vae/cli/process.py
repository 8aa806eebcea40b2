"""How the ``pyro-vae`` process runs the app and ends."""

import atexit
import os
import sys
from typing import NoReturn

from pyro_vae.cli.common import app


def main() -> None:
    """The ``pyro-vae`` command. Under torchrun, a process that fails with a traceback records
    it where torchrun's failure summary shows it."""
    try:
        if "TORCHELASTIC_RUN_ID" in os.environ:
            from torch.distributed.elastic.multiprocessing.errors import record

            record(app)()
        else:
            app()
    except SystemExit as done:
        _exit_now(done.code)
    _exit_now(0)


def _exit_now(code: int | str | None) -> NoReturn:
    """Exit with ``code`` without tearing the interpreter down.

    Freeing torch's modules one by one at exit takes about a second on 2 CPU cores (1.2 s
    measured for torch and torch._dynamo, which torch.optim imports), after every file of the
    command is written and closed. What an orderly exit does that matters still happens: the
    atexit handlers run (logging's flush among them) and the standard streams are flushed.
    Only the command line does this; the library and the app called in-process exit normally.
    """
    if isinstance(code, str):  # sys.exit("message"): the message on stderr, status 1
        print(code, file=sys.stderr)
        code = 1
    status = 0 if code is None else code
    atexit._run_exitfuncs()  # CPython's own: the handlers an interpreter exit would run
    for stream in (sys.stdout, sys.stderr):
        if stream is None:  # started with that descriptor closed
            continue
        try:
            stream.flush()
        except (OSError, ValueError):  # a full disk or a closed pipe: the output was not written
            status = status or 1
    os._exit(status)
