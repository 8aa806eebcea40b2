"""What every experiment report states about where its numbers came from."""

import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import pyro
import torch


def provenance(script: str, argv: list[str] | None) -> str:
    """One markdown line: the command that reproduces the report, versions, machine and date."""
    args = " ".join(sys.argv[1:] if argv is None else argv)
    command = f"python experiments/{script} {args}".strip()
    return (
        f"Command: `{command}` · torch {torch.__version__}, pyro {pyro.__version__}, "
        f"Python {platform.python_version()} · {platform.machine()} CPU, "
        f"{os.cpu_count()} cores, {torch.get_num_threads()} torch threads · "
        f"{time.strftime('%Y-%m-%d')}"
    )


def output_path(out: Path | None, quick: bool, committed: Path) -> Path:
    """Where a report goes: ``out`` if given; a quick (smoke) run's into a new temporary folder,
    so that it never replaces the committed report; else the committed report's place."""
    if out is not None:
        return out
    if quick:
        return Path(tempfile.mkdtemp(prefix="pyro-vae-quick-")) / committed.name
    return committed
