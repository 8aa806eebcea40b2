"""``train --config FILE``: a run's configuration read from a file, section by section.

The file's keys are the configuration's fields (core/*_config.py), so a run's own ``config.json``
serves as well as a TOML file written by hand.
"""

import json
import os
import sys
from dataclasses import fields
from typing import Any

from pyro_vae.core.config import SECTIONS
from pyro_vae.core.errors import UserInputError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib


def read_config_file(path: str) -> dict[str, dict[str, Any]]:
    """The sections (``model``, ``data``, ``train``) of a run's ``config.json``, or of a JSON or
    TOML file of the same keys, each section optional; checked for unknown sections and keys.

    A run's ``config.json`` holds them under ``"config"``, beside the run's record.
    """
    if os.path.isdir(path) and os.path.isfile(os.path.join(path, "config.json")):
        path = os.path.join(path, "config.json")  # a run directory: its record
    try:
        if path.endswith(".toml"):
            with open(path, "rb") as file:
                values = tomllib.load(file)
        else:
            with open(path, encoding="utf-8") as file:
                values = json.load(file)
    except FileNotFoundError:
        raise UserInputError(f"--config {path}: no such file") from None
    except IsADirectoryError:
        raise UserInputError(f"--config {path} is a folder: give its config.json") from None
    except (ValueError, UnicodeDecodeError) as error:  # JSONDecodeError and TOMLDecodeError
        kind = "TOML" if path.endswith(".toml") else "JSON (or name a .toml file)"
        reason = str(error).splitlines()[0]
        raise UserInputError(f"--config {path} is not valid {kind}: {reason}") from None
    if isinstance(values, dict) and isinstance(values.get("config"), dict):
        values = values["config"]  # a run's record
    if not isinstance(values, dict):
        raise UserInputError(f"--config {path} must hold sections {', '.join(SECTIONS)}")
    unknown = sorted(set(values) - set(SECTIONS))
    if unknown:
        raise UserInputError(
            f"--config {path}: unknown sections {unknown}; known: {list(SECTIONS)}"
        )
    for name, section in values.items():
        if not isinstance(section, dict):
            raise UserInputError(f"--config {path}: [{name}] must be a table of keys")
        known = {f.name for f in fields(SECTIONS[name])}
        extra = sorted(set(section) - known)
        if extra:
            raise UserInputError(
                f"--config {path}: unknown keys {extra} in [{name}]; known: {sorted(known)}"
            )
    return values
