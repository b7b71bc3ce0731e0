"""Every solver against the exact solve on the synthetic recipes (IR, QM, RC).

    python benchmarks/solver_agreement.py [--configs configs/synthetic_qm.yaml ...] [--solvers qp cg lissa datainf]

Trains each recipe's original adapter (on its corrupted data), builds b from the recipe's requests, solves
H_λ Δ = b with the exact dense solver and with each other solver, and prints cosine, relative error, relative
residual, HVP calls and seconds. The QP uses the recipe's own solver settings.
"""

from __future__ import annotations

import argparse
import dataclasses

import torch

from lit_eraser.baselines import fit_on_rows
from lit_eraser.influence import cosine, relative_error
from lit_eraser.influence.solvers import CGSettings, DataInfSettings, ExactSettings, LissaSettings
from lit_eraser.unlearning.eraser import compute_update
from lit_eraser.unlearning.recipes import load_recipe

OTHER = {"cg": CGSettings(max_iter=200, tol=1e-8), "lissa": LissaSettings(depth=300), "datainf": DataInfSettings()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", default=[f"configs/synthetic_{t}.yaml" for t in ("ir", "qm", "rc")])
    parser.add_argument("--solvers", nargs="+", default=["qp", "cg", "lissa", "datainf"])
    args = parser.parse_args()
    torch.manual_seed(0)
    for path in args.configs:
        recipe = load_recipe(path, "--trainer.enable_progress_bar", "false")
        fit_on_rows(recipe.model, recipe.datamodule, None, recipe.trainer_kwargs)
        rows, requests = list(recipe.datamodule.train_rows), recipe.corruption.requests
        p = sum(t.numel() for t in recipe.model.adapter_parameters().values())
        exact = compute_update(recipe.model, rows, requests, dataclasses.replace(recipe.unlearn, solver=ExactSettings(max_params=max(p, 5000))))
        print(f"\n{path}: n={len(rows)} requests={len(requests)} p={p} damping={recipe.unlearn.damping} "
              f"exact {exact.cost.seconds:.1f}s residual {exact.info.relative_residual:.2e} "
              f"eigenvalues {exact.info.extra.get('min_eigenvalue', float('nan')):.3g}..{exact.info.extra.get('max_eigenvalue', float('nan')):.3g}")
        print(f"  {'solver':8} {'cosine':>8} {'rel.err':>8} {'residual':>9} {'HVPs':>6} {'seconds':>8}")
        for name in args.solvers:
            settings = recipe.unlearn if name == "qp" else dataclasses.replace(recipe.unlearn, solver=OTHER[name])
            update = compute_update(recipe.model, rows, requests, settings)
            print(f"  {name:8} {cosine(update.delta, exact.delta):8.4f} {relative_error(update.delta, exact.delta):8.4f} "
                  f"{update.info.relative_residual:9.2e} {update.info.hvp_calls:6d} {update.cost.seconds:8.1f}")


if __name__ == "__main__":
    main()
