"""The pyro-vae command line from a source checkout: ``python cli.py train ...``.

The app is the package's (pyro_vae/cli/); installed, ``pyro-vae`` runs the same one. torchrun
starts this file too: ``torchrun --nproc_per_node=N cli.py train ...``.
"""

from pyro_vae.cli import app, main

__all__ = ["app", "main"]

if __name__ == "__main__":
    main()
