"""The influence QP as a LightningModule (InfluenceSolver) and the ``qp`` solver that runs it in a Trainer."""

from __future__ import annotations

import os
import sys
import warnings

import lightning as L
import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))

from influence_toys import (  # noqa: E402
    assert_unchanged,
    attention_setup,
    chunk,
    dense_hessian,
    encode_regression,
    logreg_setup,
    one_thread,  # noqa: F401  (autouse fixture)
    snapshot,
)

from lit_eraser.influence import (  # noqa: E402
    InfluenceProblem,
    InfluenceSolver,
    batches_loader,
    cosine,
    relative_error,
    rhs,
    solve,
)
from lit_eraser.influence._utils import flatten  # noqa: E402

QUIET = dict(accelerator="cpu", enable_progress_bar=False)


@pytest.fixture(autouse=True)
def _quiet_lightning():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _logreg_problem(n=48, batch_size=12):
    module, params, batches, rows = logreg_setup(n=n, batch_size=batch_size)
    problem = InfluenceProblem(module, params, batches, n_train=n, encode=encode_regression)
    added = [dict(r, y=1.0 - r["y"]) for r in rows[2:4]]
    b = rhs(module, params, [rows[:4]], [added], n_train=n, encode=encode_regression)
    return problem, b


def _attention_problem(dtype=torch.float64):
    module, params, batches = attention_setup(n=32, batch_size=8)
    module.to(dtype)
    batches = [{k: v for k, v in bt.items()} for bt in batches]
    H = dense_hessian(module, params, batches)
    lam = float(-torch.linalg.eigvalsh(H)[0] + 0.05)  # damping past the most negative eigenvalue
    problem = InfluenceProblem(module, params, batches, n_train=32, damping=lam)
    removed = {k: v[:3] for k, v in batches[1].items()}
    added = {k: v.clone() for k, v in removed.items()}
    added["tokens"][:, 1] = (added["tokens"][:, 1] + 3) % 11
    b = rhs(module, params, [removed], [added], n_train=32)
    return problem, b


def test_only_parameters_are_delta_and_the_recommender_is_held_not_registered():
    problem, b = _logreg_problem()
    solver = InfluenceSolver(problem.module, problem.params, b, encode=encode_regression)
    names = [k for k, _ in solver.named_parameters()]
    assert names == ["delta.0", "delta.1"]
    assert [tuple(p.shape) for p in solver.parameters()] == [tuple(p.shape) for p in problem.params.values()]
    assert all(float(p.abs().sum()) == 0 for p in solver.parameters())
    assert problem.module not in list(solver.modules())
    assert not any(k.startswith("_recommender") or "linear" in k for k in solver.state_dict())


def test_surrogate_gradient_is_exactly_the_qp_gradient_at_theta_hat():
    problem, b = _attention_problem()
    batch = problem.train_batches[2]
    gen = torch.Generator().manual_seed(3)
    init = {k: 0.1 * torch.randn(p.shape, generator=gen, dtype=p.dtype) for k, p in problem.params.items()}
    solver = InfluenceSolver(problem.module, problem.params, b, damping=problem.damping, init=init)
    before = snapshot(problem.module)
    loss = solver.training_step(batch, 0)
    loss.backward()
    grad = torch.cat([p.grad.reshape(-1) for p in solver.delta])
    HB = dense_hessian(problem.module, problem.params, [batch])
    d = flatten(init)
    expected = HB @ d + problem.damping * d - flatten(b)  # H at θ̂, not at θ̂ + Δ
    assert torch.allclose(grad, expected, rtol=1e-10, atol=1e-13)
    assert_unchanged(problem.module, before)


def test_qp_matches_exact_on_a_convex_problem():
    problem, b = _logreg_problem()
    exact, _ = solve(problem, b, "exact")
    delta, info = solve(problem, b, "qp", max_epochs=40, tol=1e-3, **QUIET)
    cos, err = cosine(delta, exact), relative_error(delta, exact)
    print(f"\nqp convex: cosine {cos:.5f}, relative error {err:.4f}, steps {info['steps']}, residual {info.relative_residual:.2e}")
    assert cos >= 0.99 and err <= 0.05
    assert info.relative_residual <= 0.05 and info.hvp_calls > info["steps"] > 0


def test_qp_matches_exact_on_a_non_convex_problem_with_damping():
    problem, b = _attention_problem()
    exact, info_e = solve(problem, b, "exact")
    delta, info = solve(problem, b, "qp", max_epochs=60, tol=1e-3, **QUIET)
    cos, err = cosine(delta, exact), relative_error(delta, exact)
    print(f"\nqp non-convex: cosine {cos:.5f}, relative error {err:.4f}, steps {info['steps']}, "
          f"residual {info.relative_residual:.2e}, eig(H_λ) in [{info_e['min_eigenvalue']:.3f}, {info_e['max_eigenvalue']:.3f}]")
    assert cos >= 0.99 and err <= 0.05


@pytest.mark.parametrize("optimizer,lr,schedule", [("sgd", None, "linear"), ("adam", 0.05, "cosine"), ("momentum", None, "constant")])
def test_qp_optimisers(optimizer, lr, schedule):
    problem, b = _logreg_problem()
    exact, _ = solve(problem, b, "exact")
    delta, info = solve(problem, b, "qp", optimizer=optimizer, lr=lr, schedule=schedule, max_epochs=40, tol=None, **QUIET)
    assert cosine(delta, exact) > 0.98, (optimizer, cosine(delta, exact))
    assert info["steps"] == 40 * len(problem.train_batches)


