"""``InfluenceSolver``: the influence quadratic program as a LightningModule whose only parameters are Δ.

    F(Δ) = ½ Δᵀ H_λ Δ − bᵀΔ = (1/n) Σ_i [½ Δᵀ(∇²ℓ_i + λI)Δ − bᵀΔ],   argmin F = H_λ⁻¹ b.

A training step on a mini-batch B computes the stochastic gradient g = H_B Δ + λΔ − b by a curvature-vector
product **at θ̂** (never at θ̂ + Δ) with ``Δ.detach()`` as the vector (METHOD.md bug 1: the curvature term is not
detached away, it *is* the gradient), and returns the surrogate loss Σ ⟨g.detach(), Δ⟩, whose gradient with
respect to Δ is exactly g. So Lightning's automatic optimisation, gradient clipping, precision plugins and DDP
gradient averaging all apply unchanged; the QP objective F_B(Δ) itself is logged as ``train/qp_objective``.

The recommender (or any per-item-loss module) is held *without* registering it as a submodule: its weights
are not optimised, not checkpointed and not DDP-wrapped. Curvature products run on this unwrapped module
(double backward through a DDP wrapper is unreliable); it is moved to this module's device when a loop starts
and moved back to its original device at teardown. Everything runs in eval mode (no dropout).

Validation measures the relative residual ‖H_λΔ − b‖/‖b‖ with H averaged over the validation ("residual")
batches (summed over batches and ranks, normalised at epoch end) and logs it as ``val/relative_residual``:
the Trainer must be built with ``inference_mode=False``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, Literal

import lightning as L
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler

from lit_eraser.influence._utils import (
    Encode,
    TensorDict,
    check_grad_possible,
    check_like,
    evaluation_mode,
    prepare,
    requiring_grad,
    resolve_params,
)
from lit_eraser.influence.hvp import CURVATURES, DEFAULT_HVP_IMPL, HVP_IMPLS, batch_hvp_sum, check_gauss_newton_hook

OPTIMIZERS = ("sgd", "momentum", "adam")
SCHEDULES = ("constant", "cosine", "linear")


# ------------------------------------------------------------------------------------------ loaders
def _keep(batch: Any) -> Any:
    """Identity collate: a raw batch stays as it is (module-level so that ddp_spawn can pickle it)."""
    return batch


class _BatchList(Dataset):
    """A list of ready-made raw batches as a map-style dataset (one element = one batch)."""

    def __init__(self, batches: list[Any]) -> None:
        self.batches = batches

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, index: int) -> Any:
        return self.batches[index]


def _rank_and_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class RankSampler(Sampler[int]):
    """Deterministic split of ``size`` batches over the ranks: rank r gets positions r, r + W, r + 2W, ...

    The rank and world size W are read from ``torch.distributed`` when iteration starts (so the sampler can be
    built before the processes are). ``shuffle`` permutes the order with ``seed + epoch`` (the same permutation
    on every rank; Lightning calls ``set_epoch``). ``pad`` repeats leading positions so that every rank gets the
    same number (needed for training under DDP); without it the last ranks may get one fewer (but every rank
    gets at least one).
    """

    def __init__(self, size: int, shuffle: bool = False, seed: int = 0, pad: bool = True) -> None:
        self.size = size
        self.shuffle = shuffle
        self.seed = seed
        self.pad = pad
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _positions(self) -> list[int]:
        if self.shuffle:
            order = torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed + self.epoch)).tolist()
        else:
            order = list(range(self.size))
        rank, world = _rank_and_world()
        if world > 1 and order:
            # pad: equal counts; otherwise at least one each (a rank without batches would skip the epoch-end
            # reduction and hang the others; the repeated batch then counts twice)
            target = -(-len(order) // world) * world if self.pad else max(len(order), world)
            extra = target - len(order)
            order = order + (order * (extra // len(order) + 1))[:extra]
        return order[rank::world]

    def __iter__(self) -> Iterator[int]:
        return iter(self._positions())

    def __len__(self) -> int:
        return len(self._positions())


def batches_loader(batches: Iterable[Any], shuffle: bool = False, seed: int = 0, pad: bool = True) -> DataLoader:
    """A DataLoader yielding the given raw batches unchanged, split over DDP ranks by :class:`RankSampler`.

    The batches are materialised once as a list (raw batches such as lists of row dicts are small; a DataLoader
    is iterated once, so a shuffling loader is frozen into one order). Under DDP rank r gets batches r, r + W,
    ...: build the Trainer with ``use_distributed_sampler=False`` so Lightning keeps this sampler. Give
    ``pad=False`` for residual (validation) batches so that none is counted twice.
    """
    items = list(batches)
    return DataLoader(
        _BatchList(items), batch_size=None, sampler=RankSampler(len(items), shuffle=shuffle, seed=seed, pad=pad),
        collate_fn=_keep,
    )


# ------------------------------------------------------------------------------------------ module
class InfluenceSolver(L.LightningModule):
    """Minimise F(Δ) = ½ΔᵀH_λΔ − bᵀΔ over Δ with a first-order optimiser, H at the fixed θ̂.

    Args:
        module: the model; ``module(batch)`` returns 1-D per-item losses. Held, not registered.
        params: θ, ``{name: parameter}`` of ``module`` (or a list of names); θ̂ is their current value.
        b: the right-hand side, a tensor dict shaped like ``params``.
        damping: λ ≥ 0.
        curvature: ``"hessian"`` or ``"gauss_newton"``.
        encode: optional raw-batch encoder (e.g. ``recommender.encode``), applied in every step.
        hvp_impl: Hessian-vector product implementation (``"autograd"``, ``"func"``, ``"func_vjp"``).
        optimizer: ``"sgd"``, ``"momentum"`` or ``"adam"``.
        lr: learning rate.
        momentum: momentum factor (``"momentum"``).
        nesterov: Nesterov momentum (``"momentum"``).
        betas: Adam's betas.
        eps: Adam's epsilon.
        schedule: ``"constant"``, ``"cosine"`` or ``"linear"`` decay to ``min_lr_ratio`` × lr at the last step.
        min_lr_ratio: final lr fraction for decaying schedules.
        warmup_steps: linear warm-up steps.
        init: starting Δ (default zeros).
        final_residual: after training, measure the residual at the final Δ on the validation batches unless
            the last validation already did (stored in the ``final_relative_residual`` buffer).
    """

    def __init__(
        self,
        module: nn.Module,
        params: Mapping[str, nn.Parameter] | list[str],
        b: Mapping[str, torch.Tensor],
        *,
        damping: float = 0.0,
        curvature: Literal["hessian", "gauss_newton"] = "hessian",
        encode: Encode | None = None,
        hvp_impl: Literal["autograd", "func", "func_vjp"] = DEFAULT_HVP_IMPL,
        optimizer: Literal["sgd", "momentum", "adam"] = "momentum",
        lr: float = 1e-2,
        momentum: float = 0.9,
        nesterov: bool = False,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        schedule: Literal["constant", "cosine", "linear"] = "constant",
        min_lr_ratio: float = 0.0,
        warmup_steps: int = 0,
        init: Mapping[str, torch.Tensor] | None = None,
        final_residual: bool = True,
    ) -> None:
        super().__init__()
        if curvature not in CURVATURES:
            raise ValueError(f"unknown curvature {curvature!r}; known: {', '.join(CURVATURES)}")
        if hvp_impl not in HVP_IMPLS:
            raise ValueError(f"unknown hvp_impl {hvp_impl!r}; known: {', '.join(HVP_IMPLS)}")
        if optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {optimizer!r}; known: {', '.join(OPTIMIZERS)}")
        if schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {schedule!r}; known: {', '.join(SCHEDULES)}")
        if not lr > 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        if damping < 0:
            raise ValueError(f"damping must be >= 0, got {damping}")
        if curvature == "gauss_newton":
            check_gauss_newton_hook(module)
        resolved = resolve_params(module, params)
        check_like(b, resolved, "b")
        if init is not None:
            check_like(init, resolved, "init")
        # Held, not registered: not optimised, not in state_dict, not wrapped by DDP.
        object.__setattr__(self, "_recommender", module)
        self._names = list(resolved)
        self._param_dtypes = {k: p.dtype for k, p in resolved.items()}
        self._home_device: torch.device | None = None

        def delta_dtype(p: torch.Tensor) -> torch.dtype:
            return torch.float32 if p.dtype in (torch.float16, torch.bfloat16) else p.dtype

        self.delta = nn.ParameterList(
            [
                nn.Parameter(
                    (init[k].detach().clone() if init is not None else torch.zeros(p.shape)).to(dtype=delta_dtype(p))
                )
                for k, p in resolved.items()
            ]
        )
        self._b = [b[k].detach().to(dtype=delta_dtype(resolved[k])).clone() for k in self._names]
        self.damping = float(damping)
        self.curvature = curvature
        self.encode = encode
        self.hvp_impl = hvp_impl
        self.optimizer_name = optimizer
        self.lr = float(lr)
        self.momentum = float(momentum)
        self.nesterov = bool(nesterov)
        self.betas = (float(betas[0]), float(betas[1]))
        self.eps = float(eps)
        self.schedule = schedule
        self.min_lr_ratio = float(min_lr_ratio)
        self.warmup_steps = int(warmup_steps)
        self.final_residual = bool(final_residual)
        # Results that must survive ddp_fork/ddp_spawn (the main process gets rank 0's state_dict back).
        self.register_buffer("hvp_calls", torch.zeros((), dtype=torch.long))
        self.register_buffer("num_steps", torch.zeros((), dtype=torch.long))
        self.register_buffer("final_relative_residual", torch.tensor(float("nan"), dtype=torch.float64))
        self.register_buffer("stopped_early", torch.zeros((), dtype=torch.bool))
        self._local_hvp_calls = 0
        self._val_sum: list[torch.Tensor] | None = None
        self._val_count = 0
        self._last_val_step = -1
        self._last_val_residual = float("nan")
        self.save_hyperparameters(ignore=["module", "params", "b", "encode", "init"])

    # ------------------------------------------------------------------ views
    @property
    def recommender(self) -> nn.Module:
        return self._recommender  # type: ignore[return-value]

    def theta(self) -> dict[str, nn.Parameter]:
        """θ resolved by name from the held module (valid after device moves)."""
        named = dict(self.recommender.named_parameters())
        return {k: named[k] for k in self._names}

    def delta_dict(self) -> TensorDict:
        """Δ as ``{name: tensor}`` (detached copies)."""
        return {k: d.detach().clone() for k, d in zip(self._names, self.delta)}

    def b_dict(self) -> TensorDict:
        return {k: v for k, v in zip(self._names, self._b)}

    # ------------------------------------------------------------------ device handling
    def _ensure_device(self) -> None:
        device = self.device
        first = next(iter(self.theta().values()))
        if first.device != device:
            if self._home_device is None:
                self._home_device = first.device
            self.recommender.to(device)
        if self._b[0].device != device:
            self._b = [t.to(device) for t in self._b]

    def on_fit_start(self) -> None:
        self._ensure_device()

    def on_validation_start(self) -> None:
        self._ensure_device()

    def teardown(self, stage: str) -> None:
        if self._home_device is not None:
            self.recommender.to(self._home_device)
            self._home_device = None

    # ------------------------------------------------------------------ curvature product
    def _curvature_sum(self, raw_batch: Any) -> tuple[list[torch.Tensor], int]:
        """(Σ_{i∈B} C_i Δ as a list aligned with ``self.delta``, |B|) at θ̂, eval mode."""
        check_grad_possible()
        self._ensure_device()
        theta = self.theta()
        batch = prepare(raw_batch, self.encode, self.device)
        vector = {k: d.detach().to(dtype=self._param_dtypes[k]) for k, d in zip(self._names, self.delta)}
        with evaluation_mode(self.recommender), requiring_grad(theta):
            hv, count = batch_hvp_sum(self.recommender, theta, batch, vector, self.curvature, self.hvp_impl)
        self._local_hvp_calls += 1
        return [hv[k].to(dtype=d.dtype) for k, d in zip(self._names, self.delta)], count

    # ------------------------------------------------------------------ training
    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        hv_sum, count = self._curvature_sum(batch)
        if count == 0:
            raise ValueError("InfluenceSolver: empty training batch")
        hv = [h / count for h in hv_sum]
        deltas = [d for d in self.delta]
        grads = [h + self.damping * d.detach() - bb for h, d, bb in zip(hv, deltas, self._b)]
        surrogate = sum((g.detach() * d).sum() for g, d in zip(grads, deltas))
        with torch.no_grad():
            quad = sum((d * h).sum() for d, h in zip(deltas, hv))
            sq = sum((d * d).sum() for d in deltas)
            lin = sum((bb * d).sum() for bb, d in zip(self._b, deltas))
            objective = 0.5 * quad + 0.5 * self.damping * sq - lin
            grad_norm = torch.sqrt(sum((g * g).sum() for g in grads))
        self.log("train/qp_objective", objective.float(), on_step=True, on_epoch=False, prog_bar=True, batch_size=count)
        self.log("train/qp_grad_norm", grad_norm.float(), on_step=True, on_epoch=False, batch_size=count)
        return surrogate

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.num_steps += 1

    def configure_optimizers(self) -> Any:
        params = list(self.delta.parameters())
        if self.optimizer_name == "adam":
            opt = torch.optim.Adam(params, lr=self.lr, betas=self.betas, eps=self.eps)
        else:
            mom = self.momentum if self.optimizer_name == "momentum" else 0.0
            opt = torch.optim.SGD(params, lr=self.lr, momentum=mom, nesterov=self.nesterov and mom > 0)
        if self.schedule == "constant" and self.warmup_steps == 0:
            return opt
        total = self.trainer.estimated_stepping_batches if self._trainer is not None else math.inf
        if self.schedule != "constant" and not math.isfinite(total):
            raise ValueError(f"schedule {self.schedule!r} needs a finite number of steps (set max_steps or max_epochs)")
        warm, floor = self.warmup_steps, self.min_lr_ratio

        def factor(step: int) -> float:
            if step < warm:
                return (step + 1) / warm
            if self.schedule == "constant":
                return 1.0
            span = max(1.0, float(total) - warm)
            t = min(1.0, (step - warm) / span)
            if self.schedule == "cosine":
                return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * t))
            return floor + (1 - floor) * (1 - t)

        scheduler = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # ------------------------------------------------------------------ residual
    def _reset_residual(self) -> None:
        self._val_sum = [torch.zeros_like(d, dtype=torch.float64) for d in self.delta]
        self._val_count = 0

    def _accumulate_residual(self, batch: Any) -> None:
        if self._val_sum is None:
            self._reset_residual()
        with torch.enable_grad():
            hv_sum, count = self._curvature_sum(batch)
        assert self._val_sum is not None
        self._val_sum = [a + h.double() for a, h in zip(self._val_sum, hv_sum)]
        self._val_count += count

    def _finish_residual(self) -> float:
        """‖H_λΔ − b‖/‖b‖ from the accumulated sums, reduced over ranks."""
        assert self._val_sum is not None
        flat = torch.cat([a.reshape(-1) for a in self._val_sum] + [torch.tensor([float(self._val_count)], dtype=torch.float64, device=self._val_sum[0].device)])
        if self._trainer is not None and self._trainer.world_size > 1:
            flat = self.trainer.strategy.reduce(flat, reduce_op="sum")
        count = float(flat[-1])
        if count == 0:
            return float("nan")
        hv = flat[:-1] / count
        delta = torch.cat([d.detach().reshape(-1).double() for d in self.delta])
        b = torch.cat([t.reshape(-1).double() for t in self._b])
        r = hv + self.damping * delta - b
        norm_b = torch.linalg.vector_norm(b)
        rel = torch.linalg.vector_norm(r) / norm_b if norm_b > 0 else torch.linalg.vector_norm(r)
        self._val_sum = None
        return float(rel)

    def on_validation_epoch_start(self) -> None:
        self._reset_residual()

    def validation_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        if torch.is_inference_mode_enabled():
            raise RuntimeError(
                "InfluenceSolver.validation_step computes curvature products and needs autograd: build the "
                "lightning.Trainer with inference_mode=False"
            )
        self._accumulate_residual(batch)

    def on_validation_epoch_end(self) -> None:
        rel = self._finish_residual()
        self._last_val_residual = rel
        self._last_val_step = int(self.num_steps.item())
        # already reduced over ranks (identical everywhere); sync_dist only silences Lightning's epoch-level warning
        self.log("val/relative_residual", rel, prog_bar=True, sync_dist=True)

    def on_train_end(self) -> None:
        total = torch.tensor([float(self._local_hvp_calls)], dtype=torch.float64, device=self.device)
        final = self._last_val_residual if self._last_val_step == int(self.num_steps.item()) else float("nan")
        if math.isnan(final) and self.final_residual:
            loaders = self.trainer.val_dataloaders
            if loaders is not None:
                loaders = loaders if isinstance(loaders, (list, tuple)) else [loaders]
                self._reset_residual()
                for loader in loaders:
                    for batch in loader:
                        self._accumulate_residual(batch)
                # the residual passes count too
                total = torch.tensor([float(self._local_hvp_calls)], dtype=torch.float64, device=self.device)
                final = self._finish_residual()
        if self.trainer.world_size > 1:
            total = self.trainer.strategy.reduce(total, reduce_op="sum")
        self.hvp_calls.fill_(int(total.item()))
        self.stopped_early.fill_(bool(self.trainer.should_stop))
        self.final_relative_residual.fill_(final)


__all__ = ["InfluenceSolver", "RankSampler", "batches_loader"]
