"""Curvature-vector products of lit_eraser.influence.hvp against dense references on toy modules."""

from __future__ import annotations

import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))

from influence_toys import (  # noqa: E402
    DTYPE,
    MLP,
    LogReg,
    assert_unchanged,
    attention_setup,
    chunk,
    dense_hessian,
    encode_regression,
    logreg_setup,
    one_thread,  # noqa: F401  (autouse fixture)
    regression_rows,
    snapshot,
)

from lit_eraser.influence import CurvatureOperator, dataset_hvp, hvp  # noqa: E402
from lit_eraser.influence._utils import flatten  # noqa: E402
from lit_eraser.influence.hvp import HVP_IMPLS  # noqa: E402


def _random_like(params, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return {k: torch.randn(p.shape, generator=gen, dtype=p.dtype) for k, p in params.items()}


def _mlp_setup():
    torch.manual_seed(0)
    module = MLP().to(DTYPE)
    rows = regression_rows(40, 5, classes=3, seed=2)
    return module, module.adapter_parameters(), chunk(rows, 10)


@pytest.mark.parametrize("impl", HVP_IMPLS)
@pytest.mark.parametrize("toy", ["logreg", "mlp", "attention"])
def test_hvp_equals_dense_hessian_times_v(toy, impl):
    if toy == "logreg":
        module, params, batches, _ = logreg_setup()
        encode = encode_regression
    elif toy == "mlp":
        module, params, batches = _mlp_setup()
        encode = encode_regression
    else:
        module, params, batches = attention_setup()
        encode = None
    module.train()  # dropout on: the engine must switch it off
    before = snapshot(module)
    H = dense_hessian(module, params, batches, encode)
    v = _random_like(params)
    damping = 0.3
    out = dataset_hvp(module, params, batches, v, damping=damping, encode=encode, impl=impl)
    ref = H @ flatten(v) + damping * flatten(v)
    assert torch.allclose(flatten(out), ref, rtol=1e-9, atol=1e-11)
    # one batch, batch-mean Hessian
    H1 = dense_hessian(module, params, batches[:1], encode)
    out1 = hvp(module, params, batches[0], v, encode=encode, impl=impl)
    assert torch.allclose(flatten(out1), H1 @ flatten(v), rtol=1e-9, atol=1e-11)
    assert module.training and all(m.training for m in module.modules())
    assert_unchanged(module, before)


def test_dataset_hvp_does_not_depend_on_batching():
    module, params, _, rows = logreg_setup(n=36)
    v = _random_like(params)
    results = [
        flatten(dataset_hvp(module, params, chunk(rows, size), v, damping=0.1, encode=encode_regression))
        for size in (1, 5, 12, 36)  # 5 leaves a ragged last batch
    ]
    for r in results[1:]:
        assert torch.allclose(r, results[0], rtol=1e-12, atol=1e-14)


def _dense_gauss_newton(module, params, batches, encode=None):
    """Σ_i J_iᵀ ∇²_o ℓ_i J_i / n, with J and the output Hessian formed densely by torch.autograd.functional."""
    from torch.func import functional_call

    from lit_eraser.influence._utils import unflatten

    like = {k: p.detach() for k, p in params.items()}
    x0 = flatten(like)
    total = torch.zeros(x0.numel(), x0.numel(), dtype=torch.float64)
    count = 0
    module.eval()
    wrapper = _HookOutputs(module)
    for raw in batches:
        batch = encode(raw) if encode else raw
        _, loss_fn = module.gauss_newton_outputs(batch)

        def outputs(flat, batch=batch):
            return functional_call(wrapper, {f"m.{k}": v for k, v in unflatten(flat, like).items()}, (batch,))

        out0 = outputs(x0)
        J = torch.autograd.functional.jacobian(outputs, x0).reshape(out0.numel(), -1)
        Ho = torch.autograd.functional.hessian(lambda z: loss_fn(z.reshape(out0.shape)).sum(), out0.reshape(-1))
        total += J.T @ Ho @ J
        count += out0.shape[0]
    return total / count


class _HookOutputs(torch.nn.Module):
    """``forward`` = the module's Gauss–Newton outputs, so ``functional_call`` can reparametrise it."""

    def __init__(self, m):
        super().__init__()
        self.m = m

    def forward(self, batch):
        return self.m.gauss_newton_outputs(batch)[0]


@pytest.mark.parametrize("toy", ["logreg", "mlp", "attention"])
def test_gauss_newton_product_equals_dense_JtHJ(toy):
    if toy == "logreg":
        module, params, batches, _ = logreg_setup(reg=0.0, n=24)
        encode = encode_regression
    elif toy == "mlp":
        module, params, batches = _mlp_setup()
        encode = encode_regression
    else:
        module, params, batches = attention_setup(n=16)
        encode = None
    G = _dense_gauss_newton(module, params, batches, encode)
    module.train()
    v = _random_like(params)
    out = dataset_hvp(module, params, batches, v, damping=0.2, curvature="gauss_newton", encode=encode)
    ref = G @ flatten(v) + 0.2 * flatten(v)
    assert torch.allclose(flatten(out), ref, rtol=1e-8, atol=1e-11)
    assert module.training
    # PSD: vᵀGv >= 0 for random directions, even though the Hessian of the attention toy is indefinite
    for seed in range(5):
        w = _random_like(params, seed=10 + seed)
        gw = dataset_hvp(module, params, batches, w, curvature="gauss_newton", encode=encode)
        assert float(flatten(gw) @ flatten(w)) >= -1e-12


def test_gauss_newton_equals_hessian_for_logistic_regression():
    """For a linear model the residual term vanishes: GGN == Hessian."""
    module, params, batches, _ = logreg_setup(reg=0.0, n=24)
    v = _random_like(params)
    a = dataset_hvp(module, params, batches, v, curvature="gauss_newton", encode=encode_regression)
    b = dataset_hvp(module, params, batches, v, curvature="hessian", encode=encode_regression)
    assert torch.allclose(flatten(a), flatten(b), rtol=1e-10, atol=1e-13)


def test_gauss_newton_without_hook_is_a_clear_error():
    class NoHook(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(3, dtype=DTYPE))

        def forward(self, batch):
            return (batch @ self.w) ** 2

    module = NoHook()
    with pytest.raises(TypeError, match="gauss_newton_outputs"):
        hvp(module, {"w": module.w}, torch.ones(2, 3, dtype=DTYPE), {"w": torch.ones(3, dtype=DTYPE)}, curvature="gauss_newton")


def test_only_theta_is_differentiated_and_frozen_params_untouched():
    module, params, batches = attention_setup(n=16)
    frozen = {k: p for k, p in module.named_parameters() if k not in params}
    assert frozen and all(not p.requires_grad for p in frozen.values())
    before = snapshot(module)
    v = _random_like(params)
    out = dataset_hvp(module, params, batches, v)
    assert list(out) == list(params)
    assert_unchanged(module, before)
    assert all(not p.requires_grad for p in frozen.values())  # flags restored


def test_params_that_do_not_require_grad_are_handled_and_restored():
    module, params, batches, _ = logreg_setup(n=24)
    for p in params.values():
        p.requires_grad_(False)
    v = _random_like(params)
    H = dense_hessian(module, params, batches, encode_regression)
    out = dataset_hvp(module, params, batches, v, encode=encode_regression)
    assert torch.allclose(flatten(out), H @ flatten(v), rtol=1e-9, atol=1e-12)
    assert all(not p.requires_grad for p in params.values())


def test_clear_errors():
    module, params, batches, _ = logreg_setup(n=24, fitted=False)
    v = _random_like(params)
    with pytest.raises(ValueError, match="unknown curvature"):
        dataset_hvp(module, params, batches, v, curvature="fisher", encode=encode_regression)
    with pytest.raises(ValueError, match="unknown HVP implementation"):
        dataset_hvp(module, params, batches, v, impl="magic", encode=encode_regression)
    with pytest.raises(ValueError, match="damping"):
        CurvatureOperator(module, params, batches, damping=-1.0)

    class Scalar(LogReg):
        def forward(self, batch):
            return super().forward(batch).mean()

    bad = Scalar(6).to(DTYPE)
    with pytest.raises(ValueError, match="1-D tensor of per-item losses"):
        hvp(bad, bad.adapter_parameters(), batches[0], _random_like(bad.adapter_parameters()), encode=encode_regression)
    with torch.inference_mode(), pytest.raises(RuntimeError, match="inference_mode=False"):
        hvp(module, params, batches[0], v, encode=encode_regression)


def test_recommender_module_contract(tmp_path):
    """The engine on the real (tiny, random-init) LLaRA recommender: θ only, implementations agree, GN is PSD."""
    from lit_eraser.data import SyntheticDataModule
    from lit_eraser.models import LlaraRecommender, LoraSettings, SasrecSettings, TinyLlamaSettings

    torch.manual_seed(0)
    dm = SyntheticDataModule(kind="sequential", n_train=16, n_val=4, n_test=4)
    dm.setup("fit")
    module = LlaraRecommender(
        tiny=TinyLlamaSettings(hidden_size=32, num_layers=1, num_heads=2, max_position_embeddings=512),
        sasrec=SasrecSettings(hidden_size=16, num_layers=1, num_heads=1, epochs=1, batch_size=64),
        lora=LoraSettings(r=2, alpha=4, dropout=0.1), vocab_size=400, cache_dir=str(tmp_path),
    ).build(dm)
    params = module.adapter_parameters()
    with torch.no_grad():
        for name, p in params.items():
            if "lora_B" in name:
                p.normal_(0.0, 0.05)
    rows = [dm.train_rows[i] for i in range(4)]
    module.train()
    before = snapshot(module)
    u, v = _random_like(params, 1), _random_like(params, 2)
    hu = hvp(module, params, rows, u, encode=module.encode)
    hv = hvp(module, params, rows, v, encode=module.encode)
    hv_func = hvp(module, params, rows, v, encode=module.encode, impl="func_vjp")
    assert torch.allclose(flatten(hv_func), flatten(hv), rtol=1e-3, atol=1e-6)
    # symmetric: uᵀHv = vᵀHu
    assert float(flatten(u) @ flatten(hv)) == pytest.approx(float(flatten(v) @ flatten(hu)), rel=1e-3)
    gv = hvp(module, params, rows, v, curvature="gauss_newton", encode=module.encode)
    assert float(flatten(gv) @ flatten(v)) >= 0
    assert module.training
    assert_unchanged(module, before)
