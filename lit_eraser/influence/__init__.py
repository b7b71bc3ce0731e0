"""The model-agnostic influence engine (docs/ARCHITECTURE.md §5, METHOD.md).

Contract: an ``nn.Module`` whose ``forward(batch)`` returns a 1-D tensor of per-item losses, a dict θ of the
module's trainable adapter tensors (names as in ``named_parameters()``), and re-iterables of (raw) batches with
an optional ``encode``. The objective is L(θ) = (1/n) Σ ℓ_i; H = ∇²L at θ̂ w.r.t. θ only; H_λ = H + λI;
Δ = H_λ⁻¹ b is a tensor dict shaped like θ. Everything runs in eval mode; modes are restored afterwards.

- :mod:`.hvp`: curvature-vector products (Hessian by double backward or torch.func; Gauss–Newton).
- :mod:`.rhs`: the right-hand side b from the removed items and their edited twins.
- :mod:`.solvers`: ``SOLVERS`` (exact, cg, lissa, datainf, qp) behind ``solve(problem, b) -> (Δ, info)``.
- :mod:`.solver_module`: ``InfluenceSolver``, the QP as a LightningModule whose only parameters are Δ.
"""

from lit_eraser.influence._utils import cosine, relative_error, tnorm
from lit_eraser.influence.hvp import (
    CURVATURES,
    DEFAULT_HVP_IMPL,
    HVP_IMPLS,
    CurvatureOperator,
    dataset_hvp,
    estimate_top_eigenvalue,
    hvp,
)
from lit_eraser.influence.rhs import gradient_sum, rhs
from lit_eraser.influence.solver_module import InfluenceSolver, RankSampler, batches_loader
from lit_eraser.influence.solvers import (
    SOLVERS,
    CGSettings,
    DataInfSettings,
    ExactSettings,
    InfluenceProblem,
    LissaSettings,
    QPSettings,
    SolveInfo,
    Solver,
    SolverSettings,
    UnknownSolverError,
    get_solver,
    group_parameters,
    relative_residual,
    solve,
)

__all__ = [
    "CURVATURES",
    "DEFAULT_HVP_IMPL",
    "HVP_IMPLS",
    "SOLVERS",
    "UnknownSolverError",
    "CGSettings",
    "CurvatureOperator",
    "DataInfSettings",
    "ExactSettings",
    "InfluenceProblem",
    "InfluenceSolver",
    "LissaSettings",
    "QPSettings",
    "RankSampler",
    "SolveInfo",
    "Solver",
    "SolverSettings",
    "batches_loader",
    "cosine",
    "dataset_hvp",
    "estimate_top_eigenvalue",
    "get_solver",
    "gradient_sum",
    "group_parameters",
    "hvp",
    "relative_error",
    "relative_residual",
    "rhs",
    "solve",
    "tnorm",
]
