"""pyro-vae's SVI step against a hand-written PyTorch VAE step and the tutorial style, side by side.

Contestants take turns (A B C ... C A B ...) in one process so that drifts of the machine hit all
of them alike; each turn times a block of steps, in an order shuffled afresh (from a fixed seed) so
that no contestant always runs first, last or after the same one. The report gives the median over
turns and its ratio to the hand-written PyTorch step, and the tutorial's epoch over pyro-vae's
turn by turn, each pair from one turn, a few seconds apart.

- pyro-vae mc / analytic: ``Trainer.step`` (fused torch Adam; Pyro's Trace_ELBO /
  TraceMeanField_ELBO with the loss kept on the device, inference/objectives.py; from the second
  step on, loss and gradient replayed from a recorded graph, inference/fast/replay.py, its matrix
  products through MKL or oneDNN, whichever times faster here, inference/fast/products.py), the
  path ``pyro-vae train`` takes; ``MKL's products``: the same with every product MKL's, torch's
  default; ``eager``: the same without the recording, Pyro's machinery at every
  step; ``Pyro's ELBO``: eager with Pyro's classes as shipped, which read every site's log-density
  back to the host; ``+jit``: Pyro's JitTrace_ELBO / JitTraceMeanField_ELBO with
  torch Adam, and the latter with its compile cache fixed (see CachedJitTraceMeanField_ELBO).
- pyro-vae stl: ``Trainer.step`` with the path-derivative estimator (inference/objectives.py),
  recorded: mc's step and a second, detached pass of the guide.
- hand-written: the same Encoder and Decoder modules (MLP or, with ``--network conv``, the same
  convolution layers), Bernoulli log-likelihood and closed-form KL written out in torch, torch
  Adam: what a user would write without Pyro.
- tutorial: ``SVI.step`` with ``pyro.optim.Adam`` (one optimizer per parameter) and its
  ``.item()`` every step; for whole epochs also a per-sample ``DataLoader``.

    python benchmarks/training_step.py                  # MNIST-sized (784-400-50, batch 128)
    python benchmarks/training_step.py --shape digits   # 8×8 digits, default network, batch 32
    python benchmarks/training_step.py --network conv   # conv networks (32-64 channels), batch 128
    python benchmarks/training_step.py --compile        # also torch.compile'd networks (slow start)
    python benchmarks/training_step.py --device cuda --batch 1024   # on a GPU, images per second
    python benchmarks/training_step.py --only "pyro-vae mc" "pyro-vae stl"  # and the reference
    python benchmarks/training_step.py --quick          # seconds, for the test suite
"""

import argparse
import random
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import pyro
import pyro.optim
import torch
import torch.nn.functional as F
from pyro import poutine
from pyro.infer import SVI, JitTrace_ELBO, JitTraceMeanField_ELBO, Trace_ELBO, TraceMeanField_ELBO
from torch.utils.data import DataLoader, TensorDataset

from pyro_vae import VAE, DataConfig, TrainConfig, Trainer, load_dataset, make_elbo
from pyro_vae.components.guides import diagonal_parameters

# Pyro's JIT ELBOs are built on torch.jit.trace, which torch 2.15 deprecates with a warning a call.
warnings.filterwarnings("ignore", message=r"`torch\.jit\.trace` is deprecated")

SHARED_DATA = Path(__file__).parents[1].parent / "shared" / "data"


def mnist_sized(quick: bool) -> torch.Tensor:
    if not quick and (SHARED_DATA / "MNIST" / "raw").is_dir():
        data = load_dataset(
            DataConfig(dataset="mnist", data_dir=str(SHARED_DATA), binarize="static")
        )
        return torch.cat([data.train.x, data.val.x, data.test.x])  # all 10,000 images
    return torch.rand(512 if quick else 10_000, 784).bernoulli()


def hand_written_step(vae: VAE, fused: bool = False) -> Callable[[torch.Tensor], torch.Tensor]:
    """The same networks and objective without Pyro: −ELBO with the KL in closed form."""
    optimizer = torch.optim.Adam(vae.parameters(), lr=1e-3, fused=fused)

    def step(x: torch.Tensor) -> torch.Tensor:
        loc, scale = diagonal_parameters(vae.encoder(x))
        z = loc + scale * torch.randn_like(loc)
        logits = vae.decoder(z)
        log_likelihood = -F.binary_cross_entropy_with_logits(logits, x, reduction="sum")
        kl = 0.5 * (loc**2 + scale**2 - 1 - 2 * torch.log(scale)).sum()
        loss = kl - log_likelihood
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.detach()

    return step


