"""The right-hand side b = (1/n) Σ_e [∇ℓ(z_e) − ∇ℓ(z'_e)] of lit_eraser.influence.rhs."""

from __future__ import annotations

import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))

from influence_toys import (  # noqa: E402
    DTYPE,
    MLP,
    assert_unchanged,
    chunk,
    encode_regression,
    logreg_setup,
    one_thread,  # noqa: F401  (autouse fixture)
    regression_rows,
    snapshot,
)

from lit_eraser.influence import gradient_sum, rhs  # noqa: E402
from lit_eraser.influence._utils import flatten  # noqa: E402


def _item_grad(module, params, row):
    """∇ℓ(z) for one row, by hand, in eval mode."""
    was = module.training
    module.eval()
    try:
        loss = module(encode_regression([row]))
        assert loss.shape == (1,)
        grads = torch.autograd.grad(loss[0], list(params.values()))
        return torch.cat([g.reshape(-1) for g in grads])
    finally:
        module.train(was)


def test_b_is_the_paired_gradient_difference_over_n():
    module, params, _, rows = logreg_setup(n=40)
    n = len(rows)
    removed = rows[:5]  # row 0, 1: IR; rows 2-4: edited (RC: flipped label / QM: perturbed query)
    added = [dict(rows[2], y=1.0 - rows[2]["y"]), dict(rows[3], y=1.0 - rows[3]["y"]),
             dict(rows[4], x=[v + 0.5 for v in rows[4]["x"]])]
    b = rhs(module, params, chunk(removed, 2), [added], n_train=n, encode=encode_regression)
    ref = (sum(_item_grad(module, params, r) for r in removed) - sum(_item_grad(module, params, r) for r in added)) / n
    assert list(b) == list(params)
    assert torch.allclose(flatten(b), ref, rtol=1e-12, atol=1e-15)
    # IR only: the z' term is absent; explicit renormalisation by n - |S|
    b_ir = rhs(module, params, [rows[:2]], None, n_train=n, encode=encode_regression, normalizer=n - 2)
    ref_ir = (_item_grad(module, params, rows[0]) + _item_grad(module, params, rows[1])) / (n - 2)
    assert torch.allclose(flatten(b_ir), ref_ir, rtol=1e-12, atol=1e-15)


def test_b_does_not_depend_on_batching():
    module, params, _, rows = logreg_setup(n=40)
    added = [dict(r, y=1.0 - r["y"]) for r in rows[:6]]
    b1 = rhs(module, params, [rows[:6]], [added], n_train=40, encode=encode_regression)
    b2 = rhs(module, params, chunk(rows[:6], 4), chunk(added, 1), n_train=40, encode=encode_regression)
    assert torch.allclose(flatten(b1), flatten(b2), rtol=1e-12, atol=1e-15)


def test_b_is_computed_without_dropout_and_leaves_the_module_as_found():
    torch.manual_seed(0)
    module = MLP(dropout=0.5).to(DTYPE)
    params = module.adapter_parameters()
    rows = regression_rows(30, 5, classes=3, seed=4)
    added = [dict(r, y=(r["y"] + 1) % 3) for r in rows[:4]]
    module.train()  # as a training loop would leave it: dropout active
    before = snapshot(module)
    b1 = rhs(module, params, [rows[:4]], [added], n_train=30, encode=encode_regression)
    b2 = rhs(module, params, [rows[:4]], [added], n_train=30, encode=encode_regression)
    assert torch.equal(flatten(b1), flatten(b2))
    module.eval()
    ref = (sum(_item_grad(module, params, r) for r in rows[:4]) - sum(_item_grad(module, params, r) for r in added)) / 30
    module.train()
    assert torch.allclose(flatten(b1), ref, rtol=1e-12, atol=1e-15)
    assert module.training and module.drop.training  # mode restored
    assert_unchanged(module, before)  # no weights, no .grad written


def test_gradient_sum_counts_items():
    module, params, _, rows = logreg_setup(n=20)
    total, count = gradient_sum(module, params, chunk(rows, 6), encode=encode_regression)
    assert count == 20
    ref = sum(_item_grad(module, params, r) for r in rows)
    assert torch.allclose(flatten(total), ref, rtol=1e-10, atol=1e-13)


def test_rhs_errors():
    module, params, _, rows = logreg_setup(n=20, fitted=False)
    with pytest.raises(ValueError, match="n_train"):
        rhs(module, params, [rows[:1]], None, encode=encode_regression)
    with pytest.raises(ValueError, match="no items"):
        rhs(module, params, [], None, n_train=20, encode=encode_regression)
    with pytest.raises(ValueError, match="normalizer"):
        rhs(module, params, [rows[:1]], None, n_train=20, normalizer=0, encode=encode_regression)
    with pytest.raises(KeyError, match="named_parameters"):
        rhs(module, {"nope": params["linear.weight"]}, [rows[:1]], None, n_train=20, encode=encode_regression)
