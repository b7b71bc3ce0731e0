"""The one learning-rate schedule every trainer in the package uses: linear warm-up, then constant, cosine or
linear decay to a floor. Written once so the adapter fit, the QP solver, base pretraining and SASRec agree."""

from __future__ import annotations

import math
from typing import Literal

import torch

ScheduleKind = Literal["constant", "cosine", "linear"]


def lr_factor(step: int, kind: ScheduleKind, warmup_steps: int, total_steps: float | None, floor: float = 0.0) -> float:
    """Multiplier of the peak learning rate at optimiser step ``step`` (0-based).

    Warm-up is linear over ``warmup_steps``; afterwards ``constant`` stays at 1, ``cosine`` / ``linear`` decay to
    ``floor`` at ``total_steps``. Without a finite ``total_steps`` (or with ``total_steps <= warmup_steps``) the
    decay is skipped: the rate stays at its peak.
    """
    if warmup_steps and step < warmup_steps:
        return (step + 1) / warmup_steps
    if kind == "constant" or total_steps is None or not math.isfinite(total_steps) or total_steps <= warmup_steps:
        return 1.0
    progress = min(1.0, (step - warmup_steps) / max(1.0, float(total_steps) - warmup_steps))
    shape = 0.5 * (1.0 + math.cos(math.pi * progress)) if kind == "cosine" else 1.0 - progress
    return floor + (1.0 - floor) * shape


def warmup_decay(
    optimizer: torch.optim.Optimizer, kind: ScheduleKind, warmup_steps: int, total_steps: float | None, floor: float = 0.0
) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-step ``LambdaLR`` following :func:`lr_factor`."""
    if kind not in ("constant", "cosine", "linear"):
        raise ValueError(f"unknown schedule {kind!r}; choose constant, cosine or linear")
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, kind, warmup_steps, total_steps, floor))
