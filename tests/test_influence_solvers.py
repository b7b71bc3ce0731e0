"""Solvers of H_λ Δ = b (lit_eraser.influence.solvers) against dense references on toy modules."""

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
    attention_setup,
    chunk,
    dense_hessian,
    encode_regression,
    fit,
    logreg_setup,
    one_thread,  # noqa: F401  (autouse fixture)
    regression_rows,
    snapshot,
)

from lit_eraser.influence import (  # noqa: E402
    SOLVERS,
    CGSettings,
    ExactSettings,
    InfluenceProblem,
    QPSettings,
    cosine,
    get_solver,
    group_parameters,
    relative_error,
    rhs,
    solve,
)
from lit_eraser.influence._utils import flatten, unflatten  # noqa: E402

QUIET_QP = dict(accelerator="cpu", enable_progress_bar=False)


def _mlp_problem(batch_size=10, damping=0.05, curvature="hessian"):
    torch.manual_seed(0)
    module = MLP().to(DTYPE)
    rows = regression_rows(40, 5, classes=3, seed=2)
    fit(module, module.adapter_parameters(), chunk(rows, 40), encode_regression, steps=30)
    problem = InfluenceProblem(module, module.adapter_parameters(), chunk(rows, batch_size), n_train=40,
                               encode=encode_regression, damping=damping, curvature=curvature)
    edited = [dict(r, y=(r["y"] + 1) % 3) for r in rows[:4]]
    b = rhs(module, problem.params, [rows[:4]], [edited], n_train=40, encode=encode_regression)
    return problem, b, rows


def _attention_problem(damping=None, batch_size=8):
    module, params, batches = attention_setup(n=32, batch_size=batch_size)
    H = dense_hessian(module, params, batches)
    eig = torch.linalg.eigvalsh(H)
    assert eig[0] < 0  # non-convex at θ̂
    lam = float(-eig[0] + 0.05) if damping is None else damping
    problem = InfluenceProblem(module, params, batches, n_train=32, damping=lam)
    # QM-like request: the prompt of items 0-2 edited (one token changed), responses unchanged
    removed = {k: v[:3] for k, v in batches[0].items()}
    added = {k: v.clone() for k, v in removed.items()}
    added["tokens"][:, 0] = (added["tokens"][:, 0] + 1) % 11
    b = rhs(module, params, [removed], [added], n_train=32)
    return problem, b, H


@pytest.mark.parametrize("method", ["hvp", "func_hessian"])
def test_exact_equals_dense_damped_solve(method):
    problem, b, rows = _mlp_problem()
    H = dense_hessian(problem.module, problem.params, problem.train_batches, encode_regression)
    ref = torch.linalg.solve(H + problem.damping * torch.eye(H.shape[0], dtype=H.dtype), flatten(b))
    delta, info = solve(problem, b, "exact", method=method)
    assert torch.allclose(flatten(delta), ref, rtol=1e-8, atol=1e-12)
    assert info.relative_residual < 1e-10
    assert info["hvp_calls"] == info.hvp_calls > 0 and info.seconds > 0
    assert info.extra["min_eigenvalue"] > 0


def test_exact_dense_curvature_is_the_same_column_by_column_and_chunked():
    problem, b, _ = _mlp_problem(batch_size=13)  # ragged last batch
    dense = {c: get_solver("exact", chunk_size=c).dense_curvature(problem) for c in (1, 7, 64)}
    H = dense_hessian(problem.module, problem.params, problem.train_batches, encode_regression)
    for c, value in dense.items():
        assert torch.allclose(value, H, rtol=1e-9, atol=1e-12), c


def test_cg_matches_exact():
    problem, b, _ = _attention_problem()
    exact, _ = solve(problem, b, "exact")
    delta, info = solve(problem, b, "cg", tol=1e-8, max_iter=200)
    assert cosine(delta, exact) >= 0.99
    assert relative_error(delta, exact) < 1e-5
    assert info.extra["status"] == "converged" and info.relative_residual < 1e-6


def test_exact_and_cg_do_not_depend_on_hvp_batch_size():
    problem, b, rows = _mlp_problem()
    results = {}
    for size in (3, 10, 40):
        p = InfluenceProblem(problem.module, problem.params, chunk(rows, size), n_train=40, encode=encode_regression,
                             damping=problem.damping)
        results[("exact", size)] = flatten(solve(p, b, "exact")[0])
        results[("cg", size)] = flatten(solve(p, b, "cg", tol=1e-10, max_iter=300)[0])
    ref = results[("exact", 40)]
    for key, value in results.items():
        tol = 1e-9 if key[0] == "exact" else 1e-6
        assert torch.allclose(value, ref, rtol=tol, atol=tol * ref.abs().max()), key