PYRO_ELBOS = {"mc": Trace_ELBO, "analytic": TraceMeanField_ELBO}


# The steps ``pyro-vae train`` plans for a run like the one timed (15 epochs of 56,000 images at
# batch 128): long enough for its matrix products' libraries to be chosen by timing
# (inference/fast/products.py), too short for it to compile the step.
PLANNED_STEPS = 15 * 438


def pyro_vae_step(
    vae: VAE,
    estimator: str,
    pyros_elbo: bool = False,
    record_graph: bool = True,
    choose_products: bool = True,
) -> Callable[[torch.Tensor], torch.Tensor]:
    """``Trainer.step`` as a run of PLANNED_STEPS takes it; with ``pyros_elbo``, on Pyro's ELBO
    class as shipped instead of ours (which cannot be recorded: it reads values back to the
    host, so it runs eagerly); without ``choose_products``, every matrix product MKL's."""
    elbo = PYRO_ELBOS[estimator](max_plate_nesting=1) if pyros_elbo else None
    trainer = Trainer(vae, TrainConfig(elbo=estimator), elbo=elbo, record_graph=record_graph)
    if trainer._recorded is not None:
        trainer._recorded.planned_steps = PLANNED_STEPS
        trainer._recorded.choose_products = choose_products
    return trainer.step


class CachedJitTraceMeanField_ELBO(JitTraceMeanField_ELBO):
    """Pyro 1.9.2's JitTraceMeanField_ELBO with its cache fixed. Its ``differentiable_loss`` looks
    for the compiled function under ``_loss_and_surrogate_loss`` but stores it as
    ``_differentiable_loss``, so every call compiles (torch.jit.trace) anew."""

    def differentiable_loss(self, model, guide, *args, **kwargs):
        loss = super().differentiable_loss(model, guide, *args, **kwargs)
        self._loss_and_surrogate_loss = self._differentiable_loss  # what the check looks for
        return loss


JIT_ELBOS = {
    "mc": JitTrace_ELBO,
    "analytic": JitTraceMeanField_ELBO,
    "analytic-fixed": CachedJitTraceMeanField_ELBO,
}


