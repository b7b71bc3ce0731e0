"""Solvers of the influence system H_λ Δ = b behind one interface, registered by name in ``SOLVERS``.

Every solver answers ``solve(problem, b) -> (Δ, info)``: Δ a tensor dict shaped like θ, ``info`` a
:class:`SolveInfo` with at least ``hvp_calls`` (batch-level curvature-vector products the solve used),
``relative_residual`` (‖H_λΔ − b‖/‖b‖ with H averaged over the problem's fixed ``residual_batches``) and
``seconds``. Each solver has a typed settings dataclass that validates itself on construction:

=========  ====================  ===================================================================
name       settings              what it does
=========  ====================  ===================================================================
exact      :class:`ExactSettings`  dense H over the whole training set (p products per batch, reusing
                                   each batch's graph; or ``torch.func.hessian``), then
                                   ``torch.linalg.solve`` in float64. Ground truth; refuses p > max_params.
cg         :class:`CGSettings`     conjugate gradient on a fixed (deterministic) sample of training batches.
lissa      :class:`LissaSettings`  truncated Neumann series h ← b + (I − H_B,λ/s) h, Δ = h/s (Agarwal et al.).
datainf    :class:`DataInfSettings` Kwon et al.'s closed form per parameter group from per-item gradients
                                   (Sherman–Morrison on rank-one terms); no curvature products.
qp         :class:`QPSettings`     the finite-sum quadratic program, minimised by a first-order optimiser in
                                   a lightning.Trainer (:class:`~lit_eraser.influence.solver_module.InfluenceSolver`).
=========  ====================  ===================================================================

Example::

    problem = InfluenceProblem(module, module.adapter_parameters(), train_loader, n_train=len(train_rows),
                               encode=module.encode, damping=1e-3, residual_batches=heldout_batches)
    b = rhs(module, problem.params, removed_batches, added_batches, n_train=problem.n_train, encode=module.encode)
    delta, info = solve(problem, b, "cg", tol=1e-6)
"""

from __future__ import annotations

import dataclasses
import math
import time
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch
from torch import nn

from lit_eraser.influence._utils import (
    Encode,
    TensorDict,
    align,
    check_grad_possible,
    check_like,
    evaluation_mode,
    flatten,
    num_params,
    param_device,
    per_item_losses,
    prepare,
    requiring_grad,
    resolve_params,
    tadd,
    tdot,
    tnorm,
    tzeros_like,
    unflatten,
)
from lit_eraser.influence.symmetry import lora_rotation_directions
from lit_eraser.influence.hvp import (
    CURVATURES,
    DEFAULT_HVP_IMPL,
    HVP_IMPLS,
    CurvatureOperator,
    PreparedBatch,
    check_gauss_newton_hook,
    estimate_top_eigenvalue,
    hessian_columns,
)


# ============================================================================================ problem
@dataclass
class InfluenceProblem:
    """Everything a solver needs besides b.

    Args:
        module: ``module(batch)`` returns the 1-D per-item losses ℓ(z_i, θ) (e.g. a recommender module).
        params: θ, ``{name: parameter}`` (the module's own trainable adapter tensors, names as in
            ``module.named_parameters()``), or a list of such names.
        train_batches: a *re-iterable* of raw training batches (a DataLoader, a list of batches); H averages
            over their items.
        n_train: n, the number of training items (b's 1/n; a check on full passes).
        encode: optional encoder applied to each raw batch (e.g. ``recommender.encode``).
        damping: λ ≥ 0 in H_λ = H + λI.
        curvature: ``"hessian"`` (exact, possibly indefinite) or ``"gauss_newton"`` (PSD; needs the module's
            ``gauss_newton_outputs`` hook).
        residual_batches: fixed held-out batches on which every solver's relative residual is measured;
            ``None`` uses ``train_batches``.
        hvp_impl: Hessian-vector product implementation (see :mod:`lit_eraser.influence.hvp`).
    """

    module: nn.Module
    params: Mapping[str, nn.Parameter] | list[str]
    train_batches: Iterable[Any]
    n_train: int
    encode: Encode | None = None
    damping: float = 0.0
    curvature: Literal["hessian", "gauss_newton"] = "hessian"
    residual_batches: Iterable[Any] | None = None
    hvp_impl: Literal["autograd", "func", "func_vjp"] = DEFAULT_HVP_IMPL

    def __post_init__(self) -> None:
        if not isinstance(self.module, nn.Module):
            raise TypeError(f"module must be a torch.nn.Module, got {type(self.module).__name__}")
        self.params = resolve_params(self.module, self.params)
        if not isinstance(self.n_train, int) or isinstance(self.n_train, bool) or self.n_train < 1:
            raise ValueError(f"n_train must be a positive int, got {self.n_train!r}")
        if not (isinstance(self.damping, (int, float)) and math.isfinite(self.damping) and self.damping >= 0):
            raise ValueError(f"damping must be a finite number >= 0, got {self.damping!r}")
        self.damping = float(self.damping)
        if self.curvature not in CURVATURES:
            raise ValueError(f"unknown curvature {self.curvature!r}; known: {', '.join(CURVATURES)}")
        if self.hvp_impl not in HVP_IMPLS:
            raise ValueError(f"unknown hvp_impl {self.hvp_impl!r}; known: {', '.join(HVP_IMPLS)}")
        if self.curvature == "gauss_newton":
            check_gauss_newton_hook(self.module)
        if self.train_batches is None or not hasattr(self.train_batches, "__iter__"):
            raise TypeError("train_batches must be a re-iterable of batches (a DataLoader or a list)")
        if iter(self.train_batches) is self.train_batches:
            raise TypeError(
                "train_batches is a one-shot iterator; solvers iterate it several times: pass a list or a DataLoader"
            )
        if self.residual_batches is not None and iter(self.residual_batches) is self.residual_batches:
            raise TypeError("residual_batches is a one-shot iterator: pass a list or a DataLoader")

    @classmethod
    def for_module(cls, module: nn.Module, train_batches: Iterable[Any], n_train: int, **kwargs: Any) -> InfluenceProblem:
        """A problem for a recommender-style module: θ = ``module.adapter_parameters()``, encode = ``module.encode``."""
        if "params" not in kwargs:
            if not callable(getattr(module, "adapter_parameters", None)):
                raise TypeError(f"{type(module).__name__} has no adapter_parameters(); pass params explicitly")
            kwargs["params"] = module.adapter_parameters()
        if "encode" not in kwargs and callable(getattr(module, "encode", None)):
            kwargs["encode"] = module.encode
        return cls(module=module, train_batches=train_batches, n_train=n_train, **kwargs)

    @property
    def num_params(self) -> int:
        return num_params(self.params)

    def operator(self, batches: Iterable[Any] | None = None, damping: float | None = None) -> CurvatureOperator:
        """v ↦ (H + λI) v averaged over ``batches`` (default: the training batches)."""
        return CurvatureOperator(
            self.module,
            self.params,
            self.train_batches if batches is None else batches,
            encode=self.encode,
            damping=self.damping if damping is None else damping,
            curvature=self.curvature,
            impl=self.hvp_impl,
        )

    def residual_operator(self) -> CurvatureOperator:
        return self.operator(self.train_batches if self.residual_batches is None else self.residual_batches)


