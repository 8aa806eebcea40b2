"""A run directory: which files in it are a run's, who may write it, and where files can go.

- **What belongs to a run.** ``train`` and the picture and evaluation commands write files of
  known names (``RUN_FILES``, ``RUN_PATTERNS``). Only those are ever replaced (``--overwrite``)
  or cleared; anything else in the folder is the user's and stays.
- **One writer.** A training process holds an exclusive ``flock`` on ``.lock`` while it writes,
  so a second ``train --out`` or ``--resume`` of the same folder is refused with one line. The
  kernel drops the lock when the process ends, however it ends, so a killed run leaves nothing
  stuck.
- **Writable or refused early.** An output location below a file, without permission, or on a
  read-only file system is refused before any work, naming the path and the reason.
"""

import contextlib
import errno
import json
import logging
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from pyro_vae.core.errors import UserInputError

try:
    import fcntl
except ImportError:  # not on Windows: there a run directory goes unlocked
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.pt"
BEST = "best.pt"  # the checkpoint of the best validation ELBO, kept with --patience
CONFIG = "config.json"
METRICS = "metrics.jsonl"
TIMING = "timing.jsonl"
ELBO_CURVE = "elbo_curve.png"
RECONSTRUCTIONS = "reconstructions.png"
SAMPLES = "samples.png"
LOCK = ".lock"

RUN_FILES = (CHECKPOINT, BEST, CONFIG, METRICS, TIMING, ELBO_CURVE, RECONSTRUCTIONS, SAMPLES, LOCK)
# What the other commands write into a run directory by default, and the temporary files of an
# atomic write that a kill may leave behind.
RUN_PATTERNS = (
    "evaluation-*.json",
    "samples-seed*.png",
    "reconstructions-*.png",
    "interpolations.png",
    "interpolations-latest.png",  # the last epoch's model where best.pt is kept (--latest)
    "latent-*.png",
    "manifold.png",
    "manifold-latest.png",
    "events.out.tfevents.*",  # TensorBoard's, with --tensorboard
    f".{CHECKPOINT}.*.tmp",
    f".{BEST}.*.tmp",
    ".*.json.tmp",
    ".*.jsonl.tmp",
)


def is_run_dir(run_dir: Path) -> bool:
    """Whether ``run_dir`` is provably a run's: its ``config.json`` is a run's record (it names
    the run's id), or it holds a checkpoint. Only in such a folder are files taken as a run's by
    their names: elsewhere a ``config.json`` or ``samples.png`` is the user's own."""
    if (run_dir / CHECKPOINT).is_file():
        return True
    try:
        record = json.loads((run_dir / CONFIG).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(record, dict) and "run_id" in record and "config" in record


def run_files(run_dir: Path) -> list[Path]:
    """The files in ``run_dir`` that a run or its commands wrote (by name, in a run's folder)."""
    if not run_dir.is_dir() or not is_run_dir(run_dir):
        return []
    found = {run_dir / name for name in RUN_FILES if (run_dir / name).is_file()}
    for pattern in RUN_PATTERNS:
        found.update(path for path in run_dir.glob(pattern) if path.is_file())
    return sorted(found)


def clear_run_files(run_dir: Path) -> list[Path]:
    """Remove a previous run's files from ``run_dir`` (not the lock), and say which."""
    removed = [path for path in run_files(run_dir) if path.name != LOCK]
    for path in removed:
        path.unlink(missing_ok=True)
    return removed


def check_writable(path: Path, option: str) -> None:
    """Refuse a location where nothing can be written, naming the path and the reason: below a
    regular file, without permission, on a read-only file system. Creates nothing."""
    existing = path
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if existing.exists() and not existing.is_dir():
        raise UserInputError(
            f"cannot write {path}: {existing} is a file, not a folder: choose another {option}"
        )
    try:  # the only sure test is to try: permissions, read-only mounts, /proc ...
        probe = tempfile.mkdtemp(prefix=".pyro-vae-probe-", dir=existing)
    except OSError as error:
        raise UserInputError(
            f"cannot write {path} ({error.strerror or error}): choose another {option}"
        ) from None
    os.rmdir(probe)


@contextlib.contextmanager
def writing(path: Path, option: str) -> Iterator[None]:
    """Turn an OS error while writing ``path`` (a full disk, a vanished folder) into one line."""
    try:
        yield
    except OSError as error:
        reason = error.strerror or str(error)
        hint = "free some space" if error.errno == errno.ENOSPC else f"choose another {option}"
        raise UserInputError(f"cannot write {path} ({reason}): {hint}") from None


def check_unlocked(run_dir: Path) -> None:
    """Refuse ``run_dir`` if a process is training in it now."""
    with _open_lock(run_dir, create=False) as file:
        if file is not None and not _try_lock(file):
            raise UserInputError(_locked_message(run_dir, file))


@contextlib.contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """Hold ``run_dir``'s lock for the block: the one writer of the run directory."""
    if fcntl is None:
        yield
        return
    while True:
        with _open_lock(run_dir, create=True) as file:
            assert file is not None
            if not _try_lock(file):
                raise UserInputError(_locked_message(run_dir, file))
            # Another process may have removed the file between our open and our lock: then we
            # hold a lock on nothing that others see, and must take the new file's.
            try:
                same = os.fstat(file.fileno()).st_ino == os.stat(run_dir / LOCK).st_ino
            except FileNotFoundError:
                same = False
            if not same:
                continue
            with writing(run_dir / LOCK, "--out"):
                file.seek(0)
                file.truncate()
                file.write(f"{os.getpid()}\n")
                file.flush()
            try:
                yield
            finally:
                (run_dir / LOCK).unlink(missing_ok=True)  # before the lock is released
            return


@contextlib.contextmanager
def _open_lock(run_dir: Path, create: bool) -> Iterator[object]:
    path = run_dir / LOCK
    if fcntl is None or (not create and not os.path.lexists(path)):
        yield None
        return
    if os.path.lexists(path) and (path.is_symlink() or not path.is_file()):
        raise UserInputError(
            f"{path} is not a lock file that pyro-vae made (a link, a folder or a pipe): "
            "remove it, then run the command again"
        )
    try:
        # O_NOFOLLOW: a link put there since cannot make us write into the file it points to
        flags = os.O_RDWR | os.O_NOFOLLOW | (os.O_CREAT if create else 0)
        file = os.fdopen(os.open(path, flags, 0o644), "r+")
    except FileNotFoundError:
        yield None
        return
    except OSError as error:
        raise UserInputError(
            f"cannot lock {run_dir} ({error.strerror or error}): check that the folder is "
            "writable, or choose another one"
        ) from None
    try:
        yield file
    finally:
        file.close()  # closing releases any lock taken on it


def _try_lock(file) -> bool:  # type: ignore[no-untyped-def]
    try:
        fcntl.flock(file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _locked_message(run_dir: Path, file) -> str:  # type: ignore[no-untyped-def]
    file.seek(0)
    pid = file.read().strip()
    who = f"process {pid}" if pid.isdigit() else "another process"
    return (
        f"{run_dir} is being trained by {who} now: wait for it to finish (or stop it), or "
        "choose another --out"
    )
