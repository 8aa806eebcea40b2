"""Does the conditional VAE draw the class asked for? Samples of each class, and how often a
classifier recognises them, for latent codes of 2, 8 and 50 dimensions.

The MNIST split on disk (8,000 / 1,000 / 1,000, as the other experiments), binarized, Bernoulli
likelihood, MLP 500 (the networks of the semi-supervised experiment), Adam 1e-3, batch 128,
20 epochs, every training label. The class reaches both networks one-hot; what the code z is left
to carry decides how much the decoder listens to y: a code of 50 dimensions can hold the class
itself. Each model draws 100 samples per class (decoded means of z ~ p(z)); a classifier (the same
MLP, cross entropy on the 8,000 binarized training images, its own test error reported) names
their class. It judges grey means having seen binary images, alike for every latent size.

    python experiments/conditional.py              # about a minute on 2 CPU cores
    python experiments/conditional.py --quick      # seconds, for the test suite
"""

import argparse
import time
from pathlib import Path

import pyro
import torch
from common import SHARED_DATA, output_path, provenance
from torch.nn import functional as F

from pyro_vae import ConditionalVAE, DataConfig, TrainConfig, Trainer, load_dataset
from pyro_vae.components.networks import build_classifier
from pyro_vae.data.datasets import Dataset
from pyro_vae.runs.pictures import save_samples

RESULTS = Path(__file__).parent / "results"
HIDDEN, BATCH, PER_CLASS = (500,), 128, 100


def judge(data: Dataset, epochs: int) -> torch.nn.Module:
    """A classifier of the training images, the networks' MLP with K outputs."""
    pyro.set_rng_seed(0)
    net = build_classifier("mlp", data.image_shape, 2, HIDDEN, data.num_classes)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    x, y = data.train.x, data.train.labels
    for _ in range(epochs):
        for batch in torch.randperm(len(y)).split(BATCH):
            optimizer.zero_grad()
            F.cross_entropy(net(x[batch]), y[batch]).backward()
            optimizer.step()
    return net


def cvae(data: Dataset, latent_dim: int, epochs: int, picture: Path) -> ConditionalVAE:
    """A CVAE trained on every label, its class-by-sample picture saved at ``picture``."""
    pyro.set_rng_seed(0)
    vae = ConditionalVAE(
        data.image_shape, latent_dim, HIDDEN, likelihood="bernoulli", num_classes=data.num_classes
    )
    trainer = Trainer(vae, TrainConfig(batch_size=BATCH, epochs=epochs))
    for _ in range(epochs):
        trainer.train_epoch(data)
    save_samples(vae, data.image_shape, picture, 8 * data.num_classes, seed=0)
    return vae


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=SHARED_DATA)
    parser.add_argument("--latent-dims", type=int, nargs="+", default=[2, 8, 50])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--quick", action="store_true", help="the digits, 1 epoch")
    parser.add_argument("--out", type=Path, help="default: experiments/results/conditional.md")
    args = parser.parse_args(argv)
    out = output_path(args.out, args.quick, RESULTS / "conditional.md")
    if args.quick:
        data = load_dataset(DataConfig(binarize="static"))
        args.latent_dims, args.epochs = [2], 1
    else:
        config = DataConfig(dataset="mnist", data_dir=str(args.data_dir), binarize="static")
        data = load_dataset(config)
    out.parent.mkdir(parents=True, exist_ok=True)
    began = time.perf_counter()
    classifier = judge(data, args.epochs)
    with torch.no_grad():
        test_error = float((classifier(data.test.x).argmax(-1) != data.test.labels).float().mean())
    asked = torch.arange(data.num_classes).repeat_interleave(PER_CLASS)
    rows, pictures = [], []
    for latent_dim in args.latent_dims:
        picture = out.with_name(f"{out.stem}_latent{latent_dim}.png")
        vae = cvae(data, latent_dim, args.epochs, picture)
        pyro.set_rng_seed(1)
        with torch.no_grad():
            named = classifier(vae.generate(len(asked), asked)).argmax(-1)
        agreement = float((named == asked).float().mean())
        per_class = [float((named[asked == k] == k).float().mean()) for k in asked.unique()]
        rows.append(
            f"| {latent_dim} | {agreement:.1%} | {min(per_class):.0%} – {max(per_class):.0%} |"
        )
        pictures.append(f"### z of {latent_dim} dimensions\n\n![samples]({picture.name})\n")
    lines = [
        "# The conditional VAE: does it draw the class asked for?",
        "",
        provenance(Path(__file__).name, argv),
        "",
        f"{len(data.train):,} training images, every label; MLP {HIDDEN[0]}, Bernoulli likelihood, "
        f"{args.epochs} epochs. {PER_CLASS} samples of each class per model; a classifier of "
        f"the training images (test error {test_error:.1%}) names their class.",
        "",
        "| latent dimensions | samples named as the class asked for | per class, lowest – highest"
        " |",
        "|---:|---:|---:|",
        *rows,
        "",
        "One row per class, 0 at the top:",
        "",
        *pictures,
        f"The whole run took {(time.perf_counter() - began) / 60:.1f} minutes.",
        "",
    ]
    out.write_text("\n".join(lines))
    return out


if __name__ == "__main__":
    print(main())
