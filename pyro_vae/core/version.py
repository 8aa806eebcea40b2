"""The release, one place: the package, its checkpoints and ``pip`` (pyproject.toml) read it."""

__version__ = "0.1.0"