def test_lissa_and_datainf_give_finite_positively_correlated_answers(capsys):
    cosines = {}
    for name, (problem, b) in {"mlp": _mlp_problem()[:2], "attention": _attention_problem()[:2]}.items():
        exact, _ = solve(problem, b, "exact")
        lissa, info_l = solve(problem, b, "lissa", depth=200)
        datainf, info_d = solve(problem, b, "datainf")
        for label, delta in (("lissa", lissa), ("datainf", datainf)):
            assert all(torch.isfinite(v).all() for v in delta.values())
            cosines[(name, label)] = cosine(delta, exact)
        assert info_l.hvp_calls > 0 and info_d.hvp_calls == 0
    with capsys.disabled():
        print("\ncosine to exact: " + ", ".join(f"{k[1]}/{k[0]}={v:.3f}" for k, v in cosines.items()))
    assert all(v > 0.3 for v in cosines.values()), cosines
    assert cosines[("mlp", "lissa")] > 0.9 and cosines[("attention", "lissa")] > 0.9


def test_gauss_newton_curvature_solvers_agree():
    problem, b, _ = _mlp_problem(curvature="gauss_newton", damping=0.01)
    exact, info = solve(problem, b, "exact")
    assert info.extra["min_eigenvalue"] >= 0.01 - 1e-10  # PSD + λ
    cg, _ = solve(problem, b, "cg", tol=1e-10, max_iter=300)
    assert relative_error(cg, exact) < 1e-6


def test_exact_refuses_above_max_params():
    problem, b, _ = _mlp_problem()

    class Untouchable:
        def __iter__(self):
            raise AssertionError("the exact solver did work before refusing")

    problem.train_batches = Untouchable()
    with pytest.raises(ValueError, match=r"exact solver refuses: θ has p = 57 entries > max_params = 10"):
        solve(problem, b, "exact", max_params=10)
    assert get_solver("exact").settings.max_params == 5000


def test_newton_step_approximates_retraining():
    """Signs end to end: θ̂ + H⁻¹b is close to the minimiser of the edited objective (IR and RC)."""
    module, params, batches, rows = logreg_setup(n=60, reg=0.05)
    theta_hat = {k: p.detach().clone() for k, p in params.items()}
    problem = InfluenceProblem(module, params, batches, n_train=60, encode=encode_regression)
    cases = {
        "IR": (rows[:3], None, rows[3:], 57),
        "RC": (rows[:3], [dict(r, y=1.0 - r["y"]) for r in rows[:3]], None, 60),
    }
    for task, (removed, added, kept, normalizer) in cases.items():
        edited = kept if kept is not None else added + rows[3:]
        b = rhs(module, params, [removed], [added] if added else None, n_train=60, encode=encode_regression,
                normalizer=normalizer)
        delta, _ = solve(problem, b, "exact")
        fit(module, params, [edited], encode_regression)  # retrain (warm start) to the edited optimum
        theta_star = {k: p.detach().clone() for k, p in params.items()}
        with torch.no_grad():
            for k, p in params.items():
                p.copy_(theta_hat[k])
        step = {k: theta_hat[k] + delta[k] for k in params}
        shift = {k: theta_star[k] - theta_hat[k] for k in params}
        assert relative_error(step, theta_star) * flatten(theta_star).norm() < 0.1 * flatten(shift).norm(), task
        assert cosine(delta, shift) > 0.99, task


@pytest.mark.parametrize("name", sorted(SOLVERS))
def test_solvers_leave_module_as_found(name):
    problem, b, _ = _mlp_problem()
    problem.module.train()
    before = snapshot(problem.module)
    settings = {"qp": dict(max_epochs=2, **QUIET_QP), "lissa": dict(depth=5)}.get(name, {})
    delta, info = solve(problem, b, name, **settings)
    assert list(delta) == list(problem.params)
    assert all(delta[k].shape == p.shape for k, p in problem.params.items())
    assert_unchanged(problem.module, before)
    assert all(m.training for m in problem.module.modules())
    assert all(not p.requires_grad for k, p in problem.module.named_parameters() if k.startswith("proj."))
    for key in ("hvp_calls", "relative_residual", "seconds"):
        assert key in info.as_dict()
    assert info.relative_residual == info.relative_residual  # measured (not NaN)


def test_zero_b_gives_zero_delta():
    problem, b, _ = _mlp_problem()
    zero = {k: torch.zeros_like(v) for k, v in b.items()}
    delta, info = solve(problem, zero, "cg")
    assert all(torch.equal(v, torch.zeros_like(v)) for v in delta.values()) and info.hvp_calls == 0


