"""What the recorded step's audit costs (inference/fast/replay.py): an audited step, which replays
the graph and takes the eager step too on the same random numbers, against a plain replayed step.

The VAE and batch of the quickstart (the digits, 64 images a batch, the default networks); the
two kinds of step alternate in turns, and the paired median of their ratio is reported, with
the share of training that ``AUDIT_FIRST`` audits per batch shape and one every ``AUDIT_EVERY``
steps cost.

    OMP_NUM_THREADS=1 python benchmarks/audit_cost.py  # seconds; one thread, as another job
                                                       # shares the 2 cores (two threads on a
                                                       # busy machine measure the contention)
"""

import argparse
import statistics
import time

import torch

from pyro_vae import VAE, DataConfig, TrainConfig, Trainer, load_dataset
from pyro_vae.inference.fast.replay import AUDIT_EVERY, AUDIT_FIRST

QUICKSTART_STEPS = 150 * 23  # 150 epochs of 23 batches of the digits' 1,437 training images
QUICKSTART_SHAPES = 2  # a full batch and the epoch's last, smaller one


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--turns", type=int, default=15)
    parser.add_argument("--steps", type=int, default=20, help="steps of each kind a turn")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    data = load_dataset(DataConfig())
    batch = data.train.x[:64]
    vae = VAE(data.image_shape, 8, likelihood_options={"sigma": 0.1})
    trainer = Trainer(vae, TrainConfig())
    recorded = trainer._recorded
    for _ in range(2 + AUDIT_FIRST):  # eager and validated, recorded, then its first audits
        trainer.step(batch)
    ratios, plain_times = [], []
    for _ in range(args.turns):
        times = {}
        for audited in (False, True):
            start = time.perf_counter()
            for _ in range(args.steps):
                if audited:
                    recorded._steps = AUDIT_EVERY - 1
                trainer.step(batch)
            times[audited] = (time.perf_counter() - start) / args.steps
        assert recorded.eager_reason is None, recorded.eager_reason
        ratios.append(times[True] / times[False])
        plain_times.append(times[False])
    ratio = statistics.median(ratios)
    extra = ratio - 1  # an audited step costs this many plain steps more
    steady = extra / AUDIT_EVERY
    quickstart = extra * (QUICKSTART_SHAPES * AUDIT_FIRST + QUICKSTART_STEPS // AUDIT_EVERY)
    result = {
        "step_ms": statistics.median(plain_times) * 1e3,
        "audited_step_ratio": ratio,
        "steady_share": steady,
        "quickstart_share": quickstart / QUICKSTART_STEPS,
    }
    print(
        f"replayed step {result['step_ms']:.2f} ms; an audited step {ratio:.2f} times that "
        f"(median of {args.turns} turns); one audit every {AUDIT_EVERY} steps: "
        f"{steady:.3%} of training; the quickstart's {QUICKSTART_STEPS} steps with "
        f"{AUDIT_FIRST} audits per batch shape too: {result['quickstart_share']:.2%}"
    )
    return result


if __name__ == "__main__":
    main()
