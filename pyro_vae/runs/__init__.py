"""Layer 5, a run as the user sees it: its directory and checkpoints, training and resuming it,
its budget, pictures and reports, and putting a trained run to use (``load_run``, export)."""
