"""LLMEraser on a recommender: requests → exact pairs → b → Δ = H_λ⁻¹ b → θ̂ + Δ (METHOD.md, "The update").

This module holds the model-facing glue; the maths lives in :mod:`lit_eraser.influence`. Everything here is
deterministic given the settings' seed, so two runs on the same adapter and requests give the same Δ.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
import torch

from lit_eraser.influence import SOLVERS, InfluenceProblem, SolveInfo, rhs, solve, tnorm
from lit_eraser.influence.solvers import (
    CGSettings,
    DataInfSettings,
    ExactSettings,
    LissaSettings,
    QPSettings,
    SolverSettings,
)
from lit_eraser.curves import CurveLogger
from lit_eraser.profiling import PhaseCost, PhaseMeter
from lit_eraser.unlearning.requests import UnlearningRequest, build_pairs

Row = Mapping[str, Any]
AnySolverSettings = QPSettings | ExactSettings | CGSettings | LissaSettings | DataInfSettings


def solver_name(settings: SolverSettings) -> str:
    """The registry name (``qp``, ``exact``, ``cg``, ``lissa``, ``datainf``) of a settings object."""
    for name, solver in SOLVERS.items():
        if type(settings) is solver.settings_class:
            return name
    raise ValueError(f"{type(settings).__name__} is not the settings class of a registered solver")


@dataclass
class UnlearnSettings:
    """How LLMEraser solves H_λ Δ = b (``--unlearn.*``).

    Args:
        solver: Solver and its settings: ``QPSettings`` (the optimisation epoch; default), ``ExactSettings``,
            ``CGSettings``, ``LissaSettings`` or ``DataInfSettings``. On the command line:
            ``--unlearn.solver CGSettings --unlearn.solver.max_iter 50`` or ``--unlearn.solver.lr 1e-3``.
        damping: λ in H_λ = H + λI (bounds the QP where H is indefinite).
        curvature: ``hessian`` (exact) or ``gauss_newton`` (PSD).
        batch_size: Training rows per curvature (HVP) batch.
        rhs_batch_size: Request rows per batch when computing b.
        residual_rows: Training rows (a fixed seeded sample) on which the relative residual is measured.
        renormalize: For instance removal, divide b by n − |S| instead of n (second-order difference).
        seed: Seed of the batch order and the residual sample.
        max_relative_residual: Refuse an update whose relative residual ‖H_λΔ − b‖/‖b‖ is above this (Δ = 0
            scores exactly 1, so the default refuses a solve that did worse than doing nothing: diverged, or
            stopped on non-positive curvature). A non-finite Δ or θ̂ + Δ is always refused.
        accept_unconverged: Write an update above ``max_relative_residual`` anyway (it is flagged in the report).
    """

    solver: AnySolverSettings = field(default_factory=QPSettings)
    damping: float = 1e-3
    curvature: Literal["hessian", "gauss_newton"] = "hessian"
    batch_size: int = 16
    rhs_batch_size: int = 16
    residual_rows: int = 64
    renormalize: bool = False
    seed: int = 0
    max_relative_residual: float = 1.0
    accept_unconverged: bool = False

    def __post_init__(self) -> None:
        if not (math.isfinite(self.damping) and self.damping >= 0):
            raise ValueError(f"unlearn.damping must be a finite number >= 0, got {self.damping}")
        if not self.max_relative_residual > 0:
            raise ValueError(f"unlearn.max_relative_residual must be > 0, got {self.max_relative_residual}")
        for key in ("batch_size", "rhs_batch_size", "residual_rows"):
            if getattr(self, key) < 1:
                raise ValueError(f"unlearn.{key} must be >= 1, got {getattr(self, key)}")
        solver_name(self.solver)

    def describe(self) -> dict[str, Any]:
        """A JSON-ready description (for report.json and the ledger)."""
        out = {k: v for k, v in asdict(self).items() if k != "solver"}
        out["solver"] = {"name": solver_name(self.solver), **asdict(self.solver)}
        return out


class UnusableUpdateError(ValueError):
    """The solve produced an update that must not be written (non-finite, or not converged)."""


@dataclass
class UnlearnUpdate:
    """Δ and how it was obtained."""

    delta: dict[str, torch.Tensor]
    info: SolveInfo
    b_norm: float
    delta_norm: float
    n_train: int
    n_requests: int
    cost: PhaseCost
    settings: UnlearnSettings

    def check_usable(self, theta: Mapping[str, torch.Tensor]) -> None:
        """Refuse a non-finite Δ or θ̂ + Δ always, and a residual above the ceiling unless accepted.

        Raises:
            UnusableUpdateError: with what was measured and what to change.
        """
        bad = [name for name, value in self.delta.items() if not torch.isfinite(theta[name] + value.to(theta[name])).all()]
        if bad:
            raise UnusableUpdateError(
                f"unlearning refused: non-finite values in {len(bad)} tensor(s) of θ̂ + Δ (first: {bad[0]}); "
                f"‖b‖ = {self.b_norm:.3g}, relative residual {self.info.relative_residual:.3g}. A non-finite input adapter, "
                "or a diverged solver (lower the solver's lr or scale, raise --unlearn.damping)"
            )
        residual = float(self.info.relative_residual)
        ceiling = self.settings.max_relative_residual
        if not math.isfinite(residual) or (residual > ceiling and not self.settings.accept_unconverged):
            raise UnusableUpdateError(
                f"unlearning refused: relative residual {residual:.3g} > --unlearn.max_relative_residual {ceiling:g} "
                f"after {self.info.hvp_calls} HVPs (Δ = 0 scores 1; ‖Δ‖ = {self.delta_norm:.3g}): the solve diverged or did "
                "not converge. Lower --unlearn.solver.lr, raise --unlearn.damping or the iteration budget, or pass "
                "--unlearn.accept_unconverged true to write it anyway"
            )

    @property
    def converged(self) -> bool:
        """Whether the residual is within the ceiling (an accepted update above it is flagged in the report)."""
        residual = float(self.info.relative_residual)
        return math.isfinite(residual) and residual <= self.settings.max_relative_residual

    def solver_block(self) -> dict[str, Any]:
        """report.json's ``solver`` block."""
        return {
            "within_residual_ceiling": self.converged,
            "residual_history": [float(x) for x in self.info.extra.get("residual_history", [])],
            "curves": self.info.extra.get("curves", {}),
            "name": self.info.solver,
            "hvp_calls": int(self.info.hvp_calls),
            "relative_residual": float(self.info.relative_residual),
            "damping": float(self.settings.damping),
            "curvature": self.settings.curvature,
            "seconds": float(self.info.seconds),
            "b_norm": self.b_norm,
            "delta_norm": self.delta_norm,
            "settings": self.settings.describe(),
        }


