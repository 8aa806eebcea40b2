"""One epoch of semi-supervised M2 (Kingma et al., 2014): Pyro's own example against pyro-vae.

The papers' MNIST split: the first 50,000 training images, of which 3,000 keep their labels
(``choose_labelled``: balanced by class, seed 0, the same rows for both contestants); the last
10,000 are pyro-vae's validation images. Both see the same binary images: statically binarized,
each pixel drawn once from Bernoulli(grey value) with a fixed seed (``DataConfig(binarize=
"static")``). One hidden layer of 500, latent 50, batch 200, Bernoulli likelihood, the class y
of an unlabelled image summed out by ``TraceEnum_ELBO``'s parallel enumeration.

- **Pyro's example**: ``examples/vae/ss_vae_M2.py`` (with ``utils/custom_mlp.py`` and
  ``utils/mnist_cached.py``) as Pyro 1.8-1.9 ship it, written compactly below: Softplus MLPs,
  q(y|x) a softmax, q(z|x,y)'s scale an exp, a sigmoid decoder; ``config_enumerate(guide,
  "parallel", expand=True)``, ``TraceEnum_ELBO(max_plate_nesting=1)``; the auxiliary loss
  ``model_classify``/``guide_classify`` (multiplier 46) as a second ``SVI`` with ``Trace_ELBO``;
  ``pyro.optim.Adam`` with the example's defaults (lr 0.00042, betas (0.9, 0.999)); its
  ``run_inference_for_epoch``: shuffled per-sample ``DataLoader``s, a supervised batch every
  ``int(50,000 / 3,000)`` = 16th batch until the 15 run out, every batch through both
  ``SVI.step``; Pyro's argument checks on at every step, its default, as the example runs.
- **pyro-vae**: ``SemiSupervisedVAE`` (its own ReLU MLPs, logits rather than probabilities)
  trained by ``SemiSupervisedTrainer.train_epoch`` (lr 0.00042 too, α its default, torch's
  fused Adam): 235 steps, each 200 unlabelled images beside 200 labelled, replayed from a recorded
  graph after the first, then the validation bound U(x) and error. Its steps and its validation
  are timed apart (``epoch_seconds``, ``validation_seconds``) as well as the whole call. "pyro-vae
  eager" (``record_graph=False``) runs beside it, "pyro-vae, MKL's products" (the recorded step
  with every matrix product torch's default, MKL's, where pyro-vae's times MKL against oneDNN
  per product: inference/fast/products.py), and with ``--compile`` "pyro-vae --compile"
  (its step compiled by Inductor; its first timed epoch includes the compile).

An epoch is each one's own: the example's 250 iterations pass over 47,000 unlabelled and 3,000
labelled images; pyro-vae's 235 steps pass over the 47,000 unlabelled and draw 200 labelled
images at each (about 10% more decoder rows in all: an unlabelled image is decoded once per
class). The contestants take turns in one process, alternating (A B, B A, ...), each turn one
more epoch of the same model, after one untimed epoch of each on 1,000 images, 100 of them
labelled (imports, allocator, Pyro's caches). The report gives each one's median and its ratio
to the example's, then the floor pyro-vae's matrix products set: their FLOP an epoch (torch's
``FlopCounterMode`` over one eager step) at the machine's best rate for M2's largest products
(``gemm.py``'s timing), against the example's epoch.

    python benchmarks/m2_epoch.py                      # 3 turns each, MNIST from ../shared/data
    python benchmarks/m2_epoch.py --turns 5 --data-dir DIR
    python benchmarks/m2_epoch.py --compile            # and the step compiled by Inductor
    python benchmarks/m2_epoch.py --jit                # and the example with its --jit
    python benchmarks/m2_epoch.py --bf16               # and pyro-vae's products in bfloat16
    python benchmarks/m2_epoch.py --bf16 --compile     # each lever, and both at once
    python benchmarks/m2_epoch.py --quick              # seconds: random images, 1 turn
"""

