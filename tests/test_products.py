"""The recorded step's matrix products through oneDNN where it is the faster library
(inference/fast/products.py): the same products, the same step to a stated tolerance, the choice
made for long runs only, kept per machine and in checkpoints, and MKL where torch has no oneDNN."""

import copy
import logging

import pyro
import pytest
import torch

from pyro_vae.core.train_config import TrainConfig
from pyro_vae.inference.fast import products
from pyro_vae.inference.fast import replay as recorded_module
from pyro_vae.inference.trainer import Trainer
from pyro_vae.models.vae import VAE
from tests.test_recorded import off_by_a_percent

needs_onednn = pytest.mark.skipif(
    not torch.backends.mkldnn.is_available(), reason="this torch is built without oneDNN"
)


@needs_onednn
def test_this_torch_has_the_onednn_linear_the_fast_path_calls():
    """A private entry point of torch's: a release that drops or renames it fails here, loudly,
    while training goes on through MKL (test_a_torch_without_onednn_keeps_every_product_mkls)."""
    linear = products.onednn_linear()
    assert linear is not None
    x, weight, bias = torch.randn(5, 3), torch.randn(4, 3), torch.randn(4)
    torch.testing.assert_close(linear(x, weight, bias, "none", [], ""), x @ weight.t() + bias)


def faster(library: str):
    """A stand-in for the clock: ``library`` twice as fast as the other on every product."""
    other = {"MKL": "oneDNN", "oneDNN": "MKL"}[library]
    calls = []

    def timed(sign, linear):
        calls.append(sign)
        return {library: 1.0, other: 2.0}

    return timed, calls


