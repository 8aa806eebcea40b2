"""Every guide family in ``GUIDES`` with every prior and likelihood, and the stl estimator.

The registry-wide tests enumerate ``GUIDES``, ``PRIORS`` and ``LIKELIHOODS``: a new family is
tested by registering it, without touching this file.
"""

import copy
import json
import math
from pathlib import Path

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from torch import nn

from pyro_vae import GUIDES, LIKELIHOODS, PRIORS, VAE, TrainConfig, Trainer, make_elbo
from pyro_vae.components.guides import (
    DiagonalGuide,
    FullCovarianceGuide,
    IAFGuide,
    diagonal_parameters,
)
from pyro_vae.inference.evaluate import active_units, evaluate_bounds
from pyro_vae.inference.objectives import kl_method
from tests.test_recorded import assert_identical, eager_and_recorded

LATENT = 3


def small_vae(guide: str, prior: str = "standard", likelihood: str = "gaussian", **kw) -> VAE:
    return VAE(64, LATENT, hidden_dims=(16,), guide=guide, prior=prior, likelihood=likelihood, **kw)


def guide_parameters(vae: VAE) -> list[tuple[str, torch.Tensor]]:
    """φ: the encoder's and the guide family's parameters."""
    return [
        *vae.encoder.named_parameters(prefix="encoder"),
        *vae.guide_family.named_parameters(prefix="guide_family"),
    ]


@pytest.mark.parametrize("likelihood", LIKELIHOODS)
@pytest.mark.parametrize("prior", PRIORS)
@pytest.mark.parametrize("guide", GUIDES)
def test_every_guide_with_every_prior_and_likelihood(guide, prior, likelihood, binary_batch):
    vae = small_vae(guide, prior, likelihood)
    site = poutine.trace(vae.guide).get_trace(binary_batch).nodes["z"]
    assert site["value"].shape == (16, LATENT) and site["fn"].event_shape == (LATENT,)
    assert site["fn"].has_rsample  # every family is reparameterised: z has a path to φ
    for estimator in ("mc", "analytic", "stl"):
        vae.zero_grad(set_to_none=True)
        loss = make_elbo(estimator).differentiable_loss(vae.model, vae.guide, binary_batch)
        loss.backward()
        assert torch.isfinite(loss), estimator
        for name, parameter in guide_parameters(vae):
            assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), name
            assert parameter.grad.abs().sum() > 0, (estimator, name)
    assert math.isfinite(make_elbo("iwae", 3).loss(vae.model, vae.guide, binary_batch))


@pytest.mark.parametrize("particles", [1, 3])
@pytest.mark.parametrize("prior", ["standard", "vamp"])
@pytest.mark.parametrize("estimator", ["mc", "analytic", "stl"])
@pytest.mark.parametrize("guide", GUIDES)
def test_the_recorded_step_is_the_eager_step_for_every_guide(
    guide, estimator, prior, particles, binary_batch
):
    vae = small_vae(guide, prior)
    elbo = make_elbo(estimator, particles)
    eager, recorded = eager_and_recorded(vae, elbo, binary_batch, seed=3)
    assert_identical(eager, recorded)


@pytest.mark.parametrize("guide", GUIDES)
def test_a_trainer_keeps_every_guides_recording_for_a_whole_epoch(guide, digits, caplog):
    """The watch on the components' state finds nothing to object to in any family between
    steps (the IAF guide's Python orders included): no step falls back to eager."""
    trainer = Trainer(small_vae(guide), TrainConfig(elbo="stl", batch_size=256))
    with caplog.at_level("INFO", logger="pyro_vae.inference.fast.replay"):
        trainer.train_epoch(digits)
    assert trainer._recorded is not None and trainer._recorded.eager_reason is None
    assert "training eagerly" not in caplog.text


def gradients(vae: VAE, model, estimator: str, x: torch.Tensor, seeds: int) -> torch.Tensor:
    """∇_φ loss for ``seeds`` draws of z, as rows (seeds, parameters of φ)."""
    rows = []
    for seed in range(seeds):
        pyro.set_rng_seed(seed)
        vae.zero_grad(set_to_none=True)
        make_elbo(estimator).differentiable_loss(model, vae.guide, x).backward()
        rows.append(torch.cat([p.grad.flatten() for _, p in guide_parameters(vae)]))
    return torch.stack(rows)