def test_budget_and_early_stopping():
    problem, b = _logreg_problem()
    _, info = solve(problem, b, "qp", max_steps=5, max_epochs=10, tol=None, **QUIET)
    assert info["steps"] == 5
    _, info = solve(problem, b, "qp", limit_train_batches=2, max_epochs=3, tol=None, **QUIET)
    assert info["steps"] == 6
    _, info = solve(problem, b, "qp", max_epochs=200, val_check_interval=2, tol=0.2, **QUIET)
    assert info["stopped_early"] and info["steps"] < 200 * 4 and info.relative_residual < 0.2


def test_validation_needs_autograd():
    problem, b = _logreg_problem()
    solver = InfluenceSolver(problem.module, problem.params, b, encode=encode_regression)
    trainer = L.Trainer(logger=False, inference_mode=True, enable_progress_bar=False, accelerator="cpu")
    with pytest.raises(RuntimeError, match="inference_mode=False"):
        trainer.validate(solver, batches_loader(problem.train_batches))
    trainer = L.Trainer(logger=False, inference_mode=False, enable_progress_bar=False, accelerator="cpu")
    (metrics,) = trainer.validate(solver, batches_loader(problem.train_batches))
    assert metrics["val/relative_residual"] == pytest.approx(1.0)  # Δ = 0


def test_bf16_mixed_precision_on_cpu():
    problem, b = _attention_problem(dtype=torch.float32)
    exact, _ = solve(problem, b, "exact")
    delta, info = solve(problem, b, "qp", precision="bf16-mixed", max_epochs=30, tol=None, **QUIET)
    cos = cosine(delta, exact)
    print(f"\nqp bf16-mixed: cosine {cos:.4f}, relative error {relative_error(delta, exact):.4f}")
    assert all(v.dtype == torch.float32 for v in delta.values())
    assert cos > 0.95


def test_ddp_two_processes_equal_one_process():
    """2-process CPU DDP (ddp_fork, gloo) = 1 process: rank r gets half r of every 1-process batch, DDP averages."""
    module, params, _, rows = logreg_setup(n=48, batch_size=12)
    full = chunk(rows, 8)  # 6 batches of 8
    halves = [h for batch in full for h in (batch[:4], batch[4:])]  # rank 0: even, rank 1: odd
    added = [dict(r, y=1.0 - r["y"]) for r in rows[:3]]
    b = rhs(module, params, [rows[:3]], [added], n_train=48, encode=encode_regression)
    settings = dict(optimizer="momentum", lr=1.0, schedule="cosine", max_epochs=3, tol=None, **QUIET)
    one = InfluenceProblem(module, params, full, n_train=48, encode=encode_regression, damping=0.01,
                           residual_batches=full)
    two = InfluenceProblem(module, params, halves, n_train=48, encode=encode_regression, damping=0.01,
                           residual_batches=halves)
    delta1, info1 = solve(one, b, "qp", **settings)
    delta2, info2 = solve(two, b, "qp", strategy="ddp_fork", devices=2, **settings)
    assert info2["world_size"] == 2 and info2["steps"] == info1["steps"] == 18
    assert float(flatten(delta1).norm()) > 0
    assert relative_error(delta2, delta1) < 1e-10
    assert info2.relative_residual == pytest.approx(info1.relative_residual, rel=1e-8)
    assert info2.hvp_calls == 2 * info1.hvp_calls  # summed over ranks: each makes as many products as 1 process


def test_rank_sampler_splits_batches_deterministically(monkeypatch):
    from lit_eraser.influence import solver_module

    def positions(size, world, **kwargs):
        out = []
        for rank in range(world):
            monkeypatch.setattr(solver_module, "_rank_and_world", lambda rank=rank: (rank, world))
            out.append(list(solver_module.RankSampler(size, **kwargs)))
        return out

    assert positions(6, 2) == [[0, 2, 4], [1, 3, 5]]
    assert positions(5, 2) == [[0, 2, 4], [1, 3, 0]]  # padded: equal counts for training
    assert positions(5, 2, pad=False) == [[0, 2, 4], [1, 3]]  # residual batches: none counted twice
    assert positions(1, 2, pad=False) == [[0], [0]]  # but every rank gets one
    a, b = positions(8, 2, shuffle=True, seed=3)
    assert sorted(a + b) == list(range(8)) and a != [0, 2, 4, 6]
    assert positions(8, 2, shuffle=True, seed=3) == [a, b]  # same permutation on every rank, every run
    assert positions(4, 1) == [[0, 1, 2, 3]]


def test_qp_with_gauss_newton_curvature_matches_exact():
    from influence_toys import MLP, fit, regression_rows

    torch.manual_seed(0)
    module = MLP().to(torch.float64)
    rows = regression_rows(40, 5, classes=3, seed=2)
    fit(module, module.adapter_parameters(), chunk(rows, 40), encode_regression, steps=30)
    problem = InfluenceProblem(module, module.adapter_parameters(), chunk(rows, 10), n_train=40,
                               encode=encode_regression, damping=0.05, curvature="gauss_newton")
    b = rhs(module, problem.params, [rows[:4]], [[dict(r, y=(r["y"] + 1) % 3) for r in rows[:4]]], n_train=40,
            encode=encode_regression)
    exact, _ = solve(problem, b, "exact")
    # κ(G_B + λI) ≈ 100 over single batches: Adam's diagonal scaling converges faster than the cautious auto-lr momentum
    delta, info = solve(problem, b, "qp", optimizer="adam", lr=0.05, max_epochs=60, tol=1e-3, **QUIET)
    assert cosine(delta, exact) >= 0.99 and relative_error(delta, exact) <= 0.05
