import pyro
import pyro.optim
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO, TraceMeanField_ELBO

from pyro_vae import (
    ESTIMATORS,
    VAE,
    TrainConfig,
    Trainer,
    UserInputError,
    elbo_per_datapoint,
    make_elbo,
    resolve_device,
    train_run,
)
from pyro_vae.core.config import RunConfig
from pyro_vae.inference.fast.precision import cpu_has_bfloat16_products, matmul_precision


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_training_clearly_improves_the_validation_elbo(digits, estimator):
    vae = VAE(digits.data_dim)
    initial = elbo_per_datapoint(vae, digits.val.x)
    particles = 3 if estimator == "iwae" else 1
    trainer = Trainer(vae, TrainConfig(elbo=estimator, num_particles=particles))
    history = [trainer.train_epoch(digits) for _ in range(3)]
    # The estimator's noise on this split is about 0.002 nats; the gain is thousands of times that.
    assert history[-1].val_elbo > initial + 3.0
    assert [m.epoch for m in history] == [1, 2, 3]
    assert all(m.train_elbo < 0 for m in history) and all(s > 0 for s in trainer.epoch_seconds)


@pytest.mark.parametrize("estimator", ["mc", "analytic"])
def test_trainer_step_is_svi_step(digits, estimator):
    """Adam on the differentiable loss gives the same losses and parameters as SVI.step with
    Pyro's own ELBO class and optimizer: the fast path computes the same estimator."""
    x = digits.train.x[:64]
    pyro.set_rng_seed(1)
    vae = VAE(digits.data_dim, hidden_dims=(32,))
    twin = VAE(digits.data_dim, hidden_dims=(32,))
    twin.load_state_dict(vae.state_dict())

    trainer = Trainer(vae, TrainConfig(elbo=estimator, lr=1e-2))
    pyro.set_rng_seed(2)
    ours = [trainer.step(x).item() * x.shape[0] for _ in range(5)]  # step returns the mean

    pyro.clear_param_store()
    elbo = {"mc": Trace_ELBO, "analytic": TraceMeanField_ELBO}[estimator]()
    svi = SVI(twin.model, twin.guide, pyro.optim.Adam({"lr": 1e-2}), elbo)
    pyro.set_rng_seed(2)
    theirs = [svi.step(x) for _ in range(5)]

    assert ours == pytest.approx(theirs, rel=1e-5)
    for (name, p), q in zip(vae.named_parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-7, msg=name)


def test_num_particles_are_vectorised(digits):
    elbo = make_elbo("mc", num_particles=8)
    assert elbo.vectorize_particles and elbo.num_particles == 8
    vae = VAE(digits.data_dim)
    loss = Trainer(vae, TrainConfig(num_particles=8)).step(digits.train.x[:32])
    assert torch.isfinite(loss)