def jit_step(vae: VAE, estimator: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """Pyro's JIT ELBOs compile model and guide with their parameters read from the param store,
    so they take the registered ``vae.model`` and ``vae.guide``.

    Both are bound here, once. The JIT ELBOs key their compiled function on ``id(model)`` and
    ``id(guide)``, and every ``vae.model`` attribute access makes a new bound-method object: passed
    as ``vae.model`` inside the loop, they re-trace (≈20 ms) on every step.
    """
    elbo = JIT_ELBOS[estimator](max_plate_nesting=1, ignore_jit_warnings=True)
    optimizer = torch.optim.Adam(vae.parameters(), lr=1e-3)
    model, guide = vae.model, vae.guide

    def step(x: torch.Tensor) -> torch.Tensor:
        optimizer.zero_grad(set_to_none=True)
        loss = elbo.differentiable_loss(model, guide, x)
        loss.backward()
        optimizer.step()
        return loss.detach()

    return step


def forward_passes(vae: VAE) -> dict[str, Callable[[torch.Tensor], object]]:
    """The loss alone, no backward and no update: where Pyro's own time goes."""
    mc, analytic = make_elbo("mc"), make_elbo("analytic")
    pyro_mc, pyro_analytic = (
        Trace_ELBO(max_plate_nesting=1),
        TraceMeanField_ELBO(max_plate_nesting=1),
    )
    model, guide = vae.generative_model, vae.inference_guide

    def hand_written_loss(x: torch.Tensor) -> torch.Tensor:
        loc, scale = diagonal_parameters(vae.encoder(x))
        z = loc + scale * torch.randn_like(loc)
        log_likelihood = -F.binary_cross_entropy_with_logits(vae.decoder(z), x, reduction="sum")
        return 0.5 * (loc**2 + scale**2 - 1 - 2 * torch.log(scale)).sum() - log_likelihood

    def traces(x: torch.Tensor) -> poutine.Trace:
        guide_trace = poutine.trace(guide).get_trace(x)
        return poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(x)

    return {
        "hand-written PyTorch": hand_written_loss,
        "guide and model traces": traces,
        "pyro-vae mc loss": lambda x: mc.differentiable_loss(model, guide, x),
        "pyro-vae analytic loss": lambda x: analytic.differentiable_loss(model, guide, x),
        "Pyro's Trace_ELBO loss": lambda x: pyro_mc.differentiable_loss(model, guide, x),
        "Pyro's TraceMeanField_ELBO": lambda x: pyro_analytic.differentiable_loss(model, guide, x),
    }


def compiled_networks_step(vae: VAE) -> Callable[[torch.Tensor], torch.Tensor]:
    """pyro-vae's eager step with encoder and decoder through torch.compile (compiled in the
    warm-up): what compiling the networks alone buys against the Python around them."""
    vae.encoder.compile()
    vae.decoder.compile()
    return pyro_vae_step(vae, "mc", record_graph=False)


def dynamo_graphs(vae: VAE, x: torch.Tensor) -> int:
    """How many graphs torch.compile would cut Trace_ELBO's loss into (1 = no graph break)."""
    elbo = Trace_ELBO(max_plate_nesting=1)
    with pyro.validation_enabled(False):  # as in training
        explained = torch._dynamo.explain(
            lambda x: elbo.differentiable_loss(vae.generative_model, vae.inference_guide, x)
        )(x)
    return explained.graph_count


def host_reads(step: Callable[[torch.Tensor], object], x: torch.Tensor) -> dict[str, int]:
    """How often one call of ``step`` reads a tensor back to the host (``.item()``, ``bool()``):
    free on the CPU, a synchronisation each on a GPU."""
    counts = {"item": 0, "bool": 0}
    item, truth = torch.Tensor.item, torch.Tensor.__bool__

    def counted_item(tensor: torch.Tensor) -> object:
        counts["item"] += 1
        return item(tensor)

    def counted_bool(tensor: torch.Tensor) -> bool:
        counts["bool"] += 1
        return truth(tensor)

    step(x)  # the first step validates,
    step(x)  # the second records pyro-vae's graph (inference/fast/replay.py): count the third
    torch.Tensor.item, torch.Tensor.__bool__ = counted_item, counted_bool  # type: ignore
    try:
        step(x)
    finally:
        torch.Tensor.item, torch.Tensor.__bool__ = item, truth  # type: ignore
    return counts


def tutorial_step(vae: VAE) -> Callable[[torch.Tensor], float]:
    svi = SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 1e-3}), Trace_ELBO())
    return svi.step


def build(
    shape: str,
    quick: bool,
    device: torch.device,
    compile_networks: bool = False,
    network_name: str = "mlp",
) -> tuple[torch.Tensor, int, dict[str, Callable], Callable[[str], VAE]]:
    if shape == "mnist":
        x, batch, network = mnist_sized(quick), 128, {"hidden_dims": (400,), "latent_dim": 50}
        image_shape = (1, 28, 28)
    else:
        x = load_dataset(DataConfig(binarize="static")).train.x
        batch, network, image_shape = 32, {}, (1, 8, 8)
    if network_name == "conv":  # the conv default: 32 and 64 channels, 28×28 → 7×7
        network = {"latent_dim": network.get("latent_dim", 8), "network": "conv"}
    x = x.to(device)  # the data live where the model does, as in pyro-vae train
    contestants = {}

    def fresh(name: str) -> VAE:
        pyro.set_rng_seed(0)
        # its own name: each contestant's parameters get their own entries in Pyro's param store
        return VAE(image_shape, likelihood="bernoulli", name=name, **network).to(device)

    contestants["hand-written PyTorch"] = hand_written_step(fresh("hand"))
    # pyro-vae's Trainer uses the fused Adam; this shows what is left of Pyro's own overhead
    contestants["hand-written, fused Adam"] = hand_written_step(fresh("hand_fused"), fused=True)
    for estimator in ("mc", "analytic"):
        contestants[f"pyro-vae {estimator}"] = pyro_vae_step(fresh(estimator), estimator)
        contestants[f"pyro-vae {estimator}, MKL's products"] = pyro_vae_step(
            fresh(f"{estimator}_mkl"), estimator, choose_products=False
        )
        contestants[f"pyro-vae {estimator}, eager"] = pyro_vae_step(
            fresh(f"{estimator}_eager"), estimator, record_graph=False
        )
        contestants[f"pyro-vae {estimator}, Pyro's ELBO"] = pyro_vae_step(
            fresh(f"{estimator}_pyro"), estimator, pyros_elbo=True
        )
        contestants[f"pyro-vae {estimator}+jit"] = jit_step(fresh(f"{estimator}_jit"), estimator)
    contestants["analytic+jit, cache fixed"] = jit_step(fresh("fixed_jit"), "analytic-fixed")
    contestants["pyro-vae stl"] = pyro_vae_step(fresh("stl"), "stl")
    if compile_networks:
        contestants["pyro-vae mc, eager, compiled networks"] = compiled_networks_step(
            fresh("compiled")
        )
    contestants["tutorial SVI.step"] = tutorial_step(fresh("tutorial"))
    return x, batch, contestants, fresh


