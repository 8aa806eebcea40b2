"""The benchmark's other anchor: the same VAE as a hand-written PyTorch script, as a user would
write it without Pyro: eager, torch's Adam, the ELBO with its closed-form KL written out, and a
one-sample validation ELBO each epoch. Same networks (torch.nn.Linear, ReLU), σ = 1, batch 128
and split as benchmarks/numpyro_vae.py.

    python benchmarks/torch_vae.py mnist.npy --epochs 15
"""

import argparse
import math
import time

import numpy as np
import torch
from torch import nn


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("data")
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--hidden", type=int, default=400)
    parser.add_argument("--latent", type=int, default=20)
    args = parser.parse_args()
    start = time.perf_counter()
    torch.manual_seed(0)

    images = np.load(args.data).astype(np.float32)
    images = torch.from_numpy(images.reshape(images.shape[0], -1))
    order = torch.from_numpy(np.random.default_rng(0).permutation(images.shape[0]))
    n_val = n_test = round(0.1 * images.shape[0])
    val, train = images[order[:n_val]], images[order[n_val + n_test :]]
    d, latent, hidden = train.shape[1], args.latent, args.hidden
    encoder = nn.Sequential(nn.Linear(d, hidden), nn.ReLU(), nn.Linear(hidden, 2 * latent))
    decoder = nn.Sequential(nn.Linear(latent, hidden), nn.ReLU(), nn.Linear(hidden, d))
    optimizer = torch.optim.Adam([*encoder.parameters(), *decoder.parameters()], lr=1e-3)
    log_norm = 0.5 * d * math.log(2 * math.pi)

    def neg_elbo(x: torch.Tensor) -> torch.Tensor:  # summed over the batch
        loc, log_var = encoder(x).chunk(2, dim=-1)
        z = loc + torch.exp(0.5 * log_var) * torch.randn_like(loc)
        reconstruction = 0.5 * ((x - decoder(z)) ** 2).sum() + x.shape[0] * log_norm
        kl = 0.5 * (loc**2 + log_var.exp() - 1 - log_var).sum()
        return reconstruction + kl

    seconds = []
    for epoch in range(args.epochs):
        begin = time.perf_counter()
        total = 0.0
        batches = torch.randperm(train.shape[0]).split(args.batch_size)
        for index in batches:
            optimizer.zero_grad()
            loss = neg_elbo(train[index])
            loss.backward()
            optimizer.step()
            total += loss.item()
        steps = time.perf_counter() - begin
        with torch.no_grad():
            elbo = -neg_elbo(val).item() / val.shape[0]
        seconds.append(time.perf_counter() - begin)
        print(f"epoch {epoch + 1}: train ELBO {-total / train.shape[0]:.2f}, "
              f"validation ELBO {elbo:.2f}, steps {steps:.3f} s ({len(batches)}), "
              f"{seconds[-1]:.3f} s")  # fmt: skip
    print(
        f"torch: {args.epochs} epochs, {time.perf_counter() - start:.2f} s in all, "
        f"steady epoch {float(np.median(seconds[1:] or seconds)):.3f} s"
    )


if __name__ == "__main__":
    main()