def chunk(rows: Sequence[Row], size: int) -> list[list[Row]]:
    return [list(rows[i : i + size]) for i in range(0, len(rows), size)]


def curvature_batches(train_rows: Sequence[Row], settings: UnlearnSettings) -> tuple[list[list[Row]], list[list[Row]]]:
    """(training batches in a seeded order, fixed residual batches drawn from the training rows)."""
    order = np.random.default_rng(settings.seed).permutation(len(train_rows))
    shuffled = [train_rows[i] for i in order]
    residual = shuffled[: min(settings.residual_rows, len(shuffled))]
    return chunk(shuffled, settings.batch_size), chunk(residual, settings.batch_size)


def compute_update(
    module: torch.nn.Module,
    train_rows: Sequence[Row],
    requests: Sequence[UnlearningRequest],
    settings: UnlearnSettings,
) -> UnlearnUpdate:
    """Δ = H_λ⁻¹ b at the module's current adapter θ̂ (the module is left unchanged).

    ``train_rows`` is the training set θ̂ was fitted on (n = its size); the requests must already be
    validated against it (:func:`lit_eraser.unlearning.requests.validate_requests`).
    """
    rows_by_id = {int(row["id"]): row for row in train_rows}
    pairs = build_pairs(requests, rows_by_id)
    removed = [z for z, _ in pairs]
    added = [twin for _, twin in pairs if twin is not None]
    n_train = len(train_rows)
    n_removed_entirely = sum(1 for _, twin in pairs if twin is None)
    train_batches, residual_batches = curvature_batches(train_rows, settings)
    with PhaseMeter() as meter:
        params = module.adapter_parameters()
        b = rhs(
            module,
            params,
            chunk(removed, settings.rhs_batch_size),
            chunk(added, settings.rhs_batch_size) if added else None,
            n_train,
            encode=module.encode,
            normalizer=(n_train - n_removed_entirely) if settings.renormalize and n_removed_entirely else None,
        )
        problem = InfluenceProblem.for_module(
            module,
            train_batches,
            n_train,
            damping=settings.damping,
            curvature=settings.curvature,
            residual_batches=residual_batches,
        )
        name = solver_name(settings.solver)
        curves = CurveLogger() if name == "qp" else None  # the optimisation epoch's residual/objective curves
        extras = {"logger": curves, "trainer_kwargs": {"log_every_n_steps": 1}} if curves is not None else {}
        delta, info = solve(problem, b, name, settings.solver, **extras)
        if curves is not None:
            info.extra["curves"] = curves.curves
    update = UnlearnUpdate(
        delta={k: v.detach().clone() for k, v in delta.items()},
        info=info,
        b_norm=tnorm(b),
        delta_norm=tnorm(delta),
        n_train=n_train,
        n_requests=len(requests),
        cost=meter.cost,
        settings=settings,
    )
    update.check_usable({name: value.detach() for name, value in params.items()})
    return update


@torch.no_grad()
def apply_delta(module: torch.nn.Module, delta: Mapping[str, torch.Tensor], scale: float = 1.0) -> None:
    """θ ← θ + scale·Δ on the module's adapter parameters (in place)."""
    params = module.adapter_parameters()
    missing = set(delta) - set(params)
    if missing:
        raise KeyError(f"Δ has tensors the adapter does not: {sorted(missing)[:5]}")
    for name, value in delta.items():
        params[name].add_(value.to(device=params[name].device, dtype=params[name].dtype), alpha=scale)