@pytest.mark.parametrize("guide", GUIDES)
def test_stl_has_zero_variance_where_the_guide_is_the_posterior(guide, binary_batch):
    """A model whose posterior lies in the guide's family, at that posterior: p(x, z) =
    N(x; 0, I)·q*(z|x), q* a frozen copy of the guide. log p(x, z) − log q(z|x) is then
    log N(x; 0, I) whatever z is: every sample's path derivative is zero, while mc's gradient
    keeps the score term ∇_φ log q_φ(z|x), zero only on average."""
    vae = small_vae(guide).double()
    x = binary_batch.double()
    frozen = copy.deepcopy(vae).requires_grad_(False)

    def model(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("x", dist.Normal(torch.zeros_like(x), 1.0).to_event(1), obs=x)
            pyro.sample("z", frozen.posterior(x))

    stl = gradients(vae, model, "stl", x, seeds=8)
    mc = gradients(vae, model, "mc", x, seeds=8)
    assert stl.abs().max() < 1e-9
    assert mc.std(0).max() > 1.0  # the score term's noise, summed over the 16 images


@pytest.mark.parametrize("guide", GUIDES)
def test_stl_has_mcs_value_and_decoder_gradient_and_another_encoder_gradient(guide, binary_batch):
    """On the same random numbers, with particles and a KL weight: stl's training loss and −ELBO
    are mc's, and so is the gradient of everything but the guide (log q does not involve θ)."""
    vae = small_vae(guide, "mog")
    results = {}
    for estimator in ("mc", "stl"):
        pyro.set_rng_seed(5)
        vae.zero_grad(set_to_none=True)
        with vae.kl_weighted(0.5):
            loss, negative_elbo = make_elbo(estimator, 3).losses(vae.model, vae.guide, binary_batch)
        loss.backward()
        grads = {name: p.grad.clone() for name, p in vae.named_parameters()}
        results[estimator] = (loss.detach(), negative_elbo.detach(), grads)
    (loss, elbo, mc), (stl_loss, stl_elbo, stl) = results["mc"], results["stl"]
    torch.testing.assert_close(stl_loss, loss)
    torch.testing.assert_close(stl_elbo, elbo)
    assert not torch.equal(stl_loss, stl_elbo)  # the KL weight is in the loss, not the ELBO
    guide_names = {name for name, _ in guide_parameters(vae)}
    for name in mc:
        if name in guide_names:
            assert not torch.allclose(stl[name], mc[name]), name
        else:
            torch.testing.assert_close(stl[name], mc[name], msg=name)


def test_stl_is_exactly_zero_at_a_linear_gaussian_vaes_posterior():
    """A real VAE: p(z) = N(0, I), p(x|z) = N(Wz + b, I), a linear encoder set to the exact
    posterior N(ΣWᵀ(x − b), Σ), Σ = (I + WᵀW)⁻¹, which the full-covariance family holds."""
    torch.manual_seed(0)
    data_dim, latent = 5, 3
    decoder = nn.Linear(latent, data_dim).double()
    weight, bias = decoder.weight.detach(), decoder.bias.detach()
    covariance = torch.linalg.inv(torch.eye(latent, dtype=torch.float64) + weight.T @ weight)
    cholesky = torch.linalg.cholesky(covariance)
    family = FullCovarianceGuide(latent)
    encoder = nn.Linear(data_dim, family.parameter_dim).double()
    below = torch.tril_indices(latent, latent, offset=-1)
    with torch.no_grad():
        encoder.weight.zero_()
        encoder.weight[:latent] = covariance @ weight.T
        encoder.bias[:latent] = -covariance @ weight.T @ bias
        encoder.bias[latent : 2 * latent] = 2 * cholesky.diagonal().log()
        encoder.bias[2 * latent :] = cholesky[below[0], below[1]]
    family.correlation.data.fill_(1.0)  # the encoder's entries below the diagonal count fully
    vae = VAE(data_dim, latent, encoder=encoder, decoder=decoder, guide=family).double()
    x = torch.randn(32, data_dim, dtype=torch.float64)
    stl = gradients(vae, vae.model, "stl", x, seeds=6)
    mc = gradients(vae, vae.model, "mc", x, seeds=6)
    assert stl.abs().max() < 1e-9
    assert mc.std(0).max() > 0.5


def test_the_full_guides_closed_form_kl_is_the_kl():
    torch.manual_seed(0)
    family = FullCovarianceGuide(4).double()
    family.correlation.data.fill_(0.7)  # correlated: not the diagonal guide it starts as
    q = family(torch.randn(5, family.parameter_dim, dtype=torch.float64))
    p = dist.Normal(torch.randn(4, dtype=torch.float64), torch.rand(4, dtype=torch.float64) + 0.5)
    closed = torch.distributions.kl_divergence(q, p.to_event(1))
    as_mvn = dist.MultivariateNormal(p.loc, scale_tril=torch.diag(p.scale))
    torch.testing.assert_close(closed, torch.distributions.kl_divergence(q, as_mvn))
    z = q.sample((100_000,))
    log_ratio = q.log_prob(z) - p.to_event(1).log_prob(z)
    standard_error = log_ratio.std(0) / math.sqrt(z.shape[0])
    assert ((closed - log_ratio.mean(0)).abs() < 5 * standard_error).all()


def test_the_full_guide_starts_as_the_diagonal_guide():
    """With no entries below the diagonal, or before its correlation factor has moved from 0."""
    parameters = torch.randn(7, 2 * LATENT)
    full = FullCovarianceGuide(LATENT)
    below = torch.randn(7, full.parameter_dim - 2 * LATENT)
    z = torch.randn(7, LATENT)
    diagonal = DiagonalGuide(LATENT)(parameters).log_prob(z)
    torch.testing.assert_close(full(torch.cat([parameters, below], -1)).log_prob(z), diagonal)
    with torch.no_grad():
        full.correlation.fill_(0.5)
    padded = torch.cat([parameters, torch.zeros_like(below)], -1)
    torch.testing.assert_close(full(padded).log_prob(z), diagonal)
    assert not torch.allclose(full(torch.cat([parameters, below], -1)).log_prob(z), diagonal)


@pytest.mark.parametrize("flows", [1, 2, 4])
def test_an_iaf_guides_density_is_its_flows_inverse(flows):
    """log q at a z the flows drew (from their cache) equals log q at the same z recomputed
    through the flows' inverse, as the stl estimator and the VampPrior compute it."""
    family = IAFGuide(LATENT, flows=flows).double()
    assert len(family.flows) == flows
    parameters = torch.randn(6, family.parameter_dim, dtype=torch.float64)
    q = family(parameters)
    z = q.rsample()
    fresh = family(parameters)  # no cache: inverts the flows
    torch.testing.assert_close(fresh.log_prob(z.detach().clone()), q.log_prob(z))
    assert family.encode(parameters).shape == (6, LATENT)


@pytest.mark.parametrize(
    ("guide", "prior", "expected"),
    [
        ("diagonal", "standard", "closed-form"),
        ("full", "standard", "closed-form"),
        ("full", "gaussian", "closed-form"),
        ("full", "mog", "monte-carlo"),
        ("iaf", "standard", "monte-carlo"),
    ],
)
def test_each_guide_says_how_its_kl_is_computed(guide, prior, expected, binary_batch):
    vae = small_vae(guide, prior)
    assert kl_method("analytic", vae.prior(), vae.family_member()) == expected
    assert kl_method("stl", vae.prior(), vae.family_member()) == "monte-carlo"
    trainer = Trainer(vae, TrainConfig(elbo="analytic"))
    assert trainer.train_kl == expected


@pytest.mark.parametrize("guide", GUIDES)
def test_evaluation_and_pictures_work_for_every_guide(guide, digits):
    vae = small_vae(guide)
    x = digits.test.x[:20]
    bounds = evaluate_bounds(vae, x, num_samples=30)
    assert bounds["iwae"].nats >= bounds["elbo_mc_kl"].nats
    assert vae.encode(x).shape == (20, LATENT)
    assert vae.reconstruct(x).shape == x.shape
    assert 0 <= active_units(vae, x) <= LATENT


def test_a_guide_trains_with_pyros_own_svi(binary_batch):
    vae = small_vae("iaf", guide_options={"flows": 1})
    svi = pyro.infer.SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 1e-2}), make_elbo("stl"))
    losses = [svi.step(binary_batch) for _ in range(30)]
    assert sum(losses[-5:]) < sum(losses[:5])
    assert any(name.startswith("guide_family$$$flows") for name in pyro.get_param_store())


