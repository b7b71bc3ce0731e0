"""Full-batch L-BFGS to a stationary point (lit_eraser.models.converge), and what it buys: at a converged θ̂ the
exact influence solve with damping = l2 is the Newton step of the edited objective, so it agrees with warm
retraining to convergence (the fidelity reference of METHOD.md) without any pairing."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from lit_eraser.baselines import BaselineContext, fit_on_rows, warm_retrain
from lit_eraser.influence import cosine
from lit_eraser.influence._utils import tadd
from lit_eraser.influence.solvers import ExactSettings
from lit_eraser.models.converge import ConvergeSettings, converge, objective_and_gradient
from lit_eraser.unlearning.eraser import apply_delta, compute_update
from lit_eraser.unlearning.experiment import pearson, per_item_losses, probe_rows
from lit_eraser.unlearning.recipes import load_recipe
from lit_eraser.unlearning.requests import build_pairs

REPO = Path(__file__).resolve().parents[1]


def gradient_norm(module, rows, n: int, l2: float) -> float:
    """‖∇J‖ of (1/n) Σ_rows ℓ + (l2/2)‖θ‖² at the module's adapter."""
    encoded = [module.encode(rows[i : i + 32]) for i in range(0, len(rows), 32)]
    objective_and_gradient(module, encoded, n, l2)
    norm = float(torch.cat([p.grad.reshape(-1) for p in module.adapter_parameters().values()]).norm())
    for p in module.adapter_parameters().values():
        p.grad = None
    return norm


@pytest.mark.parametrize("key, value", [("max_iter", 0), ("batch_size", 1.5), ("l2", -1.0), ("grad_tol", float("nan"))])
def test_settings_refuse_bad_values(key: str, value: float) -> None:
    with pytest.raises(ValueError, match=f"converge.{key}"):
        ConvergeSettings(**{key: value})


def test_refuses_no_rows() -> None:
    with pytest.raises(ValueError, match="at least one"):
        converge(torch.nn.Linear(1, 1), [], ConvergeSettings())


