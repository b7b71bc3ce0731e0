"""Recommendation metrics as torchmetrics ``Metric``s with sum states (so DDP synchronisation is exact).

Predictions are candidate *indices*: ``-1`` means "no valid prediction" (a generated answer that names no
candidate, or more than one). Ranking predictions are always valid.

* :class:`HitRatioAt1`: correct / total (``denominator="total"``) or correct / valid (``"valid"``);
  LLaRA's HitRatio@1 of generated answers is reported both ways.
* :class:`ValidRatio`: valid / total, LLaRA's ValidRatio.
"""

from __future__ import annotations

from typing import Literal

import torch
from torchmetrics import Metric


def _indices(preds: torch.Tensor) -> torch.Tensor:
    """Candidate indices from ``[B]`` indices or ``[B, C]`` scores (argmax)."""
    if preds.dim() == 2:
        return preds.argmax(dim=1)
    if preds.dim() != 1:
        raise ValueError(f"predictions must be [B] indices or [B, C] scores, got shape {tuple(preds.shape)}")
    return preds.long()


class HitRatioAt1(Metric):
    """Fraction of items whose top prediction is the target.

    Args:
        denominator: ``total`` (every item counts; invalid predictions are misses) or ``valid`` (only items
            with a valid prediction count; 0 when there are none).

    ``update(preds, target)``: ``preds`` is ``[B]`` predicted candidate indices (``-1`` = invalid) or ``[B, C]``
    scores; ``target`` is ``[B]`` target candidate indices.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, denominator: Literal["total", "valid"] = "total", **kwargs) -> None:
        super().__init__(**kwargs)
        if denominator not in ("total", "valid"):
            raise ValueError(f"denominator must be 'total' or 'valid', got {denominator!r}")
        self.denominator = denominator
        self.add_state("correct", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("valid", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("total", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        preds = _indices(preds)
        target = target.long().to(preds.device)
        if preds.shape != target.shape:
            raise ValueError(f"preds {tuple(preds.shape)} and target {tuple(target.shape)} differ in shape")
        valid = preds >= 0
        self.correct += ((preds == target) & valid).sum()
        self.valid += valid.sum()
        self.total += preds.numel()

    def compute(self) -> torch.Tensor:
        denominator = self.total if self.denominator == "total" else self.valid
        if int(denominator) == 0:
            return torch.tensor(0.0)
        return self.correct.float() / denominator.float()


class ValidRatio(Metric):
    """Fraction of items with a valid prediction (a generated answer naming exactly one candidate).

    ``update(preds)``: ``[B]`` predicted candidate indices, ``-1`` = invalid.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("valid", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("total", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, preds: torch.Tensor) -> None:
        preds = _indices(preds)
        self.valid += (preds >= 0).sum()
        self.total += preds.numel()

    def compute(self) -> torch.Tensor:
        if int(self.total) == 0:
            return torch.tensor(0.0)
        return self.valid.float() / self.total.float()


__all__ = ["HitRatioAt1", "ValidRatio"]