class SoftplusGuide(DiagonalGuide):
    """A user's family: σ = softplus(raw) instead of exp(½ log σ²)."""

    def forward(self, parameters):
        loc, raw = parameters.chunk(2, dim=-1)
        return dist.Normal(loc, nn.functional.softplus(raw)).to_event(1)


def test_a_users_guide_family_by_instance_or_by_name(monkeypatch, digits):
    vae = small_vae(SoftplusGuide(LATENT))  # type: ignore[arg-type]
    assert isinstance(vae.guide_family, SoftplusGuide)
    monkeypatch.setitem(GUIDES, "softplus", SoftplusGuide)
    vae = small_vae("softplus")
    before = Trainer(vae, TrainConfig(elbo="stl", lr=3e-3))
    assert math.isfinite(before.train_epoch(digits).val_elbo)


class PairEncoder(nn.Module):
    """An encoder as Pyro's examples write them: it returns (loc, scale) itself."""

    def __init__(self):
        super().__init__()
        self.net = nn.Linear(64, 2 * LATENT)

    def forward(self, x):
        loc, raw = self.net(x).chunk(2, dim=-1)
        return loc, nn.functional.softplus(raw)


def test_an_encoder_returning_loc_and_scale_serves_the_diagonal_guide_only(binary_batch):
    vae = VAE(64, LATENT, encoder=PairEncoder(), decoder=nn.Linear(LATENT, 64))
    _, scale = diagonal_parameters(vae.encoder(binary_batch))
    torch.testing.assert_close(vae.posterior(binary_batch).base_dist.scale, scale)
    with pytest.raises(ValueError, match=r"returns 2 tensors .* takes \(2, 9\): .* Cholesky"):
        VAE(64, LATENT, encoder=PairEncoder(), decoder=nn.Linear(LATENT, 64), guide="full")
    with pytest.raises(ValueError, match=r"returns shape \(2, 6\) .* takes \(2, 12\)"):
        VAE(64, LATENT, encoder=nn.Linear(64, 6), decoder=nn.Linear(LATENT, 64), guide="iaf")