@pytest.fixture(scope="module", params=["synthetic_qm", "synthetic_rc", "synthetic_ir"])
def converged(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    torch.manual_seed(0)
    recipe = load_recipe(REPO / "configs" / f"{request.param}.yaml")
    fit_on_rows(recipe.model, recipe.datamodule, None, recipe.trainer_kwargs)
    rows = list(recipe.datamodule.train_rows)
    settings = ConvergeSettings(max_iter=400, grad_tol=1e-7, l2=recipe.unlearn.damping)
    report = converge(recipe.model, rows, settings)
    run_dir = tmp_path_factory.mktemp(request.param) / "run"
    recipe.model.save_run(run_dir)
    return request.param, recipe, rows, settings, report, run_dir


def test_lbfgs_reaches_a_stationary_point(converged) -> None:
    name, recipe, rows, settings, report, _ = converged
    print(f"\n{name}: {report.as_dict()}")
    assert report.objective_after < report.objective_before
    # float32 losses put a floor near 1e-2 on ‖∇J‖ (the line search cannot resolve smaller decreases)
    assert report.grad_norm_after <= 0.02 * report.grad_norm_before
    assert report.grad_norm_after == pytest.approx(gradient_norm(recipe.model, rows, len(rows), settings.l2), rel=1e-3)
    assert report.evaluations >= 2 and report.cost.seconds > 0


def test_exact_step_agrees_with_converged_warm_retraining(converged) -> None:
    """Δ = (H + l2·I)⁻¹ b from the converged θ̂ against L-BFGS continued on the edited rows (warm_retrain with
    ``converge``): the step removes most of the edited objective's gradient, points where warm retraining
    went, and predicts the per-request loss changes."""
    name, recipe, rows, settings, _, run_dir = converged
    requests, clean = recipe.corruption.requests, list(recipe.corruption.clean_rows)
    module = recipe.model
    theta_hat = module.adapter_state()
    exact = compute_update(module, rows, requests, dataclasses.replace(recipe.unlearn, solver=ExactSettings()))
    context = BaselineContext(run_dir, recipe.datamodule, rows, clean, requests, recipe.trainer_kwargs, converge=settings)
    warm, cost = warm_retrain(context)
    assert cost.seconds > 0 and warm.converge_report["grad_norm_after"] < warm.converge_report["grad_norm_before"]

    probes = probe_rows(build_pairs(requests, {int(r["id"]): r for r in rows}))
    before = per_item_losses(module, probes)
    n = len(rows)
    grad_at_theta_hat = gradient_norm(module, clean, n, settings.l2)
    apply_delta(module, exact.delta)
    predicted = per_item_losses(module, probes) - before
    grad_after_step = gradient_norm(module, clean, n, settings.l2)
    module.load_adapter_state(theta_hat)
    actual = per_item_losses(warm, probes) - before
    direction = cosine(exact.delta, tadd(warm.adapter_state(), theta_hat, -1.0))
    print(f"\n{name}: ‖∇J_clean‖ {grad_at_theta_hat:.4f} -> {grad_after_step:.4f} after θ̂+Δ; cosine(Δ, warm − θ̂) "
          f"{direction:.3f}; predicted {np.round(predicted, 4)} actual {np.round(actual, 4)}")
    assert grad_after_step <= 0.5 * grad_at_theta_hat
    assert direction >= 0.5
    assert pearson(predicted, actual) >= 0.9
    assert np.linalg.norm(predicted - actual) <= 0.5 * np.linalg.norm(actual)


def test_unlearn_cli_with_converge(tmp_path: Path) -> None:
    """``--converge``: θ̂ is finished by L-BFGS (its seconds count as training), warm retraining continues that
    L-BFGS on the edited rows, and the unpaired fidelity is then high."""
    from lit_eraser.cli.unlearn_cli import main as unlearn_main

    out = tmp_path / "exp"
    report = unlearn_main([
        "--config", str(REPO / "configs/synthetic_qm.yaml"), "--output_dir", str(out), "--wandb_mode", "disabled",
        "--cache_dir", str(tmp_path / "cache"), "--unlearn.solver", "ExactSettings",
        "--converge.max_iter", "300", "--converge.l2", "1.0", "--baselines", "[warm_retrain]",
    ])
    original, warm = report["methods"]["original"], report["methods"]["warm_retrain"]
    finish = original["converge"]
    assert finish["grad_norm_after"] <= 0.02 * finish["grad_norm_before"]
    assert original["seconds"] == pytest.approx(original["minibatch_fit_seconds"] + finish["seconds"], rel=0.05)
    assert warm["converge"]["grad_norm_after"] < warm["converge"]["grad_norm_before"]
    assert report["fidelity"]["pearson_vs_warm_retrain"] >= 0.9
    assert report["fidelity"]["cosine_delta_vs_warm_retrain"] >= 0.5
    assert json.loads((out / "report.json").read_text())["methods"]["original"]["converge"] == finish


def test_converge_with_a_given_adapter_is_refused(tmp_path: Path) -> None:
    from lit_eraser.unlearning.corruption import CorruptionSpec
    from lit_eraser.unlearning.experiment import ExperimentPlan

    with pytest.raises(ValueError, match="--converge finishes the adapter this run trains"):
        ExperimentPlan(output_dir=tmp_path / "out", adapter=tmp_path / "adapter", corruption=CorruptionSpec(), converge=ConvergeSettings())


def test_exact_step_leaves_the_lora_rotation_orbit_alone(converged) -> None:
    """At a converged θ̂ with damping = l2, H_λ is singular along LoRA's rotation orbit (B → BQ, A → QᵀA leaves
    loss and ‖θ‖² unchanged). The exact solve must not move along it: there a plain solve divides round-off
    by round-off, which is what made the IR step CPU-dependent (cosine 0.27 vs warm retraining on one CPU,
    0.99 on another)."""
    from lit_eraser.influence import InfluenceProblem
    from lit_eraser.influence._utils import flatten
    from lit_eraser.influence.solvers import ExactSolver
    from lit_eraser.influence.symmetry import lora_rotation_directions
    from lit_eraser.unlearning.eraser import curvature_batches

    name, recipe, rows, settings, _, _ = converged
    module = recipe.model
    unlearn = dataclasses.replace(recipe.unlearn, solver=ExactSettings())
    train_batches, residual_batches = curvature_batches(rows, unlearn)
    problem = InfluenceProblem.for_module(
        module, train_batches, len(rows), damping=unlearn.damping, curvature=unlearn.curvature, residual_batches=residual_batches
    )
    h = ExactSolver(ExactSettings()).dense_curvature(problem)
    h = h + unlearn.damping * torch.eye(h.shape[0], dtype=h.dtype)
    orbit = lora_rotation_directions(module.adapter_parameters())
    if orbit.shape[1] == 0:  # rank-1 LoRA has no rotation orbit
        assert compute_update(module, rows, recipe.corruption.requests, unlearn).info.extra["gauge_directions"] == 0
        return
    orbit_curvature, mixing = torch.linalg.eigh(orbit.T @ h @ orbit)
    top = float(torch.linalg.matrix_norm(h, ord=2))
    print(f"\n{name}: orbit curvature {orbit_curvature.tolist()} vs largest eigenvalue {top:.3f}")
    flat = orbit @ mixing[:, orbit_curvature.abs() <= 1e-4 * top]
    exact = compute_update(module, rows, recipe.corruption.requests, unlearn)
    assert exact.info.extra["gauge_directions"] == flat.shape[1]
    # the step is orthogonal to every flat orbit direction (float32 round-off only; the CPU-dependent plain
    # solve had ~0.4·‖Δ‖ there)
    assert float((flat.T @ flatten(exact.delta).double()).norm()) <= 1e-6 * exact.delta_norm