def trained(digits, steps: int, monkeypatch, library: str, cache, state=None):
    """A small VAE's run of ``steps`` steps on the digits, a long run's as far as the choice of
    products goes, ``library`` the faster on every product as timed into ``cache`` (a
    checkpoint's ``state``: resumed)."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache / library))
    pyro.set_rng_seed(0)
    vae = VAE(64, 3, hidden_dims=(16,))
    trainer = Trainer(vae, TrainConfig(lr=1e-2, batch_size=32))
    timed, _ = faster(library)
    monkeypatch.setattr(products, "paired_seconds", timed)
    monkeypatch.setattr(recorded_module, "PRODUCTS_STEPS", 0)
    monkeypatch.setattr(recorded_module, "PRODUCTS_SECONDS", 0.0)
    trainer._recorded.planned_steps = 10**6
    if state is not None:
        vae.load_state_dict(state[0])
        trainer.load_state_dict(state[1])
        torch.set_rng_state(state[2])
    x = digits.train.x[:32]
    losses = [float(trainer.step(x)) for _ in range(steps)]
    return vae, trainer, losses


@needs_onednn
def test_products_through_onednn_train_as_mkls_and_resume_to_the_bit(digits, monkeypatch, tmp_path):
    """Every product of the recorded graph moved to oneDNN: each product is MKL's to a rounding,
    the step's audits (to COMPILED_TOLERANCE, against the eager step) pass, the run follows the
    MKL run closely, not to the bit, and resumed from a checkpoint repeats its own numbers."""
    vae, trainer, losses = trained(digits, 8, monkeypatch, "oneDNN", tmp_path)
    recorded = trainer._recorded
    assert recorded.products and set(recorded.products.values()) == {"oneDNN"}
    assert {sign.split()[0] for sign in recorded.products} == {"mm", "addmm"}
    (graph,) = recorded._graphs.values()
    assert id(graph) in recorded._uncompiled  # audited to a tolerance: audits passed, kept
    calls = [node.target for node in graph.graph.nodes if node.op == "call_function"]
    assert calls.count(products.onednn_linear()) >= len(recorded.products)
    assert not any(target in (*products._MM, *products._ADDMM) for target in calls)
    for sign in recorded.products:
        mkl, onednn = products._calls(sign, products.onednn_linear())
        torch.testing.assert_close(onednn(), mkl(), rtol=1e-5, atol=1e-5)
    moved = [p.detach().clone() for p in vae.parameters()]
    mkl_vae, mkl_trainer, mkl_losses = trained(digits, 8, monkeypatch, "MKL", tmp_path)
    assert set(mkl_trainer._recorded.products.values()) == {"MKL"}
    assert isinstance(next(iter(mkl_trainer._recorded._graphs.values())), torch.fx.GraphModule)
    torch.testing.assert_close(losses, mkl_losses, rtol=1e-4, atol=0)
    for a, b in zip(moved, mkl_vae.parameters(), strict=True):
        torch.testing.assert_close(a, b.detach(), rtol=1e-3, atol=1e-5)
    assert not all(map(torch.equal, moved, mkl_vae.parameters()))
    # Stopped after 4 steps and resumed: the checkpoint's choice, not a new timing (the clock
    # now says MKL), and the uninterrupted run's numbers to the bit.
    vae, trainer, _ = trained(digits, 4, monkeypatch, "oneDNN", tmp_path)
    state = copy.deepcopy((vae.state_dict(), trainer.state_dict(), torch.get_rng_state()))
    assert state[1]["products"] == recorded.products
    resumed, resumed_trainer, _ = trained(digits, 4, monkeypatch, "MKL", tmp_path, state)
    assert resumed_trainer._recorded.products == recorded.products
    for a, b in zip(resumed.parameters(), moved, strict=True):
        torch.testing.assert_close(a.detach(), b, rtol=0, atol=0)


@needs_onednn
def test_the_choice_is_made_for_long_runs_once_per_machine(digits, monkeypatch, tmp_path):
    """A run with fewer than PRODUCTS_SECONDS of steps planned keeps MKL's products untimed;
    a long one times each product once, and the next run reads the cache."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    timed, calls = faster("oneDNN")
    monkeypatch.setattr(products, "paired_seconds", timed)
    monkeypatch.setattr(recorded_module, "replay_seconds", lambda graph, inputs: 0.01)
    monkeypatch.setattr(recorded_module, "PRODUCTS_SECONDS", products.PRODUCTS_SECONDS)
    x = digits.train.x[:32]

    def chosen(planned):
        trainer = Trainer(VAE(64, 3, hidden_dims=(16,)), TrainConfig(batch_size=32))
        trainer._recorded.planned_steps = planned
        for _ in range(2):
            trainer.step(x)
        return trainer._recorded.products

    enough = round(products.PRODUCTS_SECONDS / 0.01)  # steps of 10 ms
    assert enough >= products.PRODUCTS_STEPS
    assert chosen(enough - 1) == {} and calls == []
    assert chosen(None) == {} and calls == []  # steps taken one by one: no plan
    found = chosen(enough)
    assert found and set(found.values()) == {"oneDNN"} and len(calls) == len(found)
    assert chosen(enough) == found and len(calls) == len(found)  # cached
    assert (tmp_path / "pyro-vae" / "compile-timings.json").exists()


def test_a_torch_without_onednn_keeps_every_product_mkls(digits, monkeypatch, caplog):
    monkeypatch.setattr(products, "onednn_linear", lambda: None)
    monkeypatch.setattr(recorded_module, "PRODUCTS_STEPS", 0)
    monkeypatch.setattr(recorded_module, "PRODUCTS_SECONDS", 0.0)
    caplog.set_level(logging.INFO, logger="pyro_vae")
    trainer = Trainer(VAE(64, 3, hidden_dims=(16,)), TrainConfig(batch_size=32))
    trainer._recorded.planned_steps = 10**6
    losses = [trainer.step(digits.train.x[:32]) for _ in range(3)]
    assert all(torch.isfinite(loss) for loss in losses)
    assert trainer._recorded.products == {}
    assert trainer._recorded.eager_reason is None
    assert "stay MKL's: this torch has no oneDNN linear" in caplog.text


@needs_onednn
def test_a_moved_graph_that_computes_other_numbers_gives_way_to_its_recording(
    digits, monkeypatch, caplog, tmp_path
):
    """A graph whose products moved is audited against the eager step: one that computes
    something else than a reordered sum takes the eager numbers, and its recording is replayed
    from then on, with MKL's products in the checkpoint."""
    real = products.with_products
    monkeypatch.setattr(
        recorded_module,
        "with_products",
        lambda graph, chosen: off_by_a_percent(real(graph, chosen)),
    )
    caplog.set_level(logging.INFO, logger="pyro_vae")
    _, trainer, _ = trained(digits, 3, monkeypatch, "oneDNN", tmp_path)
    recorded = trainer._recorded
    assert recorded.products == {} and recorded.eager_reason is None
    assert all(isinstance(graph, torch.fx.GraphModule) for graph in recorded._graphs.values())
    assert "step with oneDNN's products computed other numbers" in caplog.text