def test_stl_needs_a_guide_whose_parameters_it_can_find(binary_batch):
    vae = small_vae("diagonal")

    def guide(x):  # a plain function: its parameters are nowhere to be found
        return vae.guide(x)

    with pytest.raises(TypeError, match="method of the torch module"):
        make_elbo("stl").differentiable_loss(vae.model, guide, binary_batch)


def test_the_command_line_trains_evaluates_and_resumes_a_flow_guide(tmp_path):
    from typer.testing import CliRunner

    import cli

    def run(*args):
        return CliRunner().invoke(cli.app, [str(a) for a in args])

    out = tmp_path / "run"
    trained = run(
        "train",
        "--out",
        out,
        "--epochs",
        "1",
        "--hidden-dims",
        "32",
        "--guide",
        "iaf",
        "--flows",
        "1",
        "--elbo",
        "analytic",
    )
    assert trained.exit_code == 0, trained.output
    assert "the iaf guide has no closed-form KL to the standard prior" in trained.output
    model = json.loads((out / "config.json").read_text())["config"]["model"]
    assert (model["guide"], model["guide_options"]) == ("iaf", {"flows": 1})
    metrics = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert metrics["train_kl"] == metrics["val_kl"] == "monte-carlo"
    evaluated = run("evaluate", out, "--num-samples", "5")
    assert evaluated.exit_code == 0, evaluated.output
    assert "ELBO, monte-carlo KL" in evaluated.output
    changed = run("train", "--resume", out, "--epochs", "2", "--flows", "2")
    assert changed.exit_code == 2 and "--flows (the run has 1)" in changed.output
    resumed = run("train", "--resume", out, "--epochs", "2", "--flows", "1")
    assert resumed.exit_code == 0, resumed.output
    for picture in ("sample", "reconstruct", "interpolate", "latent", "manifold"):
        drawn = run(picture, out)
        assert drawn.exit_code == 0, (picture, drawn.output)
        assert Path(drawn.stdout.strip().splitlines()[-1]).stat().st_size > 0, picture