import argparse
import os
import statistics
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions.util import broadcast_shape
from pyro.infer import (
    SVI,
    JitTraceEnum_ELBO,
    Trace_ELBO,
    TraceEnum_ELBO,
    config_enumerate,
)
from pyro.optim import Adam
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from pyro_vae import DataConfig, TrainConfig, load_dataset
from pyro_vae.data.datasets import Dataset, Split
from pyro_vae.data.labels import choose_labelled, one_hot
from pyro_vae.inference.m2_trainer import SemiSupervisedTrainer
from pyro_vae.models.m2 import SemiSupervisedVAE

# Pyro's JIT ELBOs (--jit) are built on torch.jit.trace, which torch 2.15 deprecates with a
# warning a call.
warnings.filterwarnings("ignore", message=r"`torch\.jit\.trace` is deprecated")

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
HIDDEN, LATENT, BATCH, LABELS = 500, 50, 200, 3000
# The example's defaults (-lr 0.00042, -b1 0.9) and the -alm of its example run; pyro-vae takes
# the same rate, so that both train alike (the rate costs nothing either way).
LEARNING_RATE, BETA_1, AUX_LOSS_MULTIPLIER = 0.00042, 0.9, 46.0
SEED = 0
EXAMPLE = "Pyro's example"


# Pyro's example, compactly: examples/vae/ss_vae_M2.py and utils/custom_mlp.py