def test_registry_and_settings_validate_themselves():
    assert set(SOLVERS) == {"exact", "cg", "lissa", "datainf", "qp"}
    with pytest.raises(KeyError, match="known solvers: cg, datainf, exact, lissa, qp"):
        get_solver("newton")
    with pytest.raises(TypeError, match="unknown CGSettings setting.*'tolerance'.*known: tol, max_iter"):
        get_solver("cg", tolerance=1e-3)
    bad = [
        (CGSettings, dict(tol=0)), (CGSettings, dict(max_iter=0)), (CGSettings, dict(num_batches=1.5)),
        (ExactSettings, dict(method="svd")), (ExactSettings, dict(max_params=0)),
        (QPSettings, dict(optimizer="rmsprop")), (QPSettings, dict(optimizer="adam")),  # adam needs lr
        (QPSettings, dict(schedule="step")), (QPSettings, dict(precision="8-bit")), (QPSettings, dict(lr=-1.0)),
        (QPSettings, dict(limit_train_batches=1.5)), (QPSettings, dict(max_epochs=-1, max_steps=-1)),
        (QPSettings, dict(momentum=1.0)),
    ]
    for cls, kwargs in bad:
        with pytest.raises(ValueError, match=cls.__name__):
            cls(**kwargs)
    solver = get_solver("cg", CGSettings(tol=1e-3), max_iter=7)
    assert solver.settings.tol == 1e-3 and solver.settings.max_iter == 7
    assert get_solver("qp", {"optimizer": "adam", "lr": 0.1}).settings.lr == 0.1
    with pytest.raises(TypeError, match="CGSettings"):
        get_solver("cg", ExactSettings())


def test_problem_validation():
    module, params, batches, _ = logreg_setup(n=12, fitted=False)
    with pytest.raises(TypeError, match="one-shot iterator"):
        InfluenceProblem(module, params, iter(batches), n_train=12)
    with pytest.raises(ValueError, match="damping"):
        InfluenceProblem(module, params, batches, n_train=12, damping=-0.1)
    with pytest.raises(ValueError, match="unknown curvature"):
        InfluenceProblem(module, params, batches, n_train=12, curvature="kfac")
    with pytest.raises(ValueError, match="n_train"):
        InfluenceProblem(module, params, batches, n_train=0)
    other = MLP().to(DTYPE)
    with pytest.raises(ValueError, match="not the module's own parameter"):
        InfluenceProblem(module, {"linear.weight": other.fc1.weight}, batches, n_train=12)
    p = InfluenceProblem.for_module(module, batches, 12, encode=encode_regression)
    assert list(p.params) == ["linear.weight", "linear.bias"] and p.num_params == 7


def test_group_parameters():
    names = [
        "base_model.model.layers.0.self_attn.q_proj.lora_A.default.weight",
        "base_model.model.layers.0.self_attn.q_proj.lora_B.default.weight",
        "base_model.model.layers.0.self_attn.v_proj.lora_A.default.weight",
        "base_model.model.layers.0.self_attn.v_proj.lora_B.default.weight",
        "projector.0.weight",
        "projector.0.bias",
        "scale",
    ]
    groups = group_parameters(names, "module")
    assert list(groups.values()) == [names[0:2], names[2:4], names[4:6], names[6:]]
    assert len(group_parameters(names, "tensor")) == len(names)
    assert list(group_parameters(names, "all")) == ["all"]


def test_datainf_grouping_changes_answer_but_stays_correlated():
    problem, b, _ = _attention_problem()
    exact, _ = solve(problem, b, "exact")
    out = {g: solve(problem, b, "datainf", grouping=g)[0] for g in ("module", "tensor", "all")}
    for delta in out.values():
        assert cosine(delta, exact) > 0
    # vectorised and looped per-item gradients agree
    looped, _ = solve(problem, b, "datainf", vectorize=False)
    assert relative_error(looped, out["module"]) < 1e-10


def test_unflatten_roundtrip():
    problem, b, _ = _mlp_problem()
    assert all(torch.equal(unflatten(flatten(b), b)[k], b[k]) for k in b)


def test_lora_rotation_directions_change_no_prediction_and_no_norm() -> None:
    """The orbit tangents of B → BQ, A → QᵀA: first-order moves along them keep B·A and ‖A‖² + ‖B‖²."""
    from lit_eraser.influence._utils import flatten, unflatten
    from lit_eraser.influence.symmetry import lora_rotation_directions

    torch.manual_seed(0)
    params = {
        "layer.lora_A.default.weight": torch.randn(3, 5, dtype=torch.float64),
        "layer.lora_B.default.weight": torch.randn(4, 3, dtype=torch.float64),
        "projector.weight": torch.randn(2, 2, dtype=torch.float64),
    }
    basis = lora_rotation_directions(params)
    assert basis.shape == (15 + 12 + 4, 3)  # r(r-1)/2 = 3 generators for r = 3
    assert torch.allclose(basis.T @ basis, torch.eye(3, dtype=torch.float64), atol=1e-10)
    theta = flatten(params)
    for column in basis.T:
        assert float(column[-4:].abs().max()) == 0.0  # nothing outside the LoRA pair moves
        eps = 1e-6
        moved = unflatten(theta + eps * column, params)
        product = moved["layer.lora_B.default.weight"] @ moved["layer.lora_A.default.weight"]
        original = params["layer.lora_B.default.weight"] @ params["layer.lora_A.default.weight"]
        assert float((product - original).abs().max()) <= 1e-10  # O(eps²)
        assert abs(float((theta + eps * column).norm() ** 2 - theta.norm() ** 2)) <= 1e-10


def test_lora_rotation_directions_without_lora_pairs_are_empty() -> None:
    from lit_eraser.influence.symmetry import lora_rotation_directions

    assert lora_rotation_directions({"w": torch.ones(3, 2)}).shape == (6, 0)