def test_building_a_run_checks_its_budget_without_drawing_random_numbers():
    """The budget check builds the guide family to count its parameters; a run's weights must be
    drawn from the numbers they would have had without it."""
    from pyro_vae.core.config import ModelConfig, RunConfig
    from pyro_vae.runs.budget import check_budget

    config = RunConfig(model=ModelConfig(guide="iaf", guide_options={"flows": 2}))
    torch.manual_seed(0)
    check_budget(config, (1, 8, 8), torch.device("cpu"))
    after = torch.rand(3)
    torch.manual_seed(0)
    torch.testing.assert_close(after, torch.rand(3))


def test_flows_on_the_command_line_keep_a_config_files_other_guide_options(tmp_path):
    """And replace the file's own flows, unchecked: a bad value there is not the run's."""
    from typer.testing import CliRunner

    import cli

    config = tmp_path / "c.toml"
    config.write_text(
        '[model]\nguide = "iaf"\nguide_options = {flows = 0, context_dim = 5}\n'
        "hidden_dims = [16]\n[train]\nepochs = 1\n"
    )
    out = tmp_path / "run"
    args = ["train", "--config", config, "--flows", "3", "--out", out, "--elbo", "stl"]
    result = CliRunner().invoke(cli.app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    model = json.loads((out / "config.json").read_text())["config"]["model"]
    assert model["guide_options"] == {"flows": 3, "context_dim": 5}


@pytest.mark.parametrize(
    ("guide", "options"),
    [
        ("diagonal", {}),
        ("full", {}),
        ("iaf", {}),
        ("iaf", {"flows": 3, "context_dim": 5}),
        ("iaf", {"hidden_dims": [7, 9, 11]}),
    ],
)
def test_a_familys_size_is_counted_without_building_it(guide, options):
    from pyro_vae.components.guides import build_guide, guide_size

    family = build_guide(guide, 7, **options)
    assert guide_size(guide, 7, options) == (
        family.parameter_dim,
        sum(p.numel() for p in family.parameters()),
    )


def test_a_flow_too_large_for_the_machine_is_refused_before_it_is_built():
    from pyro_vae import UserInputError
    from pyro_vae.core.config import ModelConfig, RunConfig
    from pyro_vae.runs.budget import check_budget

    options = {"flows": 4, "context_dim": 10**6}
    config = RunConfig(model=ModelConfig(guide="iaf", guide_options=options))
    with pytest.raises(UserInputError, match="parameters"):
        check_budget(config, (1, 8, 8), torch.device("cpu"))


class WiderIAF(IAFGuide):
    """A user's subclass with an option of its own: its size is not its parent's to count."""

    def __init__(self, latent_dim: int, flows: int = 2, extra: int = 3):
        super().__init__(latent_dim, flows=flows)
        self.extra = nn.Parameter(torch.zeros(extra))


def test_a_subclass_is_counted_by_building_it(monkeypatch):
    from pyro_vae.components.guides import guide_size

    monkeypatch.setitem(GUIDES, "wider", WiderIAF)
    family = WiderIAF(5, extra=4)
    assert guide_size("wider", 5, {"extra": 4}) == (
        family.parameter_dim,
        sum(p.numel() for p in family.parameters()),
    )