class Exp(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.exp(x)


class MLP(nn.Module):
    """custom_mlp.MLP as the example builds it: its inputs concatenated, broadcast against each
    other (parallel enumeration gives y a dimension of its own), Softplus hidden layers
    initialised N(0, 0.001²), then a linear head per output, each with its activation."""

    def __init__(
        self, input_size: int, hidden: tuple[int, ...], heads: list[tuple[int, nn.Module | None]]
    ):
        super().__init__()
        layers: list[nn.Module] = []
        for size in hidden:
            linear = nn.Linear(input_size, size)
            linear.weight.data.normal_(0, 0.001)  # custom_mlp.py: "for numerical stability"
            linear.bias.data.normal_(0, 0.001)
            layers += [linear, nn.Softplus()]
            input_size = size
        self.body = nn.Sequential(*layers)
        self.heads = nn.ModuleList(
            nn.Sequential(nn.Linear(input_size, size), *([] if act is None else [act]))
            for size, act in heads
        )

    def forward(self, inputs: torch.Tensor | list[torch.Tensor]) -> torch.Tensor | list:
        if isinstance(inputs, list):
            shape = (*broadcast_shape(*(t.shape[:-1] for t in inputs)), -1)
            inputs = torch.cat([t.expand(shape) for t in inputs], dim=-1)
        hidden = self.body(inputs)
        outputs = [head(hidden) for head in self.heads]
        return outputs[0] if len(outputs) == 1 else outputs


class SSVAE(nn.Module):
    """The example's SSVAE, y one-hot throughout: p(z) = N(0, I), p(y) = Cat(1/K),
    p(x | y, z) = Bernoulli(decoder(z, y)); q(y | x) = Cat(encoder_y(x)),
    q(z | x, y) = N(encoder_z(x, y)). ``name`` is its ``pyro.module`` name (the example's is
    "ss_vae"): the warm-up's copy and the timed one must not share Pyro's param store."""

    def __init__(
        self, name: str, input_size: int, output_size: int, z_dim: int, hidden: tuple[int, ...]
    ):
        super().__init__()
        self.name, self.output_size, self.z_dim = name, output_size, z_dim
        self.aux_loss_multiplier = AUX_LOSS_MULTIPLIER
        self.encoder_y = MLP(input_size, hidden, [(output_size, nn.Softmax(dim=1))])
        self.encoder_z = MLP(input_size + output_size, hidden, [(z_dim, None), (z_dim, Exp())])
        self.decoder = MLP(z_dim + output_size, hidden, [(input_size, nn.Sigmoid())])

    def model(self, xs: torch.Tensor, ys: torch.Tensor | None = None) -> torch.Tensor:
        pyro.module(self.name, self)
        batch_size = xs.size(0)
        options = {"dtype": xs.dtype, "device": xs.device}
        with pyro.plate("data"):
            prior_loc = torch.zeros(batch_size, self.z_dim, **options)
            prior_scale = torch.ones(batch_size, self.z_dim, **options)
            zs = pyro.sample("z", dist.Normal(prior_loc, prior_scale).to_event(1))
            alpha_prior = torch.ones(batch_size, self.output_size, **options) / self.output_size
            ys = pyro.sample("y", dist.OneHotCategorical(alpha_prior), obs=ys)
            loc = self.decoder([zs, ys])
            pyro.sample("x", dist.Bernoulli(loc, validate_args=False).to_event(1), obs=xs)
            return loc

    def guide(self, xs: torch.Tensor, ys: torch.Tensor | None = None) -> None:
        with pyro.plate("data"):
            if ys is None:
                alpha = self.encoder_y(xs)
                ys = pyro.sample("y", dist.OneHotCategorical(alpha))
            loc, scale = self.encoder_z([xs, ys])
            pyro.sample("z", dist.Normal(loc, scale).to_event(1))

    def model_classify(self, xs: torch.Tensor, ys: torch.Tensor | None = None) -> None:
        """The auxiliary loss: α' · log q(y | x) of the labelled batch (nothing when unlabelled:
        the example still takes this SVI step, an Adam step on zeroed gradients)."""
        pyro.module(self.name, self)
        with pyro.plate("data"):
            if ys is not None:
                alpha = self.encoder_y(xs)
                with pyro.poutine.scale(scale=self.aux_loss_multiplier):
                    pyro.sample("y_aux", dist.OneHotCategorical(alpha), obs=ys)

    def guide_classify(self, xs: torch.Tensor, ys: torch.Tensor | None = None) -> None:
        pass


def run_inference_for_epoch(
    data_loaders: dict[str, DataLoader], losses: list[SVI], periodic_interval_batches: int
) -> tuple[list[float], list[float]]:
    """The example's epoch: every batch of both loaders, a supervised one at each
    ``periodic_interval_batches``-th until they run out, each through every loss."""
    sup_batches, unsup_batches = len(data_loaders["sup"]), len(data_loaders["unsup"])
    epoch_losses_sup, epoch_losses_unsup = [0.0] * len(losses), [0.0] * len(losses)
    sup_iter, unsup_iter = iter(data_loaders["sup"]), iter(data_loaders["unsup"])
    ctr_sup = 0
    for i in range(sup_batches + unsup_batches):
        is_supervised = i % periodic_interval_batches == 1 and ctr_sup < sup_batches
        if is_supervised:
            xs, ys = next(sup_iter)
            ctr_sup += 1
        else:
            xs, ys = next(unsup_iter)
        for loss_id, loss in enumerate(losses):
            if is_supervised:
                epoch_losses_sup[loss_id] += loss.step(xs, ys)
            else:
                epoch_losses_unsup[loss_id] += loss.step(xs)
    return epoch_losses_sup, epoch_losses_unsup


# the contestants


@dataclass
class Contestant:
    name: str
    run_epoch: Callable[[], dict[str, float]]  # one epoch; its seconds, by what was timed
    work: str  # what its epoch does
    model: nn.Module | None = None  # what it trains (experiments/semi_supervised.py scores it)


def pyros_example(
    data: Dataset,
    labels: int,
    batch: int,
    name: str = "ss_vae",
    jit: bool = False,
    seed: int = SEED,
) -> Contestant:
    """The example; ``jit`` as its ``--jit`` flag: JitTraceEnum_ELBO for the ELBO."""
    pyro.set_rng_seed(seed)
    x, y = data.train.x, one_hot(data.train.labels, data.num_classes)
    ss_vae = SSVAE(name, x.shape[1], data.num_classes, LATENT, (HIDDEN,))
    optimizer = Adam({"lr": LEARNING_RATE, "betas": (BETA_1, 0.999)})
    guide = config_enumerate(ss_vae.guide, "parallel", expand=True)
    enumerated = JitTraceEnum_ELBO if jit else TraceEnum_ELBO
    elbo = enumerated(max_plate_nesting=1, strict_enumeration_warning=False)
    # The auxiliary loss stays Trace_ELBO under --jit: its JitTrace_ELBO fails on the unlabelled
    # batches, where model_classify has no sample site and the traced loss is not a tensor.
    losses = [
        SVI(ss_vae.model, guide, optimizer, loss=elbo),
        SVI(ss_vae.model_classify, ss_vae.guide_classify, optimizer, loss=Trace_ELBO()),
    ]
    labelled = choose_labelled(data.train.labels, labels, seed)  # the rows pyro-vae keeps
    unlabelled = torch.ones(len(x), dtype=torch.bool)
    unlabelled[labelled] = False
    # mnist_cached.py: cached tensors read one image at a time by a shuffling DataLoader; the
    # unlabelled images' labels are NaN placeholders
    nan_labels = torch.full((int(unlabelled.sum()), 1), float("nan"))
    loaders = {
        "sup": DataLoader(TensorDataset(x[labelled], y[labelled]), batch, shuffle=True),
        "unsup": DataLoader(TensorDataset(x[unlabelled], nan_labels), batch, shuffle=True),
    }
    # "if sup_num is 3000, we would have every 16th = int(50000/3000) batch supervised"
    periodic_interval_batches = int(len(x) / len(labelled))

    def run_epoch() -> dict[str, float]:
        start = time.perf_counter()
        run_inference_for_epoch(loaders, losses, periodic_interval_batches)
        return {"epoch": time.perf_counter() - start}

    sup, unsup = len(loaders["sup"]), len(loaders["unsup"])
    work = f"{sup + unsup} batches ({sup} supervised, {unsup} not), two SVI.step each"
    return Contestant(EXAMPLE + (" --jit" if jit else ""), run_epoch, work, ss_vae)


def pyro_vae(
    data: Dataset,
    labels: int,
    batch: int,
    name: str,
    label: str = "pyro-vae",
    record_graph: bool = True,
    compile: bool | None = None,
    matmul_precision: str = "highest",
    choose_products: bool = True,
) -> Contestant:
    pyro.set_rng_seed(SEED)
    vae = SemiSupervisedVAE(
        data.image_shape,
        LATENT,
        (HIDDEN,),
        likelihood="bernoulli",
        num_classes=data.num_classes,
        name=name,  # its own entries in Pyro's param store, beside the other contestants'
    )
    config = TrainConfig(
        labels=labels,
        batch_size=batch,
        epochs=1,
        lr=LEARNING_RATE,
        seed=SEED,
        compile=compile,
        matmul_precision=matmul_precision,
    )
    trainer = SemiSupervisedTrainer(vae, config, data, record_graph=record_graph)
    if trainer._recorded is not None:  # without it, every matrix product MKL's
        trainer._recorded.choose_products = choose_products

    def run_epoch() -> dict[str, float]:
        start = time.perf_counter()
        trainer.train_epoch(data)
        return {
            "epoch": time.perf_counter() - start,
            "steps": trainer.epoch_seconds[-1],
            "validation": trainer.validation_seconds[-1],
        }

    steps = -(-len(trainer.unlabelled_rows) // batch)
    work = (
        f"{steps} steps of {batch} unlabelled + {min(batch, labels)} labelled images, then "
        f"validation on {len(data.val):,}"
    )
    return Contestant(label, run_epoch, work)


def contestants(
    data: Dataset,
    labels: int,
    batch: int,
    tag: str = "",
    compiled: bool = False,
    jit: bool = False,
    bfloat16: bool = False,
) -> list[Contestant]:
    """Pyro's example, pyro-vae (recorded, and eager), and if asked pyro-vae --compile, the
    example with its --jit and pyro-vae with bfloat16 products."""
    found = [
        pyros_example(data, labels, batch, f"ss_vae{tag}"),
        pyro_vae(data, labels, batch, f"m2{tag}"),
        pyro_vae(data, labels, batch, f"m2_eager{tag}", "pyro-vae eager", record_graph=False),
    ]
    if torch.backends.mkldnn.is_available():  # the products' choice against torch's default
        name, label = f"m2_mkl{tag}", "pyro-vae, MKL's products"
        found.append(pyro_vae(data, labels, batch, name, label, choose_products=False))
    if compiled:  # its first timed epoch compiles its graph (the warm-up's has other shapes)
        found.append(
            pyro_vae(data, labels, batch, f"m2_compiled{tag}", "pyro-vae --compile", compile=True)
        )
    if jit:
        found.append(pyros_example(data, labels, batch, f"ss_vae_jit{tag}", jit=True))
    if bfloat16:
        name, label = f"m2_bf16{tag}", "pyro-vae --matmul-precision medium"
        found.append(pyro_vae(data, labels, batch, name, label, matmul_precision="medium"))
    if bfloat16 and compiled:  # both levers at once
        name, label = f"m2_both{tag}", "pyro-vae --compile --matmul-precision medium"
        found.append(
            pyro_vae(data, labels, batch, name, label, compile=True, matmul_precision="medium")
        )
    return found


# data


def synthetic(num_train: int, num_held_out: int, num_classes: int = 10) -> Dataset:
    """Random binary 28×28 images labelled 0, 1, ..., K−1 in turn: MNIST's shapes, no files."""
    generator = torch.Generator().manual_seed(SEED)

    def split(n: int) -> Split:
        return Split(torch.rand(n, 784, generator=generator) < 0.5, torch.arange(n) % num_classes)

    train, held_out = split(num_train), split(num_held_out)
    return Dataset(
        "random images", (1, 28, 28), train, held_out, held_out, "static", num_classes=num_classes
    )


def head(data: Dataset, n: int) -> Dataset:
    """The first ``n`` training images and a fifth as many validation images (the warm-up's)."""
    train = Split(data.train.stored[:n], data.train.labels[:n])
    val = Split(data.val.stored[: n // 5], data.val.labels[: n // 5])
    return Dataset(
        data.name, data.image_shape, train, val, val, data.binarize, num_classes=data.num_classes
    )


def machine() -> str:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        cpu = next(line.split(":", 1)[1].strip() for line in lines if line.startswith("model name"))
    except (OSError, StopIteration):  # not Linux, or an unusual cpuinfo
        cpu = "CPU model unknown"
    return (
        f"{cpu}, {os.cpu_count()} CPUs, {torch.get_num_threads()} torch threads, "
        f"torch {torch.__version__}, pyro {pyro.__version__}"
    )


# timing


def take_turns(racers: list[Contestant], turns: int) -> dict[str, list[dict[str, float]]]:
    """Each contestant's epochs, the order rotated every turn (A B, B A, ...) so that none
    always runs first or after the same one."""
    seconds: dict[str, list[dict[str, float]]] = {racer.name: [] for racer in racers}
    for turn in range(turns):
        shift = turn % len(racers)
        for racer in racers[shift:] + racers[:shift]:
            seconds[racer.name].append(racer.run_epoch())
    return seconds


def report(seconds: dict[str, list[dict[str, float]]]) -> dict[str, float]:
    """Print each timed part's median, its turns and its ratio to the example's epoch; return
    the medians, named "<contestant>" for a whole epoch (call) and "<contestant> <part>"."""
    floor = seconds[EXAMPLE]
    rows = {}
    for name, epochs in seconds.items():
        for part in epochs[0]:
            rows[name if part == "epoch" else f"{name} {part}"] = (
                [epoch[part] for epoch in epochs],
                [epoch[part] / other["epoch"] for epoch, other in zip(epochs, floor, strict=True)],
            )
    print(
        f"{'contestant (seconds an epoch)':<56}{'median':>9}  {'turns':<26}"
        f"{'× example':>10}{'turn by turn':>14}"
    )
    medians = {}
    for row, (values, ratios) in rows.items():
        medians[row] = statistics.median(values)
        turns = ", ".join(f"{value:.2f}" for value in values)
        ratio = medians[row] / medians[EXAMPLE]
        print(
            f"{row:<56}{medians[row]:>9.3f}  {turns:<26}{ratio:>10.2f}"
            f"{statistics.median(ratios):>14.2f}"
        )
    print(
        "(× example: ratio of the medians; turn by turn: median over turns of the ratio to the "
        "example's epoch of the same turn. pyro-vae's row is its whole train_epoch call; "
        "'steps' leaves out its validation, which the example's epoch does not do.)"
    )
    return medians


def products_floor(
    data: Dataset, labels: int, batch: int, example_epoch: float, repeats: int = 20
) -> float:
    """Print the least time pyro-vae's steps could take an epoch: their matrix products alone, at
    this machine's best float32 rate for M2's largest products (the decoder's last layer on every
    class's codes, forward and both gradients; MKL or oneDNN, operands in cache, gemm.py's
    timing in 7 turns of ``repeats`` calls), against the example's epoch; return one step's FLOP.
    A lower bound: every product at the rate of the largest, nothing else done. The FLOP come from
    torch's FlopCounterMode over one eager step (the same products as the recorded one, backward
    included), times the steps of an epoch."""
    from gemm import kernels, products, rate
    from torch.utils.flop_counter import FlopCounterMode

    pyro.set_rng_seed(SEED)
    vae = SemiSupervisedVAE(
        data.image_shape, LATENT, (HIDDEN,), likelihood="bernoulli",
        num_classes=data.num_classes, name="m2_floor",
    )  # fmt: skip
    config = TrainConfig(labels=labels, batch_size=batch, epochs=1, lr=LEARNING_RATE, seed=SEED)
    trainer = SemiSupervisedTrainer(vae, config, data, record_graph=False)
    index = trainer.unlabelled_rows[:batch]
    with FlopCounterMode(display=False) as counter:
        trainer._semi_supervised_step(data, index)
    steps = -(-len(trainer.unlabelled_rows) // batch)
    step_flop = counter.get_total_flops()
    flop = step_flop * steps
    best = 0.0
    for _, m, k, n in products(batch * data.num_classes, [(HIDDEN, data.data_dim)]):
        for kernel, run in kernels(m, k, n).items():
            if kernel not in ("MKL", "oneDNN"):  # float32 in torch: not XLA's, not bfloat16's
                continue
            run()  # oneDNN builds its primitive on the first call
            timings = [rate(run, 2.0 * m * k * n, repeats) for _ in range(7)]
            best = max(best, statistics.median(timings))
    seconds = flop / (best * 1e9)
    print(
        f"floor: pyro-vae's steps multiply {flop / 1e12:.2f} TFLOP of matrices an epoch ({steps} "
        f"steps, forward and backward); at {best:.0f} GFLOP/s, this machine's best rate for its "
        f"largest products, that takes {seconds:.2f} s alone: {seconds / example_epoch:.2f}× the "
        f"example's epoch ({example_epoch:.2f} s; 3× faster would be {example_epoch / 3:.2f} s), "
        "before any other work of its steps and its validation"
    )
    return step_flop


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--turns", type=int, default=3, help="timed epochs of each contestant")
    parser.add_argument("--data-dir", type=Path, default=SHARED_DATA, help="holds MNIST/raw/")
    parser.add_argument(
        "--quick", action="store_true", help="400 random images, batch 50, 50 labels, 1 turn"
    )
    parser.add_argument(
        "--compile", action="store_true", help="also pyro-vae with its step compiled by Inductor"
    )
    parser.add_argument(
        "--jit", action="store_true", help="also Pyro's example with its --jit (JIT ELBOs)"
    )
    parser.add_argument(
        "--bf16",
        action="store_true",
        help="also pyro-vae with --matmul-precision medium (bfloat16 products, float32 sums)",
    )
    args = parser.parse_args(argv)
    if args.quick:
        data, labels, batch, turns = synthetic(400, 100), 50, 50, 1
    else:
        config = DataConfig(
            dataset="mnist", data_dir=str(args.data_dir), split="paper", binarize="static"
        )
        data, labels, batch, turns = load_dataset(config), LABELS, BATCH, args.turns
    # Untimed: the first epoch in a process pays for imports, the allocator and Pyro's caches.
    warm_up = head(data, min(1000, len(data.train) // 4))
    for racer in contestants(
        warm_up, len(warm_up.train) // 10, batch, tag="_warm_up", jit=args.jit, bfloat16=args.bf16
    ):
        racer.run_epoch()
    racers = contestants(
        data, labels, batch, compiled=args.compile, jit=args.jit, bfloat16=args.bf16
    )
    print(
        f"M2, one epoch: {data.name}, {len(data.train):,} training images ({labels:,} labelled), "
        f"{len(data.val):,} validation; statically binarized, Bernoulli, 784-{HIDDEN}-{LATENT}, "
        f"batch {batch}; {turns} alternating turns each\n{machine()}"
    )
    for racer in racers:
        print(f"  {racer.name}: {racer.work}")
    medians = report(take_turns(racers, turns))
    products_floor(data, labels, batch, medians[EXAMPLE], repeats=2 if args.quick else 20)
    return medians


if __name__ == "__main__":
    main()