@pytest.mark.parametrize(
    "values, message",
    [
        ({"elbo": "foo"}, "unknown ELBO estimator 'foo'"),
        ({"epochs": 0}, "epochs must be a whole number of at least 1"),
        ({"batch_size": -1}, "batch_size must be a whole number of at least 1"),
        ({"num_particles": 0}, "num_particles must be a whole number of at least 1"),
        ({"lr": 0.0}, "lr must be a positive finite number"),
        ({"lr": float("nan")}, "lr must be a positive finite number"),
        ({"device": "tpu"}, "unknown device 'tpu'"),
    ],
)
def test_bad_train_config_is_refused(values, message):
    with pytest.raises(UserInputError, match=message):
        TrainConfig(**values)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_a_gpu_is_a_user_error():
    with pytest.raises(UserInputError, match=r"CUDA is not available.*'cpu'"):
        resolve_device("cuda")
    assert resolve_device("auto") == torch.device("cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_training_on_cuda_keeps_everything_on_the_gpu(tmp_path):
    config = RunConfig(train=TrainConfig(epochs=2, device="cuda"))
    result = train_run(config, tmp_path / "run")
    assert result.device.type == "cuda"
    assert result.history[-1].val_elbo > result.history[0].val_elbo - 1.0
    from pyro_vae import load_checkpoint

    vae = load_checkpoint(tmp_path / "run", "cuda").build_vae("cuda")
    assert all(p.is_cuda for p in vae.parameters())


def test_a_validation_elbo_that_is_not_finite_is_a_divergence(digits, monkeypatch):
    """Finite weights can still overflow on some image: the epoch must not end as a success."""
    from pyro_vae.inference.evaluate import Estimate
    from pyro_vae.inference.trainer import TrainingDiverged

    trainer = Trainer(VAE(64, 2, hidden_dims=(8,)), TrainConfig(batch_size=256))
    monkeypatch.setattr(trainer, "_validation_elbo", lambda x: (Estimate(float("-inf"), None), 0.0))
    with pytest.raises(TrainingDiverged, match="the validation ELBO is -inf"):
        trainer.train_epoch(digits)


def _cpu_precision() -> str:
    return torch.backends.mkldnn.matmul.fp32_precision


def test_a_lower_matmul_precision_holds_for_the_training_steps_alone(digits):
    """--matmul-precision medium: the steps' products in bfloat16 (where the CPU has it), the
    validation ELBO and whatever runs after the epoch in torch's own setting."""
    vae = VAE(digits.data_dim, hidden_dims=(32,))
    seen = []
    vae.decoder.register_forward_hook(lambda *_: seen.append(_cpu_precision()))
    trainer = Trainer(
        vae, TrainConfig(matmul_precision="medium", batch_size=256), record_graph=False
    )
    outside = _cpu_precision()
    inside = "bf16" if cpu_has_bfloat16_products() else "ieee"
    trainer.train_epoch(digits)
    steps = -(-len(digits.train) // 256)
    assert seen[:steps] == [inside] * steps  # every step's decoder, eagerly
    assert set(seen[steps:]) == {outside}  # the validation ELBO's
    assert _cpu_precision() == outside
    trainer.step(digits.train.x[:64])
    assert seen[-1] == inside and _cpu_precision() == outside
    assert torch.get_float32_matmul_precision() == "highest"  # the legacy value still readable


def test_bfloat16_products_need_amx_tiles_not_avx512_bf16_alone(monkeypatch):
    """On a CPU with AVX-512 BF16 but no AMX (an AMD EPYC, Zen 4) torch's products under the
    bf16 setting stayed float32: "medium" must set nothing there."""
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True, raising=False)
    found = {}
    for amx in (False, True):
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda amx=amx: amx)
        cpu_has_bfloat16_products.cache_clear()
        found[amx] = cpu_has_bfloat16_products()
    cpu_has_bfloat16_products.cache_clear()  # this machine's answer again, for the other tests
    assert found == {False: False, True: torch.backends.mkldnn.is_available()}


@pytest.mark.skipif(not cpu_has_bfloat16_products(), reason="this CPU has no bfloat16 products")
def test_bfloat16_products_reach_the_recorded_step(digits):
    """Where the CPU multiplies in bfloat16, the replayed step (not an eager one) computes other
    numbers under "medium" than under "highest" at the same parameters and noise, and close
    ones."""
    x = digits.train.x[:128]
    trainer = Trainer(VAE(digits.data_dim), TrainConfig(matmul_precision="medium"))
    trainer.step(x)  # recorded
    found = {}
    for precision in ("highest", "medium", "highest"):
        pyro.set_rng_seed(1)
        with matmul_precision(precision):
            loss, _ = trainer._backward(x)
        grads = torch.cat([p.grad.flatten() for p in trainer.vae.parameters()])
        found.setdefault(precision, []).append((loss.item(), grads.clone()))
    assert trainer._recorded.eager_reason is None  # replayed, not given up for eager steps
    (highest, grad), (again, grad_again) = found["highest"]
    assert highest == again and torch.equal(grad, grad_again)  # the same numbers: the same noise
    ((medium, grad_medium),) = found["medium"]
    assert medium != highest and not torch.equal(grad_medium, grad)
    assert medium == pytest.approx(highest, rel=1e-2)
