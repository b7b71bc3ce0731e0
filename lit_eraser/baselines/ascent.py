"""Gradient ascent (Jang et al. 2023) and NPO (Zhang et al. 2024) on the request items.

Both start from θ̂ and take a few optimiser steps on the adapter only. IR: push the forgotten items' loss up.
QM/RC: the same on the original items z, plus ordinary descent on their edited twins z′ (METHOD.md, Baselines).
NPO replaces plain ascent by −(2/β)·log σ(−β·(log π_θ(z) − log π_ref(z))), with log π the negative per-item
loss, which stays bounded as the forgotten items' likelihood falls.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F

from lit_eraser.models.base import RecommenderModule
from lit_eraser.profiling import PhaseCost, PhaseMeter
from lit_eraser.unlearning.requests import UnlearningRequest, build_pairs

Row = Mapping[str, Any]


def _losses(module: RecommenderModule, rows: Sequence[Row]) -> torch.Tensor:
    device = next(module.parameters()).device
    return module({k: v.to(device) for k, v in module.encode(list(rows)).items()})


def ascend(
    module: RecommenderModule,
    train_rows: Sequence[Row],
    requests: Sequence[UnlearningRequest],
    objective: Literal["gradient_ascent", "npo"] = "gradient_ascent",
    steps: int = 10,
    lr: float | None = None,
    beta: float = 0.5,
) -> PhaseCost:
    """Update ``module``'s adapter in place; returns the cost."""
    pairs = build_pairs(requests, {int(r["id"]): r for r in train_rows})
    forget = [z for z, _ in pairs]
    learn = [twin for _, twin in pairs if twin is not None]
    params = list(module.adapter_parameters().values())
    optimizer = torch.optim.AdamW(params, lr=lr or module.lr, weight_decay=0.0)
    with torch.no_grad():
        module.eval()
        reference = _losses(module, forget).detach()
    module.train()
    with PhaseMeter() as meter:
        for _ in range(steps):
            optimizer.zero_grad(set_to_none=True)
            current = _losses(module, forget)
            if objective == "npo":
                log_ratio = reference - current  # log π_θ(z) − log π_ref(z) with log π = −ℓ
                loss = (-2.0 / beta) * F.logsigmoid(-beta * log_ratio).mean()
            else:
                loss = -current.mean()
            if learn:
                loss = loss + _losses(module, learn).mean()
            loss.backward()
            optimizer.step()
    module.eval()
    return meter.cost
