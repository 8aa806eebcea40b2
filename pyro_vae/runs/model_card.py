"""The model card of an exported model (Mitchell et al., 2019, in brief): what it was trained on,
how, how well it does on held-out data, and with which versions, as Markdown."""

from dataclasses import asdict
from typing import Any

from pyro_vae.inference.evaluate import Bound
from pyro_vae.runs.checkpoint import environment
from pyro_vae.runs.trained import Scores, TrainedModel


def _table(values: dict[str, Any]) -> list[str]:
    rows = ["| option | value |", "| --- | --- |"]
    rows += [f"| {name} | {_shown(value)} |" for name, value in values.items()]
    return rows


def _shown(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, list | tuple):
        return ", ".join(map(str, value)) if value else "—"
    if isinstance(value, dict):
        return ", ".join(f"{k}={v}" for k, v in value.items()) if value else "—"
    return str(value)


def model_card(
    model: TrainedModel,
    scores: Scores,
    num_test: int,
    classification_error: float | None = None,
    trained_with: dict[str, str] | None = None,
) -> str:
    """The card: data, options, held-out bounds (± standard error over images) and versions."""
    config = model.config
    kind = config.model.kind
    data = config.data
    where = {"digits": "scikit-learn's digits (built in)"}.get(data.dataset) or (
        data.path if data.path is not None else data.data_dir
    )
    channels, height, width = model.image_shape
    shape = (
        f"vectors of {width} values"
        if (channels, height) == (1, 1)
        else f"images of shape {tuple(model.image_shape)} (C, H, W)"
    )
    # A conditional VAE reads each image's class (M2 sums it out): the example gives one.
    conditional_on_class = model.vae.labelled and not model.vae.semi_supervised
    by_class = ", label=3" if conditional_on_class else ""
    elbo = Bound.of(scores.elbo, scores.data_dim)
    iwae = Bound.of(scores.iwae, scores.data_dim)
    conditional = " given the class (log p(x | y))" if conditional_on_class else ""
    if config.model.m1 is not None:  # M1+M2: M2's bounds are on M1's codes
        conditional = " of M1's codes (log p(z₁), z₁ = μ₁(x); M1+M2)"
    activation = "" if config.model.activation == "relu" else f" ({config.model.activation})"
    lines = [
        f"# pyro-vae model: {'M1+M2' if config.model.m1 else kind} on {data.dataset}",
        "",
        f"A variational autoencoder ({kind}) trained for {model.epochs_trained} epochs with "
        f"pyro-vae; latent dimension {config.model.latent_dim}, {config.model.network} "
        f"networks{activation}, {config.model.guide} guide, {config.model.prior} prior, "
        f"{config.model.likelihood} likelihood. Run id: {model.run_id or '—'}.",
        "",
        "## Use",
        "",
        "```python",
        "from pyro_vae import load_run",
        "",
        'model = load_run("THIS_FOLDER")  # weights, configuration and data transform',
        f"codes = model.encode(images{by_class})  # posterior means, (N, latent_dim)",
        f"scores = model.score(images{by_class})  # per-image ELBO and IWAE bound, nats",
        "new = model.sample(16)  # decoded means of z ~ p(z)",
        "```",
        "",
        "`images`: an array, an image file or a folder of them, of the kind the model was trained "
        f"on: {shape}"
        + (f", binarized ({data.binarize})" if data.binarize != "none" else "")
        + ". Or `pyro-vae encode|score|generate THIS_FOLDER ...` on the command line.",
        "",
        "## Data",
        "",
        *_table(
            {
                "dataset": data.dataset,
                "from": where,
                "shape (C, H, W)": tuple(model.image_shape),
                "images, all splits": model.num_images,
                "validation / test fraction": f"{data.val_fraction} / {data.test_fraction}",
                "split seed": data.split_seed,
                "binarization": data.binarize,
                "classes": ", ".join(model.transform.class_names) or model.vae.num_classes or None,
                "image size, crop, channels": f"{_shown(data.image_size)}, {data.crop}, "
                f"{_shown(data.channels)}",
            }
        ),
        "",
        "## Options",
        "",
        *_table({f"model.{name}": value for name, value in asdict(config.model).items()}),
        *_table({f"train.{name}": value for name, value in asdict(config.train).items()})[2:],
        "",
        f"## Held-out bounds{conditional or ' on log p(x)'}",
        "",
        f"On the {num_test} test images, K = {scores.num_samples} samples of z per image; ± one "
        "standard error of the mean over images.",
        "",
        "| estimate | nats per image | bits per dim |",
        "| --- | --- | --- |",
        f"| ELBO | {elbo.nats:.3f} ± {elbo.standard_error:.3f} | {elbo.bits_per_dim:.4f} |",
        f"| IWAE, K = {scores.num_samples} | {iwae.nats:.3f} ± {iwae.standard_error:.3f} | "
        f"{iwae.bits_per_dim:.4f} |",
    ]
    if classification_error is not None:
        lines += ["", f"Classification error of q(y|x): {classification_error:.2%}."]
    lines += ["", "## Versions", ""]
    exported = environment()
    lines += [f"- exported with {_versions(exported)}"]
    if trained_with:
        lines += [f"- trained with {_versions(trained_with)}"]
    return "\n".join(lines) + "\n"


def _versions(versions: dict[str, str]) -> str:
    return ", ".join(f"{name} {version}" for name, version in versions.items())
