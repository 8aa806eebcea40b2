"""The benchmark's anchor: the same VAE in NumPyro, written as NumPyro's own examples are.

784-400-20 (or as asked) ReLU MLPs, z ~ N(0, I), x ~ N(decoder(z), σ² I) with σ = 1, the guide
N(μ(x), diag σ(x)²) from one encoder output, SVI with ``Trace_ELBO`` and Adam (lr 1e-3), batch
128; each epoch jitted as one ``lax.fori_loop`` over ``svi.update`` (as numpyro/examples/vae.py
does), then the validation ELBO with ``svi.evaluate`` (one sample of z per image). The data are a
``.npy`` of images in [0, 1], split 8,000 / 1,000 / 1,000 as pyro-vae splits 10,000.

    python benchmarks/numpyro_vae.py mnist.npy --epochs 15      # needs: pip install -e ".[bench]"

Prints the seconds of each epoch (steps plus validation) and one line of totals; it writes nothing.
"""

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from jax import lax, random
from numpyro import optim
from numpyro.infer import SVI, Trace_ELBO


def linear(name: str, n_in: int, n_out: int, x: jnp.ndarray, rng: np.random.Generator):
    """torch.nn.Linear's layer and initialisation, as NumPyro parameters."""
    bound = 1 / np.sqrt(n_in)
    w = numpyro.param(f"{name}.w", rng.uniform(-bound, bound, (n_in, n_out)).astype(np.float32))
    b = numpyro.param(f"{name}.b", rng.uniform(-bound, bound, (n_out,)).astype(np.float32))
    return x @ w + b


def make_model_and_guide(data_dim: int, hidden: int, latent: int, sigma: float):
    init = np.random.default_rng(0)  # consulted only when SVI initialises the parameters

    def model(x):
        with numpyro.plate("data", x.shape[0]):
            z = numpyro.sample("z", dist.Normal(0.0, 1.0).expand([latent]).to_event(1))
            h = jax.nn.relu(linear("dec1", latent, hidden, z, init))
            loc = linear("dec2", hidden, data_dim, h, init)
            numpyro.sample("x", dist.Normal(loc, sigma).to_event(1), obs=x)

    def guide(x):
        with numpyro.plate("data", x.shape[0]):
            h = jax.nn.relu(linear("enc1", data_dim, hidden, x, init))
            out = linear("enc2", hidden, 2 * latent, h, init)
            loc, log_var = out[:, :latent], out[:, latent:]
            numpyro.sample("z", dist.Normal(loc, jnp.exp(0.5 * log_var)).to_event(1))

    return model, guide


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("data", help=".npy of images in [0, 1], (N, D) or (N, H, W)")
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--hidden", type=int, default=400)
    parser.add_argument("--latent", type=int, default=20)
    args = parser.parse_args()
    start = time.perf_counter()

    images = np.load(args.data).astype(np.float32)
    images = images.reshape(images.shape[0], -1)
    order = np.random.default_rng(0).permutation(images.shape[0])
    n_val = n_test = round(0.1 * images.shape[0])
    val, train = images[order[:n_val]], images[order[n_val + n_test :]]
    train, val = jnp.asarray(train), jnp.asarray(val)
    num_batches = train.shape[0] // args.batch_size  # whole batches, as the examples' fetch does

    model, guide = make_model_and_guide(train.shape[1], args.hidden, args.latent, 1.0)
    svi = SVI(model, guide, optim.Adam(1e-3), Trace_ELBO())
    state = svi.init(random.PRNGKey(0), train[: args.batch_size])

    @jax.jit
    def epoch_train(state, key):
        permutation = random.permutation(key, train.shape[0])

        def body(i, carry):
            state, loss_sum = carry
            index = lax.dynamic_slice_in_dim(permutation, i * args.batch_size, args.batch_size)
            state, loss = svi.update(state, train[index])
            return state, loss_sum + loss

        return lax.fori_loop(0, num_batches, body, (state, 0.0))

    @jax.jit
    def validation_elbo(state):
        return -svi.evaluate(state, val) / val.shape[0]

    key = random.PRNGKey(1)
    seconds = []
    for epoch in range(args.epochs):
        begin = time.perf_counter()
        key, epoch_key = random.split(key)
        state, loss_sum = epoch_train(state, epoch_key)
        loss_sum.block_until_ready()
        steps = time.perf_counter() - begin
        elbo = float(validation_elbo(state))
        seconds.append(time.perf_counter() - begin)
        train_elbo = -float(loss_sum) / (num_batches * args.batch_size)
        print(f"epoch {epoch + 1}: train ELBO {train_elbo:.2f}, validation ELBO {elbo:.2f}, "
              f"steps {steps:.3f} s ({num_batches}), {seconds[-1]:.3f} s")  # fmt: skip
    print(
        f"numpyro: {args.epochs} epochs, {time.perf_counter() - start:.2f} s in all, "
        f"steady epoch {float(np.median(seconds[1:] or seconds)):.3f} s"
    )


if __name__ == "__main__":
    main()
