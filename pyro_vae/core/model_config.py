"""The model's section of a run's configuration: which networks, guide, prior and likelihood, and
each one's options of ``pyro-vae train`` (core/options.py says what a declaration holds)."""

from dataclasses import dataclass, field
from typing import Any

from pyro_vae.core.options import LAYER_SIZES, check, declared, keyword, require

# --model: the VAE; the conditional VAE (models/cvae.py); M2, semi-supervised (models/m2.py)
MODEL_KINDS = ("vae", "cvae", "m2")


@dataclass(frozen=True)
class ModelConfig:
    """The VAE's architecture; the data dimension is not here because the data decide it."""

    # dim z; digits need few dimensions, and small ones keep pictures readable
    latent_dim: int = field(
        default=8, metadata=declared("--latent-dim", low=1, help="Dimension of the latent code z.")
    )
    # which model reads the data: the VAE, the conditional VAE (cvae) or M2
    kind: str = field(
        default="vae",
        metadata=declared(
            "--model",
            choices=MODEL_KINDS,
            noun="model",
            help="vae; cvae, the conditional VAE p(x | z, y), q(z | x, y), the class y given "
            "(sample --label K draws class K); m2, semi-supervised (Kingma et al., 2014): y a "
            "latent summed out exactly for the images whose labels --labels does not keep.",
        ),
    )
    # The labels' classes, for the models that read them: set from the data when a run starts.
    num_classes: int = field(default=0, metadata=declared(low=0))
    # the encoder/decoder pair (components/networks.py)
    network: str = field(
        default="mlp",
        metadata=declared(
            "--network",
            choices="networks",
            help="Encoder/decoder pair: mlp (fully connected) or conv (strided convolutions, for "
            "images of 8×8 and up).",
        ),
    )
    # The encoder's widths (mlp: units per layer; conv: channels per stage); the decoder mirrors
    # them. None: the network's own default (networks.default_hidden_dims).
    hidden_dims: tuple[int, ...] | None = field(
        default=None,
        metadata=declared(
            "--hidden-dims",
            spelling=LAYER_SIZES,
            follows="network",
            help="The encoder's widths, comma-separated (mlp: units per layer; conv: channels per "
            "stage, each stage halving the image); the decoder mirrors them.",
            shown_default="256,128 for mlp, 32,64 for conv",
        ),
    )
    # The networks' nonlinearity (components/networks.py ACTIVATIONS): tanh is the papers' of
    # Kingma & Welling (2014) and Burda et al. (2016), for comparing with their numbers.
    activation: str = field(
        default="relu",
        metadata=declared(
            "--activation",
            choices=("relu", "tanh"),
            help="The networks' nonlinearity between layers: relu, or tanh (the VAE and IWAE "
            "papers').",
        ),
    )
    # q(z|x) = N(μ, diag σ²) by default (components/guides.py)
    guide: str = field(
        default="diagonal",
        metadata=declared(
            "--guide",
            choices="guides",
            help="Guide family q(z|x): diagonal (Gaussian, independent dimensions), full "
            "(Gaussian, full covariance) or iaf (diagonal Gaussian then inverse autoregressive "
            "flows).",
        ),
    )
    # p(z) = N(0, I) by default (components/priors.py)
    prior: str = field(
        default="standard", metadata=declared("--prior", choices="priors", help="Prior p(z).")
    )
    # N(x; x̂, I) by default (components/likelihoods.py)
    likelihood: str = field(
        default="gaussian",
        metadata=declared(
            "--likelihood",
            choices="likelihoods",
            help="Likelihood p(x|z) around the decoder's output.",
        ),
    )
    # The components' keyword arguments; those that are options of their own are declared here.
    guide_options: dict[str, Any] = field(
        default_factory=dict,
        metadata=declared(
            follows="guide",
            keys=(
                keyword(
                    "flows",
                    "--flows",
                    int,
                    low=1,
                    shown_default="2",
                    help="Flows K of the iaf guide.",
                ),
            ),
        ),
    )
    prior_options: dict[str, Any] = field(
        default_factory=dict,
        metadata=declared(
            follows="prior",
            keys=(
                keyword(
                    "num_components",
                    "--components",
                    int,
                    low=1,
                    help="Mixture components K of the mog and vamp priors.",
                    shown_default="10 for mog, 50 for vamp",
                ),
            ),
        ),
    )
    likelihood_options: dict[str, Any] = field(
        default_factory=dict,
        metadata=declared(
            follows="likelihood",
            keys=(
                keyword(
                    "sigma",
                    "--sigma",
                    float,
                    low=0,
                    strict=True,
                    help="Standard deviation σ of the gaussian likelihood N(x; x̂, σ²I).",
                    shown_default="1.0",
                ),
            ),
        ),
    )

    # M1+M2 (models/stacked.py): the settings of the trained VAE (M1) whose codes M2 models,
    # set from `pyro-vae train --features RUN` when a run starts; M1's weights are the model's.
    m1: dict[str, Any] | None = field(default=None, metadata=declared(follows="kind"))

    def __post_init__(self) -> None:
        check(self)
        require(
            self.m1 is None or self.kind == "m2",
            f"`m1` (the VAE whose codes M2 reads in M1+M2) goes with `kind` m2, not {self.kind}",
        )
        if self.hidden_dims is not None:
            require(
                isinstance(self.hidden_dims, list | tuple),
                f"`hidden_dims` must be a list of layer sizes, got {self.hidden_dims!r}",
            )
            object.__setattr__(self, "hidden_dims", tuple(self.hidden_dims))  # JSON gives lists
            for size in self.hidden_dims:
                require(
                    isinstance(size, int) and not isinstance(size, bool) and size >= 1,
                    f"each of `hidden_dims` must be a whole number of at least 1, got {size!r}",
                )
