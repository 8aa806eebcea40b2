"""What the commands write outside training: where they may write, and tables of per-image values.

- **Nothing of the user's replaced.** An output path that holds a file is refused unless the
  file is the tool's own (a run's file in its run directory, or a picture, record or table that
  pyro-vae marked as written by it) or ``--overwrite`` says to replace it. Nothing is ever
  written inside a run's image folder: a file there would change the run's data.
- **Tables** (``write_table``): one row per image, as a NumPy structured array (``.npy``), CSV or
  Parquet (``pip install pyarrow``, the extra ``[parquet]``); a column of vectors (codes) is one
  field of the structured array and one column per coordinate elsewhere.
"""

import contextlib
import csv
import json
import os
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np

from pyro_vae.core.config import DataConfig
from pyro_vae.core.errors import UserInputError
from pyro_vae.runs.rundir import check_writable, run_files

WRITTEN_BY = "pyro-vae"  # the mark: a PNG's Software text, a JSON's written_by, Parquet metadata
PNG_METADATA = {"Software": WRITTEN_BY}
TABLE_SUFFIXES = (".npy", ".csv", ".parquet")


def is_own_file(path: Path) -> bool:
    """Whether ``path`` is a file pyro-vae wrote: a run's file in its run directory, or a
    picture, JSON record or Parquet table carrying its mark."""
    path = Path(path)
    if path in run_files(path.parent):
        return True
    suffix = path.suffix.lower()
    try:
        if suffix == ".png":
            from PIL import Image

            with Image.open(path) as image:
                return image.info.get("Software") == WRITTEN_BY
        if suffix == ".json":
            record = json.loads(path.read_text())
            return isinstance(record, dict) and record.get("written_by") == WRITTEN_BY
        if suffix == ".parquet":
            import pyarrow.parquet as pq

            metadata = pq.read_schema(path).metadata or {}
            return metadata.get(b"written_by") == WRITTEN_BY.encode()
    except Exception:  # unreadable, foreign, or a reader not installed: not known to be ours
        return False
    return False


def check_output(
    path: Path, overwrite: bool, option: str = "--out", data: DataConfig | None = None
) -> None:
    """Refuse ``path`` before any work if writing it would replace a file that is not the
    tool's own (unless ``overwrite``), land inside ``data``'s image folder, or cannot succeed."""
    path = Path(path)
    if data is not None and data.dataset == "folder" and data.path is not None:
        folder = Path(data.path).resolve()
        if folder == path.resolve().parent or folder in path.resolve().parents:
            raise UserInputError(
                f"{path} is inside the run's image folder {folder}, where a new file would "
                f"change the run's data: choose another {option}"
            )
    if path.is_dir():
        raise UserInputError(f"{path} is a folder: give a file name to {option}")
    if path.exists() and not overwrite and not is_own_file(path):
        raise UserInputError(
            f"{path} already exists: choose another {option}, or pass --overwrite to replace it"
        )
    check_writable(path.parent, option)


def check_output_folder(folder: Path, names: list[str], overwrite: bool, option: str) -> None:
    """Refuse writing the files ``names`` into ``folder`` where one of them exists already
    (unless ``overwrite``), or where nothing can be written."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise UserInputError(f"{folder} is a file, not a folder: choose another {option}")
    taken = [name for name in names if (folder / name).exists() and not is_own_file(folder / name)]
    if taken and not overwrite:
        more = f" and {len(taken) - 1} more" if len(taken) > 1 else ""
        raise UserInputError(
            f"{folder / taken[0]}{more} already exist: choose another {option}, or pass "
            "--overwrite to replace them"
        )
    check_writable(folder, option)


@contextlib.contextmanager
def written_whole(path: Path) -> Iterator[Path]:
    """A temporary file beside ``path`` to write, renamed to ``path`` when the block ends well:
    a failure leaves no half-written file, and whatever stood at ``path`` stays. Makes the
    missing folders above ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_table(path: Path, columns: Mapping[str, np.ndarray]) -> None:
    """Rows of ``columns`` (each (N,) or (N, k)) at ``path``, by its suffix (``written_whole``)."""
    path = Path(path)
    writers = {".npy": _write_npy, ".csv": _write_csv, ".parquet": _write_parquet}
    write = writers.get(path.suffix.lower())
    if write is None:
        raise UserInputError(
            f"{path}: tables are written as {', '.join(TABLE_SUFFIXES)}; choose one of those"
        )
    with written_whole(path) as tmp:
        write(tmp, columns)


def parquet_available() -> bool:
    try:
        import pyarrow.parquet  # noqa: F401
    except ImportError:
        return False
    return True


def check_table_suffix(path: Path) -> None:
    """Refuse a table file name before any work: its suffix, and Parquet without pyarrow."""
    suffix = Path(path).suffix.lower()
    if suffix not in TABLE_SUFFIXES:
        raise UserInputError(
            f"{path}: tables are written as {', '.join(TABLE_SUFFIXES)}; choose one of those"
        )
    if suffix == ".parquet" and not parquet_available():
        raise UserInputError(
            "writing .parquet needs pyarrow: pip install pyarrow, or write .csv or .npy"
        )


def _flat(columns: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A column of vectors as one column per coordinate: mean -> mean_0, mean_1, ..."""
    flat: dict[str, np.ndarray] = {}
    for name, values in columns.items():
        if values.ndim == 1:
            flat[name] = values
        else:
            flat.update({f"{name}_{i}": values[:, i] for i in range(values.shape[1])})
    return flat


def _write_npy(path: Path, columns: Mapping[str, np.ndarray]) -> None:
    n = len(next(iter(columns.values())))
    dtype = [(name, values.dtype, values.shape[1:]) for name, values in columns.items()]
    table = np.empty(n, dtype=dtype)
    for name, values in columns.items():
        table[name] = values
    with open(path, "wb") as file:
        np.save(file, table, allow_pickle=False)


def _write_csv(path: Path, columns: Mapping[str, np.ndarray]) -> None:
    flat = _flat(columns)
    with open(path, "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(flat)
        for row in zip(*(values.tolist() for values in flat.values()), strict=True):
            writer.writerow(f"{v:.9g}" if isinstance(v, float) else v for v in row)


def _write_parquet(path: Path, columns: Mapping[str, np.ndarray]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table(_flat(columns)).replace_schema_metadata({"written_by": WRITTEN_BY})
    pq.write_table(table, path)
