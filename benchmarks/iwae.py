"""Time and peak memory of the importance-weighted evaluation, K = 1,000 on 2,000 MNIST images.

The model is the literature's MNIST VAE (784-400-50, Bernoulli likelihood); its weights do not
change the cost, so it is not trained. Peak memory is the process's maximum resident set size,
printed beside what the process held before the evaluation (torch itself, the data).

    python benchmarks/iwae.py --data-dir ../shared/data      # the real MNIST test split
    python benchmarks/iwae.py --quick                        # random images, seconds
"""

import argparse
import resource
import statistics
import time

import pyro
import torch

from pyro_vae import VAE, DataConfig, load_dataset
from pyro_vae.inference.evaluate import evaluate_bounds


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", default="../shared/data")
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--num-samples", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="random images, K = 10, 1 repeat")
    args = parser.parse_args(argv)
    if args.quick:
        x = torch.rand(50, 784).bernoulli()
        args.num_samples, args.repeats = 10, 1
    else:
        data = load_dataset(DataConfig(dataset="mnist", data_dir=args.data_dir, binarize="static"))
        x = torch.cat([data.train.x, data.val.x, data.test.x])[: args.images]
    pyro.set_rng_seed(0)
    vae = VAE(784, latent_dim=50, hidden_dims=(400,), likelihood="bernoulli")
    before = peak_rss_mib()
    seconds = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        bounds = evaluate_bounds(vae, x, num_samples=args.num_samples)
        seconds.append(time.perf_counter() - start)
    result = {
        "images": x.shape[0],
        "num_samples": args.num_samples,
        "median_seconds": statistics.median(seconds),
        "peak_rss_mib": peak_rss_mib(),
        "rss_before_mib": before,
        "iwae_nats": bounds["iwae"].nats,
    }
    print(
        f"IWAE, K = {args.num_samples}, {x.shape[0]} images, {torch.get_num_threads()} threads: "
        f"median {result['median_seconds']:.2f} s over {args.repeats} runs "
        f"({', '.join(f'{s:.2f}' for s in seconds)}); peak RSS {result['peak_rss_mib']:.0f} MiB "
        f"(before evaluating: {before:.0f} MiB)"
    )
    return result


if __name__ == "__main__":
    main()
