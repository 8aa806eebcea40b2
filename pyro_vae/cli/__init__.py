"""The pyro-vae command line, a Typer app: ``pyro-vae ...`` once installed, ``python cli.py ...``
from a checkout.

common.py holds the app and what every command shares; train.py the ``train`` and ``experiment``
commands, options.py train's options (made from the configuration's declarations), configure.py
the configuration they build and the rule for --resume, training.py how a run is shown; runs.py
the commands that read a trained run (evaluate, pictures), use.py those that put one to use
(encode, score, generate, export); process.py how the process starts and ends.
"""

import signal
import sys

# Ctrl-C while torch and Pyro are still being imported (a second or two): end quietly, as the
# shell would, instead of showing the traceback of some import. Training installs its own handler.
_HANDLER_BEFORE_IMPORTS = signal.signal(signal.SIGINT, lambda signum, frame: sys.exit(128 + signum))

from pyro_vae.cli import runs, train, use  # noqa: F401  (each registers its commands)
from pyro_vae.cli.common import app
from pyro_vae.cli.process import main

signal.signal(signal.SIGINT, _HANDLER_BEFORE_IMPORTS)  # imported: Ctrl-C as it was

__all__ = ["app", "main"]