def synchronize(x: torch.Tensor) -> None:
    """Wait for the device to finish the work queued so far: a GPU runs behind the host."""
    if x.is_cuda:
        torch.cuda.synchronize(x.device)


def shuffled(contestants: dict[str, Callable], turn: int) -> list[str]:
    """The contestants' names in the order of one turn: a fixed-seed shuffle per turn, so that
    what the machine does at some point of every turn (or what one contestant leaves in the
    caches for the next) does not always fall on the same contestant."""
    names = list(contestants)
    random.Random(turn).shuffle(names)
    return names


def time_steps(
    contestants: dict[str, Callable], x: torch.Tensor, batch: int, turns: int, steps: int
) -> dict[str, list[float]]:
    rows = torch.arange(steps * batch, device=x.device) % x.shape[0]  # wraps for big batches
    batches = [x[index] for index in rows.split(batch)]
    for step in contestants.values():  # warm-up: JIT compilation, allocator, caches
        for b in batches[:3]:
            step(b)
    seconds: dict[str, list[float]] = {name: [] for name in contestants}
    for turn in range(turns):
        for name in shuffled(contestants, turn):
            step = contestants[name]
            synchronize(x)
            start = time.perf_counter()
            for b in batches:
                step(b)
            synchronize(x)
            seconds[name].append((time.perf_counter() - start) / steps)
    return seconds


def time_epochs(
    contestants: dict[str, Callable], x: torch.Tensor, batch: int, turns: int
) -> dict[str, list[float]]:
    """Whole epochs over ``x``: tensors indexed by shuffled batches of indices, as pyro-vae and a
    careful hand-written loop do; the tutorial reads a per-sample DataLoader instead."""
    loader = DataLoader(TensorDataset(x.cpu()), batch_size=batch, shuffle=True)
    if x.shape[0] % batch:  # warm-up for the epoch's last, smaller batch (pyro-vae records it)
        for step in contestants.values():
            step(x[: x.shape[0] % batch])
    seconds: dict[str, list[float]] = {name: [] for name in contestants}
    for turn in range(turns):
        for name in shuffled(contestants, turn):
            step = contestants[name]
            synchronize(x)
            start = time.perf_counter()
            if name.startswith("tutorial"):  # batches from host memory, as tutorials load them
                for (images,) in loader:
                    step(images.to(x.device))
            else:
                for index in torch.randperm(x.shape[0], device=x.device).split(batch):
                    step(x[index])
            synchronize(x)
            seconds[name].append(time.perf_counter() - start)
    return seconds


# Run the CLI, then print this process's peak resident memory. VmHWM belongs to the process's
# own address space, which exec replaces; getrusage's maxrss would also count the forked copy of
# the (large) benchmark process that existed before the exec.
# The app, not cli.main, which ends the process at once (see cli._exit_now).
PEAK_MEMORY_CHILD = """
import runpy, sys
sys.argv = sys.argv[1:]
try:
    runpy.run_path(sys.argv[0], run_name="cli")["app"]()
except SystemExit:
    pass
status = open("/proc/self/status").read()
print(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM")))
"""


def peak_memory_of_a_training_run(quick: bool, device: torch.device) -> float:
    """Peak resident memory (MiB) of ``cli.py train`` for one MNIST-sized epoch (Linux)."""
    data = ["--device", device.type]
    if not quick and (SHARED_DATA / "MNIST" / "raw").is_dir():
        data += ["--dataset", "mnist", "--data-dir", str(SHARED_DATA)]
    cli = Path(__file__).parents[1] / "cli.py"
    with tempfile.TemporaryDirectory() as folder:
        result = subprocess.run(
            [
                sys.executable,
                "-c",
                PEAK_MEMORY_CHILD,
                str(cli),
                "train",
                "--out",
                f"{folder}/run",
                "--epochs",
                "1",
                "--hidden-dims",
                "400",
                "--latent-dim",
                "50",
                "--likelihood",
                "bernoulli",
                "--binarize",
                "static",
                *data,
            ],
            check=True,
            capture_output=True,
            text=True,
        )
    return int(result.stdout.split()[-1]) / 1024  # VmHWM is in kB


