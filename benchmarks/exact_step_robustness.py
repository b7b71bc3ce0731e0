"""How robust the exact step at a converged θ̂ is to tiny changes of θ̂ (what a different CPU's round-off does):
perturb the trained adapter by ``noise`` × its mean |value| (seeds 0..N-1), finish with L-BFGS, and print H's
spectrum, ‖Δ‖, the gradient of the edited objective before/after θ̂ + Δ, and cosine/Pearson against converged
warm retraining.

    python benchmarks/exact_step_robustness.py synthetic_ir 0.01 4
"""
import dataclasses, sys, numpy as np, torch
from pathlib import Path
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO)); sys.path.insert(0, str(REPO / "tests"))
torch.set_num_threads(1)
from pathlib import Path
from lit_eraser.baselines import BaselineContext, fit_on_rows, warm_retrain
from lit_eraser.influence import cosine, InfluenceProblem
from lit_eraser.influence._utils import tadd, flatten
from lit_eraser.influence.solvers import ExactSettings, ExactSolver
from lit_eraser.models.converge import ConvergeSettings, converge
from lit_eraser.unlearning.eraser import apply_delta, compute_update, curvature_batches
from lit_eraser.unlearning.experiment import pearson, per_item_losses, probe_rows
from lit_eraser.unlearning.recipes import load_recipe
from lit_eraser.unlearning.requests import build_pairs
from test_converge import gradient_norm
import tempfile
name = sys.argv[1]; noise = float(sys.argv[2]); seeds = range(int(sys.argv[3]))
for s in seeds:
    torch.manual_seed(0)
    recipe = load_recipe(REPO / "configs" / f"{name}.yaml")
    fit_on_rows(recipe.model, recipe.datamodule, None, recipe.trainer_kwargs)
    rows = list(recipe.datamodule.train_rows)
    if noise:
        g = torch.Generator().manual_seed(s)
        with torch.no_grad():
            for p in recipe.model.adapter_parameters().values():
                p.add_(torch.randn(p.shape, generator=g) * noise * p.abs().mean())
    settings = ConvergeSettings(max_iter=400, grad_tol=1e-7, l2=recipe.unlearn.damping)
    converge(recipe.model, rows, settings)
    run_dir = Path(tempfile.mkdtemp()) / "run"; recipe.model.save_run(run_dir)
    requests, clean = recipe.corruption.requests, list(recipe.corruption.clean_rows)
    module = recipe.model; theta_hat = module.adapter_state()
    us = dataclasses.replace(recipe.unlearn, solver=ExactSettings())
    exact = compute_update(module, rows, requests, us)
    tb, rb = curvature_batches(rows, us)
    prob = InfluenceProblem.for_module(module, tb, len(rows), damping=us.damping, curvature=us.curvature, residual_batches=rb)
    H = ExactSolver(ExactSettings()).dense_curvature(prob)
    ev = torch.linalg.eigvalsh(H.double()); print("smallest |eig| of H+l2:", torch.sort((ev + us.damping).abs()).values[:6].tolist(), flush=True)
    context = BaselineContext(run_dir, recipe.datamodule, rows, clean, requests, recipe.trainer_kwargs, converge=settings)
    warm, cost = warm_retrain(context)
    probes = probe_rows(build_pairs(requests, {int(r["id"]): r for r in rows}))
    before = per_item_losses(module, probes); n = len(rows)
    g0 = gradient_norm(module, clean, n, settings.l2)
    apply_delta(module, exact.delta)
    pred = per_item_losses(module, probes) - before
    g1 = gradient_norm(module, clean, n, settings.l2)
    module.load_adapter_state(theta_hat)
    actual = per_item_losses(warm, probes) - before
    d = cosine(exact.delta, tadd(warm.adapter_state(), theta_hat, -1.0))
    print(f"{name} s={s} noise={noise}: eig(H) min {ev[0]:.3f} max {ev[-1]:.3f} (+l2 {us.damping}) |Δ| {exact.delta_norm:.3f} |warm-θ̂| {float(torch.cat([v.reshape(-1) for v in tadd(warm.adapter_state(), theta_hat, -1.0).values()]).norm()):.3f} grad {g0:.4f}->{g1:.4f} cos {d:.3f} pearson {pearson(pred, actual):.3f} relerr {np.linalg.norm(pred-actual)/np.linalg.norm(actual):.3f}", flush=True)
