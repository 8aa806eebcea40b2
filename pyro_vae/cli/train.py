"""The ``train`` and ``experiment`` commands: they parse options, call the library and show what
happened. ``train``'s options come from the configuration's declarations (options.py makes them,
configure.py turns them into a run's configuration); the commands on a trained run are in runs.py
and use.py, what they all share in common.py.
"""

import logging
import subprocess
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from pyro_vae import TrainingDiverged, UserInputError, resume_run, train_run
from pyro_vae.cli.common import app, choices, reports_user_errors, set_debug
from pyro_vae.cli.configure import resumed_options, run_config, run_directory
from pyro_vae.cli.options import command_line, explicit_options, train_options
from pyro_vae.cli.training import summarise, training
from pyro_vae.inference.distributed import Replicas


@app.callback()
def global_options(
    debug: Annotated[
        bool,
        typer.Option(
            "--debug",
            envvar="PYRO_VAE_DEBUG",
            help="Show the full traceback of every error, for bug reports.",
        ),
    ] = False,
) -> None:
    set_debug(debug)
    try:
        replicas = Replicas.from_environment()
    except UserInputError as error:
        typer.echo(f"Error: {error}", err=True)
        raise typer.Exit(2) from None
    # The library logs what the user should know (such as which split of the data it uses);
    # show it on stderr, resolved per invocation so that a test runner's stderr receives it.
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("Note: %(message)s"))
    library_log = logging.getLogger("pyro_vae")
    library_log.handlers = [handler]
    # Under torchrun, rank 0 speaks for all the processes; the others report only their errors.
    library_log.setLevel(logging.INFO if replicas.is_main else logging.ERROR)
    library_log.propagate = False


@app.command()
@reports_user_errors
@train_options
def train(ctx: typer.Context, **given: Any) -> None:
    """Train a VAE with SVI and write a run directory (checkpoint, metrics, pictures).

    Ctrl-C stops after the current step and saves a checkpoint; --resume RUN continues it.
    Started by torchrun (torchrun --nproc_per_node=N cli.py train ...), N processes train one
    model data-parallel; --batch-size is then the batch of all of them together.
    """
    replicas = Replicas.from_environment()
    explicit = explicit_options(ctx)
    watching = (replicas, given["checkpoint_every"], given["tensorboard"])
    if given["resume"] is not None:
        changes, moved = resumed_options(given, explicit)
        with training(*watching) as (hooks, stops):
            result = resume_run(
                given["resume"],
                changes,
                hooks,
                replicas,
                data_path=moved.get("path"),
                data_dir=moved.get("data_dir"),
            )
        return summarise(result, replicas, stops, given["tensorboard"])
    config, file_names = run_config(given, explicit)
    out = run_directory(given["out"], config, replicas)
    with training(*watching) as (hooks, stops), file_names:
        try:
            result = train_run(config, out, given["overwrite"], hooks, replicas)
        except TrainingDiverged as error:
            if error.resumable or error.lower_lr is None:
                raise
            again = command_line(ctx, {"lr": error.lower_lr, "out": out, "overwrite": False})
            raise UserInputError(f"{error.marked}: {again}") from None
    summarise(result, replicas, stops, given["tensorboard"])


# The commands that read a trained run, declared on the same app after train (--help's order).

EXPERIMENTS = Path(__file__).resolve().parents[2] / "experiments"  # in a source checkout
ExperimentName = choices(
    "ExperimentName",
    [
        "estimators",
        "priors",
        "posterior_collapse",
        "rate_distortion",
        "networks",
        "guides",
        "semi_supervised",
        "label_weight",
        "importance_weighted",
        "conditional",
        "anomaly",
    ],
)


# the script's own options (--seeds 0 1, --epochs 5, ...) pass through to it untouched
@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
@reports_user_errors
def experiment(
    context: typer.Context,
    name: Annotated[ExperimentName, typer.Argument(help="Which script of experiments/ to run.")],
    quick: Annotated[
        bool, typer.Option("--quick", help="A tiny budget that only checks the script runs.")
    ] = False,
) -> None:
    """Run an experiment from experiments/, which writes its report under experiments/results/.

    Options after NAME that are not this command's go to the script: `pyro-vae experiment
    priors --seeds 0 --epochs 5`; `python experiments/NAME.py --help` lists them.
    """
    script = EXPERIMENTS / f"{name.value}.py"
    if not script.is_file():
        raise UserInputError(
            "the experiments ship with the source checkout, not the installed package: "
            "run this from a clone of pyro-vae (python cli.py experiment ...)"
        )
    command = [sys.executable, str(script), *(["--quick"] if quick else []), *context.args]
    raise typer.Exit(subprocess.run(command, check=False).returncode)