def report(title: str, seconds: dict[str, list[float]], unit: float, label: str) -> dict:
    floor = statistics.median(seconds["hand-written PyTorch"])
    print(f"{title}\n{'contestant':<40}{label:>16}{'× hand-written':>16}")
    medians = {}
    for name, values in seconds.items():
        medians[name] = statistics.median(values)
        print(f"{name:<40}{medians[name] * unit:>16.3f}{medians[name] / floor:>16.2f}")
    return medians


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shape", choices=["mnist", "digits"], default="mnist")
    parser.add_argument(
        "--network", choices=["mlp", "conv"], default="mlp", help="the networks of every contestant"
    )
    parser.add_argument("--turns", type=int, default=15)
    parser.add_argument("--steps", type=int, default=20, help="steps timed in one turn")
    parser.add_argument("--epoch-turns", type=int, default=11, help="whole epochs per contestant")
    parser.add_argument(
        "--compile", action="store_true", help="also time torch.compile'd encoder and decoder"
    )
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--batch", type=int, help="batch size (default: 128 MNIST, 32 digits)")
    parser.add_argument(
        "--only", nargs="+", metavar="NAME", help="time these contestants (and the reference)"
    )
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    turns, steps = (2, 3) if args.quick else (args.turns, args.steps)
    device = torch.device(args.device)
    x, batch, contestants, fresh = build(args.shape, args.quick, device, args.compile, args.network)
    if args.only:
        unknown = set(args.only) - set(contestants)
        if unknown:
            parser.error(f"no contestant {sorted(unknown)}: choose from {list(contestants)}")
        keep = {"hand-written PyTorch", *args.only}  # every ratio is to it
        contestants = {name: step for name, step in contestants.items() if name in keep}
    batch = args.batch or batch
    seconds = time_steps(contestants, x, batch, turns, steps)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(
        f"{args.shape}, {args.network}: batch {batch}, {x.shape[1]} dimensions, {len(x)} images, "
        f"{where}, "
        f"{torch.get_num_threads()} threads, torch {torch.__version__}, pyro {pyro.__version__}"
    )
    medians = report(f"training step ({turns} turns of {steps} steps)", seconds, 1e3, "ms/step")
    with pyro.validation_enabled(False):  # as in Trainer.step after its first step
        forward = time_steps(forward_passes(fresh("forward")), x, batch, turns, steps)
    report("loss only, no backward or update", forward, 1e3, "ms")
    if args.compile:
        print(f"torch.compile graphs in Trace_ELBO's loss: {dynamo_graphs(fresh('dynamo'), x)}")
    for estimator in ("mc", "analytic"):
        for pyros_elbo in (False, True):
            step = pyro_vae_step(fresh(f"reads_{estimator}"), estimator, pyros_elbo)
            which = ", Pyro's ELBO" if pyros_elbo else ""
            print(
                f"host reads in one pyro-vae {estimator}{which} step: {host_reads(step, x[:batch])}"
            )
    if args.shape == "mnist":
        epochs = time_epochs(contestants, x, batch, 1 if args.quick else args.epoch_turns)
        per_epoch = report("whole epoch (median over turns)", epochs, 1.0, "s/epoch")
        for name, epoch_seconds in per_epoch.items():
            print(f"{name:<40}{len(x) / epoch_seconds:>16,.0f} images/s")
        tutorial = epochs.get("tutorial SVI.step")
        for estimator in ("mc", "analytic") if tutorial else ():
            ours = epochs[f"pyro-vae {estimator}"]
            ratios = [t / o for t, o in zip(tutorial, ours, strict=True)]
            print(
                f"tutorial epoch ÷ pyro-vae {estimator} epoch, turn by turn: median "
                f"{statistics.median(ratios):.2f}, {min(ratios):.2f}–{max(ratios):.2f} "
                f"over {len(ratios)} turns"
            )
        peak = peak_memory_of_a_training_run(args.quick, device)
        print(f"peak RSS of a one-epoch training run: {peak:.0f} MiB")
    return medians


if __name__ == "__main__":
    main()