def relative_residual(problem: InfluenceProblem, delta: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> tuple[float, int]:
    """(‖H_λΔ − b‖/‖b‖ on the problem's residual batches, the number of batch-level products it took)."""
    norm_b = tnorm(b)
    op = problem.residual_operator()
    r = tadd(op(delta), align(b, problem.params), -1.0)
    return (tnorm(r) / norm_b if norm_b > 0 else tnorm(r)), op.hvp_calls


# ============================================================================================ info
@dataclass
class SolveInfo:
    """What a solve cost and how good it is. Also readable as a mapping (``info["hvp_calls"]``)."""

    solver: str
    hvp_calls: int = 0
    relative_residual: float = float("nan")
    seconds: float = 0.0
    damping: float = 0.0
    curvature: str = "hessian"
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        out = {k: getattr(self, k) for k in ("solver", "hvp_calls", "relative_residual", "seconds", "damping", "curvature")}
        out.update(self.extra)
        return out

    def __getitem__(self, key: str) -> Any:
        return self.as_dict()[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self.as_dict().get(key, default)


# ============================================================================================ settings
@dataclass
class SolverSettings:
    """Base class: settings validate themselves in ``__post_init__`` (kronfluence style)."""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:  # pragma: no cover - overridden
        pass

    @classmethod
    def from_dict(cls, values: Mapping[str, Any] | None) -> SolverSettings:
        values = dict(values or {})
        known = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise TypeError(f"unknown {cls.__name__} setting(s) {unknown}; known: {', '.join(known)}")
        return cls(**values)


def _check(cond: bool, cls: str, message: str) -> None:
    if not cond:
        raise ValueError(f"{cls}: {message}")


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


@dataclass
class ExactSettings(SolverSettings):
    """Dense solve.

    Args:
        max_params: refuse when θ has more entries than this (H is p×p, built with p products per batch).
        method: ``"hvp"`` (p products per batch, each batch's graph built once) or ``"func_hessian"``
            (``torch.func.hessian`` of the flattened θ; Hessian curvature only).
        chunk_size: Hessian columns per vmapped backward (``is_grads_batched``) with method ``"hvp"``; 1, or a
            model whose backward has no batching rule, gives one product at a time.
        report_eigenvalues: also report the smallest and largest eigenvalue of H_λ (on the solved subspace).
        gauge_rcond: solve orthogonally to those directions of LoRA's rotation symmetry (B → BQ, A → QᵀA)
            along which H_λ's curvature is at most ``gauge_rcond`` × its largest eigenvalue: at a converged θ̂
            with damping = the L2 weight H_λ is singular there (:mod:`lit_eraser.influence.symmetry`) and a
            plain solve returns an arbitrary, CPU-dependent move along the orbit. 0 turns this off; elsewhere
            (orbit curvature above the cut) the solve is the plain H_λ⁻¹b.
    """

    max_params: int = 5000
    method: Literal["hvp", "func_hessian"] = "hvp"
    chunk_size: int = 64
    report_eigenvalues: bool = True
    gauge_rcond: float = 1e-4

    def validate(self) -> None:
        _check(_is_int(self.chunk_size) and self.chunk_size >= 1, "ExactSettings", f"chunk_size must be an int >= 1, got {self.chunk_size!r}")
        _check(_is_int(self.max_params) and self.max_params >= 1, "ExactSettings", f"max_params must be an int >= 1, got {self.max_params!r}")
        _check(self.method in ("hvp", "func_hessian"), "ExactSettings", f"method must be 'hvp' or 'func_hessian', got {self.method!r}")
        _check(
            isinstance(self.gauge_rcond, (int, float)) and not isinstance(self.gauge_rcond, bool) and 0 <= self.gauge_rcond < 1,
            "ExactSettings", f"gauge_rcond must be a number in [0, 1), got {self.gauge_rcond!r}",
        )


@dataclass
class CGSettings(SolverSettings):
    """Conjugate gradient on a fixed sample of training batches.

    Args:
        tol: stop when ‖H_λΔ − b‖/‖b‖ on the sample falls below this.
        max_iter: at most this many CG iterations (one pass over the sample each).
        num_batches: the sample is the first ``num_batches`` training batches, taken once and reused every
            iteration (deterministic even for a shuffling loader); ``None`` = all batches.
    """

    tol: float = 1e-6
    max_iter: int = 100
    num_batches: int | None = None

    def validate(self) -> None:
        _check(isinstance(self.tol, (int, float)) and self.tol > 0, "CGSettings", f"tol must be > 0, got {self.tol!r}")
        _check(_is_int(self.max_iter) and self.max_iter >= 1, "CGSettings", f"max_iter must be an int >= 1, got {self.max_iter!r}")
        _check(self.num_batches is None or (_is_int(self.num_batches) and self.num_batches >= 1), "CGSettings",
               f"num_batches must be None or an int >= 1, got {self.num_batches!r}")


@dataclass
class LissaSettings(SolverSettings):
    """LiSSA: h_0 = b, h_j = b + (I − H_{B_j,λ}/s) h_{j−1}, Δ = h_depth / s, averaged over ``repeats``.

    Converges to H_λ⁻¹b (up to mini-batch noise) when 0 < eig(H_λ) < 2s; take s above λ_max(H_λ).

    Args:
        scale: s; ``None`` estimates λ_max(H_λ) by power iteration on the first ``power_batches`` training
            batches and uses ``scale_margin`` × that.
        depth: recursion steps per repeat (one mini-batch product each, cycling through the training batches).
        repeats: independent recursions averaged (each continues the batch cycle).
        power_iters: power-iteration steps for the automatic scale.
        power_batches: training batches used by the power iteration.
        scale_margin: automatic scale = scale_margin × estimated λ_max.
        seed: seed of the power iteration's start vector.
    """

    scale: float | None = None
    depth: int = 200
    repeats: int = 1
    power_iters: int = 20
    power_batches: int = 4
    scale_margin: float = 1.2
    seed: int = 0

    def validate(self) -> None:
        n = "LissaSettings"
        _check(self.scale is None or (isinstance(self.scale, (int, float)) and self.scale > 0), n, f"scale must be None or > 0, got {self.scale!r}")
        _check(_is_int(self.depth) and self.depth >= 1, n, f"depth must be an int >= 1, got {self.depth!r}")
        _check(_is_int(self.repeats) and self.repeats >= 1, n, f"repeats must be an int >= 1, got {self.repeats!r}")
        _check(_is_int(self.power_iters) and self.power_iters >= 1, n, f"power_iters must be an int >= 1, got {self.power_iters!r}")
        _check(_is_int(self.power_batches) and self.power_batches >= 1, n, f"power_batches must be an int >= 1, got {self.power_batches!r}")
        _check(isinstance(self.scale_margin, (int, float)) and self.scale_margin >= 1.0, n, f"scale_margin must be >= 1, got {self.scale_margin!r}")


@dataclass
class DataInfSettings(SolverSettings):
    """DataInf (Kwon et al., ICLR 2024): per parameter group l,

        H_l⁻¹ b_l ≈ (1/λ_l) [b_l − (1/n) Σ_i (g_ilᵀ b_l)/(λ_l + ‖g_il‖²) g_il],

    from the per-item gradients g_il (the inverse of the averaged rank-one terms (1/n)Σ(g gᵀ + λ I) replaced by
    the average of their Sherman–Morrison inverses). Curvature is this gradient outer-product approximation
    whatever the problem's ``curvature``; no products with H.

    Args:
        grouping: ``"module"`` — one group per module: LoRA A and B (and any ``.lora_*`` tensor) of one
            adapted module together, other tensors grouped by their owning module's prefix (weight + bias);
            ``"tensor"`` — each tensor its own group; ``"all"`` — θ as a single group.
        damping: λ_l for every group; ``None`` uses the problem's damping when > 0, else Kwon et al.'s
            heuristic λ_l = damping_ratio × mean_i ‖g_il‖² / d_l.
        damping_ratio: the heuristic's factor (0.1 in the paper).
        vectorize: per-item gradients by one vmapped backward (``is_grads_batched``), falling back to a loop.
    """

    grouping: Literal["module", "tensor", "all"] = "module"
    damping: float | None = None
    damping_ratio: float = 0.1
    vectorize: bool = True

    def validate(self) -> None:
        n = "DataInfSettings"
        _check(self.grouping in ("module", "tensor", "all"), n, f"grouping must be 'module', 'tensor' or 'all', got {self.grouping!r}")
        _check(self.damping is None or (isinstance(self.damping, (int, float)) and self.damping > 0), n, f"damping must be None or > 0, got {self.damping!r}")
        _check(isinstance(self.damping_ratio, (int, float)) and self.damping_ratio > 0, n, f"damping_ratio must be > 0, got {self.damping_ratio!r}")


QP_OPTIMIZERS = ("sgd", "momentum", "adam")
QP_SCHEDULES = ("constant", "cosine", "linear")
QP_PRECISIONS = ("32", "32-true", "64", "64-true", "bf16-mixed", "16-mixed", "bf16-true")


@dataclass
class QPSettings(SolverSettings):
    """The quadratic program F(Δ) = ½ΔᵀH_λΔ − bᵀΔ minimised over training mini-batches in a lightning.Trainer.

    Args:
        optimizer: ``"sgd"``, ``"momentum"`` (heavy ball; ``nesterov`` optional) or ``"adam"``.
        lr: learning rate; ``None`` (sgd/momentum only) = (1 − momentum)/L with L = max over the first
            ``power_batches`` training batches of λ_max(H_B + λI) by power iteration (momentum 0 for sgd).
        momentum: momentum factor for ``"momentum"``.
        nesterov: Nesterov momentum.
        betas: Adam's betas.
        eps: Adam's epsilon.
        schedule: ``"constant"``, ``"cosine"`` or ``"linear"`` decay (per step, to ``min_lr_ratio`` × lr at the
            last step). A decaying schedule removes the mini-batch noise floor of constant-lr SGD.
        min_lr_ratio: final lr as a fraction of lr for the decaying schedules.
        warmup_steps: linear warm-up steps.
        max_epochs: passes over the training batches.
        max_steps: stop after this many optimiser steps (-1: no limit).
        limit_train_batches: fraction (float) or number (int) of training batches per epoch.
        val_check_interval: residual check every this many steps (int) or fraction of an epoch (float).
        check_val_every_n_epoch: residual check every this many epochs.
        tol: stop early once the relative residual on the residual batches is below this (``None``: never).
        patience: early stopping also stops after this many checks without improvement.
        divergence_threshold: stop when the relative residual exceeds this (``None``: never).
        precision: Lightning precision (``"32-true"``, ``"bf16-mixed"``, ``"16-mixed"``, ...).
        accelerator: Lightning accelerator (``"auto"``, ``"cpu"``, ``"gpu"``).
        devices: Lightning devices.
        strategy: Lightning strategy (``"auto"``, ``"ddp"``, ``"ddp_fork"``, ...). The curvature products run on
            the unwrapped module; only Δ's gradients are averaged by DDP.
        shuffle: shuffle the training batches each epoch (seeded); off by default for reproducibility.
        seed: seed for shuffling and the power iteration.
        power_iters: power-iteration steps for the automatic lr.
        power_batches: training batches used by the power iteration.
        final_residual: measure the residual at the final Δ after training (unless the last check did).
        enable_progress_bar: show Lightning's progress bar.
    """

    optimizer: Literal["sgd", "momentum", "adam"] = "momentum"
    lr: float | None = None
    momentum: float = 0.9
    nesterov: bool = False
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    schedule: Literal["constant", "cosine", "linear"] = "cosine"
    min_lr_ratio: float = 0.0
    warmup_steps: int = 0
    max_epochs: int = 1
    max_steps: int = -1
    limit_train_batches: int | float = 1.0
    val_check_interval: int | float = 1.0
    check_val_every_n_epoch: int = 1
    tol: float | None = 1e-2
    patience: int = 1000
    divergence_threshold: float | None = 1e3
    precision: str = "32-true"
    accelerator: str = "auto"
    devices: int | str = 1
    strategy: str = "auto"
    shuffle: bool = False
    seed: int = 0
    power_iters: int = 10
    power_batches: int = 4
    final_residual: bool = True
    enable_progress_bar: bool = True

    def validate(self) -> None:
        n = "QPSettings"
        _check(self.optimizer in QP_OPTIMIZERS, n, f"optimizer must be one of {QP_OPTIMIZERS}, got {self.optimizer!r}")
        _check(self.lr is None or (isinstance(self.lr, (int, float)) and self.lr > 0), n, f"lr must be None or > 0, got {self.lr!r}")
        _check(not (self.optimizer == "adam" and self.lr is None), n, "adam needs an explicit lr (the automatic lr is for sgd/momentum)")
        _check(isinstance(self.momentum, (int, float)) and 0 <= self.momentum < 1, n, f"momentum must be in [0, 1), got {self.momentum!r}")
        _check(len(tuple(self.betas)) == 2 and all(0 <= x < 1 for x in self.betas), n, f"betas must be two numbers in [0, 1), got {self.betas!r}")
        self.betas = (float(self.betas[0]), float(self.betas[1]))
        _check(self.eps > 0, n, f"eps must be > 0, got {self.eps!r}")
        _check(self.schedule in QP_SCHEDULES, n, f"schedule must be one of {QP_SCHEDULES}, got {self.schedule!r}")
        _check(0 <= self.min_lr_ratio <= 1, n, f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio!r}")
        _check(_is_int(self.warmup_steps) and self.warmup_steps >= 0, n, f"warmup_steps must be an int >= 0, got {self.warmup_steps!r}")
        _check(_is_int(self.max_epochs) and (self.max_epochs >= 1 or self.max_epochs == -1), n, f"max_epochs must be >= 1 or -1, got {self.max_epochs!r}")
        _check(_is_int(self.max_steps) and (self.max_steps >= 1 or self.max_steps == -1), n, f"max_steps must be >= 1 or -1, got {self.max_steps!r}")
        _check(not (self.max_epochs == -1 and self.max_steps == -1), n, "set max_epochs or max_steps (both are unlimited)")
        for key in ("limit_train_batches", "val_check_interval"):
            v = getattr(self, key)
            ok = (_is_int(v) and v >= 1) or (isinstance(v, float) and 0 < v <= 1)
            _check(ok, n, f"{key} must be an int >= 1 (batches) or a float in (0, 1] (fraction), got {v!r}")
        _check(_is_int(self.check_val_every_n_epoch) and self.check_val_every_n_epoch >= 1, n, "check_val_every_n_epoch must be an int >= 1")
        _check(self.tol is None or self.tol > 0, n, f"tol must be None or > 0, got {self.tol!r}")
        _check(_is_int(self.patience) and self.patience >= 1, n, f"patience must be an int >= 1, got {self.patience!r}")
        _check(self.divergence_threshold is None or self.divergence_threshold > 0, n, "divergence_threshold must be None or > 0")
        _check(str(self.precision) in QP_PRECISIONS, n, f"precision must be one of {QP_PRECISIONS}, got {self.precision!r}")
        _check(_is_int(self.power_iters) and self.power_iters >= 1, n, "power_iters must be an int >= 1")
        _check(_is_int(self.power_batches) and self.power_batches >= 1, n, "power_batches must be an int >= 1")


# ============================================================================================ solvers
class Solver:
    """Base class. Subclasses set ``name`` and ``settings_class`` and implement ``_solve``."""

    name: ClassVar[str] = ""
    settings_class: ClassVar[type[SolverSettings]] = SolverSettings

    def __init__(self, settings: SolverSettings | Mapping[str, Any] | None = None, **overrides: Any) -> None:
        if settings is None or isinstance(settings, Mapping):
            merged = {**dict(settings or {}), **overrides}
            self.settings = self.settings_class.from_dict(merged)
        elif isinstance(settings, self.settings_class):
            self.settings = dataclasses.replace(settings, **overrides) if overrides else settings
        else:
            raise TypeError(
                f"{type(self).__name__} takes {self.settings_class.__name__} settings, got {type(settings).__name__}"
            )

    def solve(self, problem: InfluenceProblem, b: Mapping[str, torch.Tensor]) -> tuple[TensorDict, SolveInfo]:
        """Δ ≈ H_λ⁻¹ b and a :class:`SolveInfo`; the relative residual is measured on ``problem.residual_batches``."""
        if not isinstance(problem, InfluenceProblem):
            raise TypeError(f"problem must be an InfluenceProblem, got {type(problem).__name__}")
        check_like(b, problem.params, "b")
        check_grad_possible()
        b = align(b, problem.params)
        self._precheck(problem)
        info = SolveInfo(solver=self.name, damping=problem.damping, curvature=problem.curvature)
        if tnorm(b) == 0.0:
            info.relative_residual = 0.0
            info.extra["note"] = "b == 0, so Δ == 0"
            return tzeros_like(b), info
        start = time.perf_counter()
        delta = self._solve(problem, b, info)
        info.seconds = time.perf_counter() - start
        if math.isnan(info.relative_residual):
            start = time.perf_counter()
            info.relative_residual, calls = relative_residual(problem, delta, b)
            info.extra["residual_hvp_calls"] = calls
            info.extra["residual_seconds"] = time.perf_counter() - start
        if not all(torch.isfinite(v).all() for v in delta.values()):
            warnings.warn(f"{self.name}: Δ has non-finite entries (diverged? check damping/scale/lr)", stacklevel=2)
        return delta, info

    def _precheck(self, problem: InfluenceProblem) -> None:
        """Refuse a problem before any work (override)."""

    def _solve(self, problem: InfluenceProblem, b: TensorDict, info: SolveInfo) -> TensorDict:  # pragma: no cover
        raise NotImplementedError


def _count_check(problem: InfluenceProblem, count: int, what: str) -> None:
    if count != problem.n_train:
        warnings.warn(
            f"{what}: the training batches hold {count} items but n_train = {problem.n_train}; H averages over the "
            "items seen",
            stacklevel=3,
        )


def max_batch_eigenvalue(problem: InfluenceProblem, num_batches: int, iters: int, seed: int, info: SolveInfo | None = None) -> float:
    """max over the first ``num_batches`` training batches B of λ_max(H_B + λI), by power iteration.

    Mini-batch steps (LiSSA's recursion, the QP's optimiser) see H_B, whose top eigenvalue can exceed that
    of the full H; step sizes are set from this maximum.
    """
    best = 0.0
    for index, raw in enumerate(problem.train_batches):
        if index >= num_batches:
            break
        op = problem.operator([raw])
        best = max(best, estimate_top_eigenvalue(op, iters, seed=seed + index))
        if info is not None:
            info.hvp_calls += op.hvp_calls
    if info is not None:
        info.extra["estimated_max_eigenvalue"] = best
    return best


class ExactSolver(Solver):
    """Dense H over the whole training set, then a float64 ``torch.linalg.solve`` (the ground truth)."""

    name = "exact"
    settings_class = ExactSettings
    settings: ExactSettings

    def _precheck(self, problem: InfluenceProblem) -> None:
        p = problem.num_params
        if p > self.settings.max_params:
            raise ValueError(
                f"exact solver refuses: θ has p = {p} entries > max_params = {self.settings.max_params} "
                f"(a dense p×p Hessian needs p curvature products per batch and {p * p * 8 / 2**20:.1f} MiB of float64); "
                "use 'cg', 'qp', 'lissa' or 'datainf', or raise max_params"
            )
        if self.settings.method == "func_hessian" and problem.curvature != "hessian":
            raise ValueError("exact method 'func_hessian' computes the Hessian; use method='hvp' for gauss_newton")

    def dense_curvature(self, problem: InfluenceProblem, info: SolveInfo | None = None) -> torch.Tensor:
        """H (or the GGN) of the mean per-item loss over all training batches, p×p float64, undamped."""
        params = problem.params
        p = problem.num_params
        device = param_device(params)
        self._vectorize = True
        total = torch.zeros(p, p, dtype=torch.float64, device=device)
        count = 0
        calls = 0
        eye_like = {k: torch.zeros_like(v).detach() for k, v in params.items()}
        with evaluation_mode(problem.module), requiring_grad(params):
            for raw in problem.train_batches:
                batch = prepare(raw, problem.encode, device)
                if self.settings.method == "func_hessian":
                    h, n = _func_batch_hessian(problem.module, params, batch)
                    total += h
                    calls += 1
                else:
                    prepared = PreparedBatch(problem.module, params, batch, problem.curvature)
                    n = prepared.count
                    start = 0
                    if problem.curvature == "hessian" and self.settings.chunk_size > 1 and self._vectorize:
                        try:
                            while start < p:
                                stop = min(p, start + self.settings.chunk_size)
                                total[:, start:stop] += hessian_columns(prepared, start, stop)
                                start = stop
                        except (RuntimeError, NotImplementedError):  # no batching rule: one column at a time
                            self._vectorize = False
                    flat_unit = torch.zeros(p, dtype=next(iter(params.values())).dtype, device=device)
                    for j in range(start, p):
                        flat_unit.zero_()
                        flat_unit[j] = 1.0
                        col = prepared.apply(unflatten(flat_unit, eye_like), retain_graph=j < p - 1)
                        total[:, j] += flatten(col).double()
                    calls += p
                    del prepared
                count += n
        if count == 0:
            raise ValueError("exact solver: the training batches are empty")
        _count_check(problem, count, "exact solver")
        if info is not None:
            info.hvp_calls += calls
            info.extra["items"] = count
        h = total / count
        return 0.5 * (h + h.T)

    def flat_orbit_directions(self, problem: InfluenceProblem, h: torch.Tensor) -> torch.Tensor:
        """Orthonormal p × k basis of the LoRA-orbit directions along which H_λ (``h``) is nearly flat."""
        if self.settings.gauge_rcond == 0:
            return h.new_zeros(h.shape[0], 0)
        orbit = lora_rotation_directions(problem.params).to(h.device)
        if not orbit.shape[1]:
            return orbit
        curvature, mixing = torch.linalg.eigh(orbit.T @ h @ orbit)
        flat = curvature.abs() <= self.settings.gauge_rcond * float(torch.linalg.matrix_norm(h, ord=2))
        return orbit @ mixing[:, flat]

    def _solve(self, problem: InfluenceProblem, b: TensorDict, info: SolveInfo) -> TensorDict:
        h = self.dense_curvature(problem, info)
        h = h + problem.damping * torch.eye(h.shape[0], dtype=h.dtype, device=h.device)
        gauge = self.flat_orbit_directions(problem, h)
        info.extra["gauge_directions"] = int(gauge.shape[1])
        if gauge.shape[1]:
            projector = torch.eye(h.shape[0], dtype=h.dtype, device=h.device) - gauge @ gauge.T
            h = projector @ h @ projector
        eigenvalues, eigenvectors = torch.linalg.eigh(h)
        on_orbit = (gauge.T @ eigenvectors).pow(2).sum(0) > 0.5  # the k exact zeros the projection put there
        eigenvalues, eigenvectors = eigenvalues[~on_orbit], eigenvectors[:, ~on_orbit]
        if self.settings.report_eigenvalues:
            info.extra["min_eigenvalue"] = float(eigenvalues[0])
            info.extra["max_eigenvalue"] = float(eigenvalues[-1])
            if eigenvalues[0] <= 0:
                warnings.warn(
                    f"exact solver: H_λ is not positive definite (smallest eigenvalue {float(eigenvalues[0]):.3g}); Δ is "
                    "a stationary point of the QP, not its minimum; increase damping",
                    stacklevel=3,
                )
        if float(eigenvalues.abs().min()) <= 1e-12 * max(float(eigenvalues.abs().max()), 1e-300):
            raise RuntimeError("exact solver: H_λ is singular; use damping > 0")
        flat_b = flatten(b).to(torch.float64)
        return unflatten(eigenvectors @ ((eigenvectors.T @ flat_b) / eigenvalues), b)


def _func_batch_hessian(module: nn.Module, params: Mapping[str, nn.Parameter], batch: Any) -> tuple[torch.Tensor, int]:
    """Σ_{i∈B} ∇²ℓ_i as a dense float64 matrix by ``torch.func.hessian`` over the flattened θ."""
    from torch.func import functional_call, hessian

    like = {k: p.detach() for k, p in params.items()}
    count: list[int] = []

    def total_loss(flat: torch.Tensor) -> torch.Tensor:
        losses = functional_call(module, unflatten(flat, like), (batch,))
        count.append(losses.shape[0])
        return losses.sum()

    h = hessian(total_loss)(flatten(like))
    return h.double(), int(count[0])


class CGSolver(Solver):
    """Conjugate gradient on (H_S + λI) Δ = b, H_S over a fixed sample S of training batches."""

    name = "cg"
    settings_class = CGSettings
    settings: CGSettings

    def _solve(self, problem: InfluenceProblem, b: TensorDict, info: SolveInfo) -> TensorDict:
        s = self.settings
        sample: list[Any] = []
        for raw in problem.train_batches:
            sample.append(raw)
            if s.num_batches is not None and len(sample) >= s.num_batches:
                break
        op = problem.operator(sample)
        x = tzeros_like(b)
        r = dict(b)
        d = dict(b)
        rr = tdot(r, r)
        norm_b = rr**0.5
        history = [1.0]
        status = "max_iter"
        iters = 0
        for iters in range(1, s.max_iter + 1):
            ad = op(d)
            dad = tdot(d, ad)
            if dad <= 0:
                status = "negative_curvature"
                warnings.warn(
                    "cg: H_λ has non-positive curvature along a search direction; stopping (increase damping)",
                    stacklevel=3,
                )
                break
            alpha = rr / dad
            x = tadd(x, d, alpha)
            r = tadd(r, ad, -alpha)
            rr_new = tdot(r, r)
            history.append(rr_new**0.5 / norm_b)
            if history[-1] <= s.tol:
                status = "converged"
                break
            d = tadd(r, d, rr_new / rr)
            rr = rr_new
        info.hvp_calls += op.hvp_calls
        info.extra.update(
            iterations=iters, status=status, sample_batches=len(sample), sample_items=op.items,
            sample_relative_residual=history[-1], residual_history=history,
        )
        return x


class LissaSolver(Solver):
    """LiSSA's truncated Neumann series on mini-batch curvature products."""

    name = "lissa"
    settings_class = LissaSettings
    settings: LissaSettings

    def _solve(self, problem: InfluenceProblem, b: TensorDict, info: SolveInfo) -> TensorDict:
        s = self.settings
        scale = s.scale
        if scale is None:
            lam_max = max_batch_eigenvalue(problem, s.power_batches, s.power_iters, s.seed, info)
            scale = s.scale_margin * lam_max
            info.extra["estimated_max_eigenvalue"] = lam_max
            if scale <= 0:
                raise ValueError("lissa: the estimated curvature is zero; give an explicit scale")
        info.extra["scale"] = scale

        def batch_stream() -> Iterable[Any]:
            while True:
                empty = True
                for raw in problem.train_batches:
                    empty = False
                    yield raw
                if empty:
                    raise ValueError("lissa: the training batches are empty")

        stream = iter(batch_stream())
        estimate = tzeros_like(b)
        calls = 0
        for _ in range(s.repeats):
            h = dict(b)
            for _ in range(s.depth):
                op = problem.operator([next(stream)])  # H_B + λI on one mini-batch
                hv = op(h)
                calls += 1
                h = {k: b[k] + h[k] - hv[k] / scale for k in b}
            estimate = tadd(estimate, h, 1.0 / (s.repeats * scale))
        info.hvp_calls += calls
        info.extra.update(depth=s.depth, repeats=s.repeats)
        return estimate


def group_parameters(names: Iterable[str], grouping: str = "module") -> dict[str, list[str]]:
    """Parameter groups for DataInf, in first-seen order.

    ``"module"``: a LoRA tensor ``<prefix>.lora_<...>`` goes to group ``<prefix>`` (A and B of one adapted
    module together); any other tensor to its owning module's prefix (``proj.0.weight`` and ``proj.0.bias``
    form ``proj.0``). ``"tensor"``: one group per tensor. ``"all"``: a single group ``"all"``.
    """
    groups: dict[str, list[str]] = {}
    for name in names:
        if grouping == "tensor":
            key = name
        elif grouping == "all":
            key = "all"
        elif grouping == "module":
            key = name.split(".lora_", 1)[0] if ".lora_" in name else (name.rsplit(".", 1)[0] if "." in name else name)
        else:
            raise ValueError(f"unknown grouping {grouping!r}; known: module, tensor, all")
        groups.setdefault(key, []).append(name)
    return groups


def per_item_gradients(
    module: nn.Module, params: Mapping[str, nn.Parameter], batch: Any, vectorize: bool = True
) -> dict[str, torch.Tensor]:
    """``{name: [B, *shape]}`` per-item gradients ∇ℓ_i for one prepared batch (eval mode, θ requiring grad)."""
    losses = per_item_losses(module, batch)
    plist = list(params.values())
    count = losses.shape[0]
    grads = None
    if vectorize and count > 1:
        try:
            eye = torch.eye(count, dtype=losses.dtype, device=losses.device)
            grads = torch.autograd.grad(losses, plist, grad_outputs=eye, is_grads_batched=True, retain_graph=True, allow_unused=True)
        except (RuntimeError, NotImplementedError):  # an op without a batching rule: fall back to a loop
            grads = None
    if grads is None:
        rows = [torch.autograd.grad(losses[i], plist, retain_graph=i < count - 1, allow_unused=True) for i in range(count)]
        grads = tuple(
            None if rows[0][j] is None else torch.stack([row[j] for row in rows]) for j in range(len(plist))
        )
    return {
        k: (torch.zeros((count, *p.shape), dtype=p.dtype, device=p.device) if g is None else g.detach())
        for (k, p), g in zip(params.items(), grads)
    }


class DataInfSolver(Solver):
    """DataInf's closed-form per-group inverse from per-item gradients (no curvature products)."""

    name = "datainf"
    settings_class = DataInfSettings
    settings: DataInfSettings

    def _per_item_passes(self, problem: InfluenceProblem) -> Iterable[dict[str, torch.Tensor]]:
        device = param_device(problem.params)
        with evaluation_mode(problem.module), requiring_grad(problem.params):
            for raw in problem.train_batches:
                batch = prepare(raw, problem.encode, device)
                yield per_item_gradients(problem.module, problem.params, batch, self.settings.vectorize)

    def _solve(self, problem: InfluenceProblem, b: TensorDict, info: SolveInfo) -> TensorDict:
        s = self.settings
        groups = group_parameters(problem.params, s.grouping)
        dims = {g: sum(problem.params[k].numel() for k in names) for g, names in groups.items()}

        def group_view(x: Mapping[str, torch.Tensor], names: list[str], batched: bool) -> torch.Tensor:
            if batched:
                return torch.cat([x[k].reshape(x[k].shape[0], -1) for k in names], dim=1).double()
            return torch.cat([x[k].reshape(-1) for k in names]).double()

        # damping per group
        if s.damping is not None:
            lam = {g: float(s.damping) for g in groups}
            source = "settings"
        elif problem.damping > 0:
            lam = {g: problem.damping for g in groups}
            source = "problem"
        else:
            sq = {g: 0.0 for g in groups}
            count = 0
            for grads in self._per_item_passes(problem):
                for g, names in groups.items():
                    sq[g] += float(group_view(grads, names, True).pow(2).sum())
                count += next(iter(grads.values())).shape[0]
            lam = {g: s.damping_ratio * sq[g] / (count * dims[g]) for g in groups}
            source = "heuristic"
            for g, value in lam.items():
                if value <= 0:
                    raise ValueError(f"datainf: group {g!r} has zero gradients; give an explicit damping")
        b_groups = {g: group_view(b, names, False) for g, names in groups.items()}
        acc = {g: torch.zeros_like(v) for g, v in b_groups.items()}
        count = 0
        for grads in self._per_item_passes(problem):
            for g, names in groups.items():
                gi = group_view(grads, names, True)  # [B, d]
                coef = (gi @ b_groups[g]) / (lam[g] + gi.pow(2).sum(dim=1))
                acc[g] += coef @ gi
            count += next(iter(grads.values())).shape[0]
        if count == 0:
            raise ValueError("datainf: the training batches are empty")
        _count_check(problem, count, "datainf")
        delta: TensorDict = {}
        for g, names in groups.items():
            flat = (b_groups[g] - acc[g] / count) / lam[g]
            delta.update(unflatten(flat, {k: b[k] for k in names}))
        info.extra.update(groups=len(groups), damping_source=source, group_damping=lam, items=count)
        return {k: delta[k] for k in b}


class QPSolver(Solver):
    """The finite-sum QP run as a short optimisation epoch by :class:`InfluenceSolver` in a lightning.Trainer.

    Non-serialisable extras go to the constructor: ``logger`` (a Lightning logger or ``False``), extra
    ``callbacks`` and ``trainer_kwargs`` (override any Trainer argument).
    """

    name = "qp"
    settings_class = QPSettings
    settings: QPSettings

    def __init__(
        self,
        settings: QPSettings | Mapping[str, Any] | None = None,
        *,
        logger: Any = False,
        callbacks: list[Any] | None = None,
        trainer_kwargs: Mapping[str, Any] | None = None,
        **overrides: Any,
    ) -> None:
        super().__init__(settings, **overrides)
        self.logger = logger
        self.callbacks = list(callbacks or [])
        self.trainer_kwargs = dict(trainer_kwargs or {})
        self.trainer: Any = None
        self.module: Any = None

    def _solve(self, problem: InfluenceProblem, b: TensorDict, info: SolveInfo) -> TensorDict:
        import lightning as L
        from lightning.pytorch.callbacks import EarlyStopping

        from lit_eraser.influence.solver_module import InfluenceSolver, batches_loader

        s = self.settings
        lr = s.lr
        if lr is None:
            lam_max = max_batch_eigenvalue(problem, s.power_batches, s.power_iters, s.seed, info)
            if lam_max <= 0:
                raise ValueError("qp: the estimated curvature is zero; give an explicit lr")
            # effective step lr / (1 − β) = 1 / max_B λ_max(H_B,λ): stable under the switching mini-batch
            # curvatures (a larger heavy-ball step can diverge even when every H_B alone would allow it)
            beta = s.momentum if s.optimizer == "momentum" else 0.0
            lr = (1.0 - beta) / lam_max
        info.extra["lr"] = lr
        solver = InfluenceSolver(
            problem.module, problem.params, b,
            damping=problem.damping, curvature=problem.curvature, encode=problem.encode, hvp_impl=problem.hvp_impl,
            optimizer=s.optimizer, lr=lr, momentum=s.momentum, nesterov=s.nesterov, betas=s.betas, eps=s.eps,
            schedule=s.schedule, min_lr_ratio=s.min_lr_ratio, warmup_steps=s.warmup_steps,
            final_residual=s.final_residual,
        )
        callbacks = list(self.callbacks)
        if s.tol is not None or s.divergence_threshold is not None:
            callbacks.append(
                EarlyStopping(
                    monitor="val/relative_residual", mode="min", patience=s.patience,
                    stopping_threshold=s.tol, divergence_threshold=s.divergence_threshold,
                    check_finite=True, check_on_train_epoch_end=False, strict=True,
                )
            )
        kwargs: dict[str, Any] = dict(
            accelerator=s.accelerator, devices=s.devices, strategy=s.strategy, precision=s.precision,
            max_epochs=s.max_epochs, max_steps=s.max_steps, limit_train_batches=s.limit_train_batches,
            val_check_interval=s.val_check_interval, check_val_every_n_epoch=s.check_val_every_n_epoch,
            inference_mode=False, num_sanity_val_steps=0, logger=self.logger, callbacks=callbacks,
            enable_checkpointing=False, enable_model_summary=False, enable_progress_bar=s.enable_progress_bar,
        )
        kwargs.update(self.trainer_kwargs)
        kwargs["inference_mode"] = False  # validation needs autograd
        kwargs["use_distributed_sampler"] = False  # batches_loader splits the batches over ranks itself
        trainer = L.Trainer(**kwargs)
        residual = problem.train_batches if problem.residual_batches is None else problem.residual_batches
        trainer.fit(
            solver,
            train_dataloaders=batches_loader(problem.train_batches, shuffle=s.shuffle, seed=s.seed),
            val_dataloaders=batches_loader(residual, pad=False),
        )
        self.trainer, self.module = trainer, solver
        delta = {k: v.to(device=b[k].device, dtype=b[k].dtype) for k, v in solver.delta_dict().items()}
        info.hvp_calls += int(solver.hvp_calls.item())
        final = float(solver.final_relative_residual.item())
        info.relative_residual = final  # NaN (measured afterwards by Solver.solve) when not measured in the fit
        info.extra.update(
            steps=int(solver.num_steps.item()), optimizer=s.optimizer, schedule=s.schedule,
            stopped_early=bool(solver.stopped_early.item()),
            last_checked_residual=float(trainer.callback_metrics.get("val/relative_residual", torch.tensor(float("nan")))),
            world_size=int(trainer.world_size),
        )
        return delta


# ============================================================================================ registry
SOLVERS: dict[str, type[Solver]] = {
    "exact": ExactSolver,
    "cg": CGSolver,
    "lissa": LissaSolver,
    "datainf": DataInfSolver,
    "qp": QPSolver,
}


class UnknownSolverError(ValueError, KeyError):
    """A solver name that is not in :data:`SOLVERS` (a ``KeyError`` for lookups, a ``ValueError`` for the CLI)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


def get_solver(name: str, settings: SolverSettings | Mapping[str, Any] | None = None, **overrides: Any) -> Solver:
    """The solver registered as ``name``, with validated settings (a settings object, a dict, or keywords)."""
    if name not in SOLVERS:
        raise UnknownSolverError(f"unknown solver {name!r}; known solvers: {', '.join(sorted(SOLVERS))}")
    return SOLVERS[name](settings, **overrides)


def solve(
    problem: InfluenceProblem,
    b: Mapping[str, torch.Tensor],
    solver: str | Solver = "qp",
    settings: SolverSettings | Mapping[str, Any] | None = None,
    **overrides: Any,
) -> tuple[TensorDict, SolveInfo]:
    """Δ ≈ H_λ⁻¹ b with the named solver; see :data:`SOLVERS`."""
    impl = solver if isinstance(solver, Solver) else get_solver(solver, settings, **overrides)
    return impl.solve(problem, b)


__all__ = [
    "SOLVERS",
    "CGSettings",
    "CGSolver",
    "DataInfSettings",
    "DataInfSolver",
    "ExactSettings",
    "ExactSolver",
    "InfluenceProblem",
    "LissaSettings",
    "LissaSolver",
    "QPSettings",
    "QPSolver",
    "SolveInfo",
    "Solver",
    "SolverSettings",
    "get_solver",
    "group_parameters",
    "per_item_gradients",
    "relative_residual",
    "solve",
]