@needs_onednn
def test_timing_the_products_leaves_the_runs_random_numbers_as_they_were(
    digits, monkeypatch, tmp_path
):
    """The real timing draws random matrices: a run whose products were timed (and all kept
    MKL's) repeats, to the bit, the run of one that never timed them."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(products, "TURNS", 1)
    monkeypatch.setattr(products, "CALLS", 1)
    monkeypatch.setattr(products, "MARGIN", 0.0)  # oneDNN never wins: the same products
    x = digits.train.x[:32]
    runs = []
    for choose_products in (True, False):
        monkeypatch.setattr(recorded_module, "PRODUCTS_STEPS", 0)
        monkeypatch.setattr(recorded_module, "PRODUCTS_SECONDS", 0.0)
        pyro.set_rng_seed(0)
        vae = VAE(64, 3, hidden_dims=(16,))
        trainer = Trainer(vae, TrainConfig(lr=1e-2, batch_size=32))
        trainer._recorded.planned_steps = 10**6
        trainer._recorded.choose_products = choose_products
        losses = [trainer.step(x) for _ in range(4)]
        runs.append((losses, [p.detach().clone() for p in vae.parameters()]))
        assert bool(trainer._recorded.products) is choose_products  # timed, or not at all
    for timed, untimed in zip(*runs, strict=True):
        torch.testing.assert_close(timed, untimed, rtol=0, atol=0)


def node_of(*values: torch.Tensor, target=torch.ops.aten.addmm.default, **kwargs):
    """A graph node calling ``target`` on nodes holding ``values``, as a recording has it."""
    graph = torch.fx.Graph()
    args = []
    for i, value in enumerate(values):
        arg = graph.placeholder(f"a{i}")
        arg.meta["val"] = value
        args.append(arg)
    return graph.call_function(target, tuple(args), kwargs)


def test_only_the_products_onednns_linear_computes_alike_are_moved():
    """A float32 product of two dense matrices, with a bias over the output's columns and no
    scaling; anything else stays torch's own call."""
    a, b, bias = torch.randn(8, 5), torch.randn(5, 3), torch.randn(3)
    assert products.signature(node_of(bias, a, b)) == "addmm 3:1 8x5:5,1 5x3:3,1"
    assert products.signature(node_of(a.t(), b[:3], target=torch.mm)).startswith("mm 5x8:1,5")
    assert products.signature(node_of(bias, a, b, beta=0.5)) is None  # scaled
    assert products.signature(node_of(bias.expand(8, 3), a, b)) is None  # a whole matrix added
    assert products.signature(node_of(bias, a.double(), b.double())) is None
    assert products.signature(node_of(bias, a, torch.ones(1, 3).expand(5, 3))) is None  # stride 0
    assert products.signature(node_of(a, b, target=torch.ops.aten.bmm.default)) is None


@needs_onednn
def test_a_buffer_updated_in_place_by_a_moved_graph_is_still_updated(monkeypatch):
    """Moving the products drops no operation but the transposes it bypasses: an in-place
    update whose result nothing reads (a counter) stays in the graph."""
    from torch.fx.experimental.proxy_tensor import make_fx

    from pyro_vae.inference.fast.replay import _with_python_bindings

    def step(x, weight, counter):
        counter.add_(1)
        return (x @ weight.t(),)

    x, weight, counter = torch.randn(4, 3), torch.randn(2, 3), torch.zeros(())
    graph = _with_python_bindings(make_fx(step, tracing_mode="fake")(x, weight, counter))
    (sign,) = {s for node in graph.graph.nodes if (s := products.signature(node)) is not None}
    moved = products.with_products(graph, {sign: "oneDNN"})
    (y,) = moved(x, weight, counter)
    torch.testing.assert_close(y, x @ weight.t())
    assert counter.item() == 1
    targets = [node.target for node in moved.graph.nodes if node.op == "call_function"]
    assert products.onednn_linear() in targets and torch.t not in targets  # the weight itself
