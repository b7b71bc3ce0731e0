"""Train an adapter to a stationary point of its regularised training objective by full-batch L-BFGS.

Influence functions linearise around a minimum: Δ = (H + λI)⁻¹ b is the Newton step from θ̂ to the minimiser
of the edited objective only if θ̂ minimises the original one. Mini-batch Adam stops wherever its schedule
ends, and "continue training on the clean data" then mostly measures that unfinished training (METHOD.md,
fidelity). This module finishes the job deterministically: the full-batch objective

    J(θ) = (1/n) Σᵢ ℓ(zᵢ, θ) + (l2 / 2) ‖θ‖²

(eval mode, no dropout) minimised by ``torch.optim.LBFGS`` with a strong-Wolfe line search. Its Hessian is
H + l2·I, so an unlearning solve with ``damping = l2`` is the exact Newton step of J; warm retraining with
the same settings on the edited rows is the minimiser that step approximates.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch

from lit_eraser.profiling import PhaseCost, PhaseMeter

Row = Mapping[str, Any]


@dataclass
class ConvergeSettings:
    """Full-batch L-BFGS after (or instead of) mini-batch training (``--converge.*``).

    Args:
        max_iter: L-BFGS iterations at most (each evaluates the full objective about once or twice).
        grad_tol: stop when the largest absolute entry of ∇J falls below this.
        l2: weight of (l2/2)‖θ‖² in J; use the same value as ``--unlearn.damping`` for an exact Newton step.
        history_size: L-BFGS memory (pairs of steps and gradient changes).
        batch_size: rows per forward pass when summing the full objective (memory, not maths).
    """

    max_iter: int = 200
    grad_tol: float = 1e-5
    l2: float = 0.0
    history_size: int = 20
    batch_size: int = 32

    def __post_init__(self) -> None:
        for key in ("max_iter", "history_size", "batch_size"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"converge.{key} must be an int >= 1, got {value!r}")
        for key in ("grad_tol", "l2"):
            value = getattr(self, key)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError(f"converge.{key} must be a finite number >= 0, got {value!r}")


@dataclass
class ConvergeReport:
    """Where L-BFGS started and stopped (report.json's ``converge`` entries)."""

    objective_before: float
    grad_norm_before: float
    objective_after: float
    grad_norm_after: float
    grad_max_after: float
    evaluations: int
    converged: bool
    cost: PhaseCost

    def as_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in asdict(self).items() if k != "cost"}
        out["seconds"] = self.cost.seconds
        return out


def objective_and_gradient(module: Any, encoded: Sequence[Mapping[str, torch.Tensor]], n: int, l2: float) -> torch.Tensor:
    """J(θ) at the module's adapter, with ∇J accumulated into the adapter parameters' ``.grad``."""
    params = list(module.adapter_parameters().values())
    for p in params:
        p.grad = None
    total = torch.zeros((), dtype=torch.float64)
    for batch in encoded:
        loss = module(batch).float().sum() / n
        loss.backward()
        total += loss.detach().double().cpu()
    if l2:
        reg = 0.5 * l2 * sum((p.float() * p.float()).sum() for p in params)
        reg.backward()
        total += reg.detach().double().cpu()
    return total


def _flat_grad(module: Any) -> torch.Tensor:
    return torch.cat([p.grad.reshape(-1) for p in module.adapter_parameters().values()])


def converge(
    module: Any, rows: Sequence[Row], settings: ConvergeSettings, normalizer: int | None = None
) -> ConvergeReport:
    """Minimise J over ``rows`` in place on the module's adapter; the module is left in eval mode.

    ``normalizer`` replaces n = len(rows) in J's 1/n. After instance removal, keeping the original n deletes the
    removed rows' terms and nothing else — the objective whose change the influence b (METHOD.md, 1/n scaling)
    linearises; dividing by the smaller n − |S| would also strengthen the L2 term relative to the data."""
    if not rows:
        raise ValueError("converge needs at least one training row")
    if normalizer is not None and normalizer < len(rows):
        raise ValueError(f"normalizer {normalizer} is smaller than the {len(rows)} rows")
    module.eval()
    device = next(module.parameters()).device
    encoded = []
    for start in range(0, len(rows), settings.batch_size):
        batch = list(rows[start : start + settings.batch_size])
        encoded.append({k: v.to(device) for k, v in module.encode(batch).items()})
    n = normalizer or len(rows)
    params = list(module.adapter_parameters().values())
    optimizer = torch.optim.LBFGS(
        params, lr=1.0, max_iter=settings.max_iter, max_eval=settings.max_iter * 5 // 4 + 1,
        history_size=settings.history_size, line_search_fn="strong_wolfe",
        tolerance_grad=settings.grad_tol, tolerance_change=1e-12,
    )
    evaluations = 0

    def closure() -> torch.Tensor:
        nonlocal evaluations
        evaluations += 1
        return objective_and_gradient(module, encoded, n, settings.l2).float()

    with PhaseMeter() as meter:
        before = float(objective_and_gradient(module, encoded, n, settings.l2))
        grad_before = float(_flat_grad(module).norm())
        optimizer.step(closure)
        after = float(objective_and_gradient(module, encoded, n, settings.l2))
        grad = _flat_grad(module)
    for p in params:
        p.grad = None
    grad_max = float(grad.abs().max())
    report = ConvergeReport(
        objective_before=before,
        grad_norm_before=grad_before,
        objective_after=after,
        grad_norm_after=float(grad.norm()),
        grad_max_after=grad_max,
        evaluations=evaluations,
        converged=grad_max <= settings.grad_tol,
        cost=meter.cost,
    )
    module.converge_report = report.as_dict()
    return report
