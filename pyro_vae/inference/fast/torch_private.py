"""Private fields of torch's that the slower parts of the package need, kept here with the fast
paths so that a torch release which drops one breaks this layer alone."""

from typing import Any


def set_last_lr(scheduler: Any, rates: list[float]) -> None:
    """Make ``scheduler.get_last_lr()`` (and its ``state_dict``) report ``rates``, after the
    rates were set on its optimizer by hand (a cosine schedule extended on resume). torch keeps
    them in a private field; a release without it has nothing else to update."""
    if hasattr(scheduler, "_last_lr"):
        scheduler._last_lr = rates
