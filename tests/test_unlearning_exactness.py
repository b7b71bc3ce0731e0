"""Acceptance: on the shipped synthetic recipes (IR, QM, RC) the QP solver's Δ — with the recipe's own settings —
matches the exact dense solve (cosine ≥ 0.99, relative error ≤ 5%), and so does CG."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from lit_eraser.baselines import fit_on_rows
from lit_eraser.influence import cosine, relative_error
from lit_eraser.influence.solvers import CGSettings, ExactSettings, QPSettings
from lit_eraser.unlearning.eraser import apply_delta, compute_update
from lit_eraser.unlearning.recipes import load_recipe

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module", params=["synthetic_ir", "synthetic_qm", "synthetic_rc"])
def solved(request: pytest.FixtureRequest):
    torch.manual_seed(0)
    recipe = load_recipe(REPO / "configs" / f"{request.param}.yaml")
    fit_on_rows(recipe.model, recipe.datamodule, None, recipe.trainer_kwargs)
    rows, requests = list(recipe.datamodule.train_rows), recipe.corruption.requests
    exact = compute_update(recipe.model, rows, requests, dataclasses.replace(recipe.unlearn, solver=ExactSettings()))
    return request.param, recipe, rows, requests, exact


def test_recipe_task_and_qp_settings(solved) -> None:
    name, recipe, _, requests, exact = solved
    assert {r.task for r in requests} == {name.split("_")[1].upper()}
    assert isinstance(recipe.unlearn.solver, QPSettings)
    # damping above the most negative curvature: the QP is bounded
    assert exact.info.extra["min_eigenvalue"] > 0
    assert exact.info.relative_residual < 1e-3


def test_qp_matches_exact(solved) -> None:
    name, recipe, rows, requests, exact = solved
    qp = compute_update(recipe.model, rows, requests, recipe.unlearn)
    cos, err = cosine(qp.delta, exact.delta), relative_error(qp.delta, exact.delta)
    print(f"\n{name}: qp vs exact cosine {cos:.5f} relative error {err:.4f} residual {qp.info.relative_residual:.2e}")
    assert cos >= 0.99 and err <= 0.05
    assert qp.info.relative_residual < 0.05


def test_cg_matches_exact(solved) -> None:
    name, recipe, rows, requests, exact = solved
    cg = compute_update(recipe.model, rows, requests, dataclasses.replace(recipe.unlearn, solver=CGSettings(max_iter=100, tol=1e-8)))
    assert cosine(cg.delta, exact.delta) >= 0.99 and relative_error(cg.delta, exact.delta) <= 0.01


def test_update_moves_requests_the_right_way(solved) -> None:
    """θ̂ + Δ lowers the loss of the edited items z' (QM/RC) or raises that of removed items (IR)."""
    name, recipe, rows, requests, exact = solved
    from lit_eraser.unlearning.experiment import per_item_losses, probe_rows
    from lit_eraser.unlearning.requests import build_pairs

    module = recipe.model
    probes = probe_rows(build_pairs(requests, {int(r["id"]): r for r in rows}))
    before = per_item_losses(module, probes)
    theta_hat = module.adapter_state()
    apply_delta(module, exact.delta)
    after = per_item_losses(module, probes)
    module.load_adapter_state(theta_hat)
    change = float((after - before).mean())
    assert change > 0 if name == "synthetic_ir" else change < 0
