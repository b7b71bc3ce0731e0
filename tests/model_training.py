"""A few optimiser steps on one fixed batch: the shared check that a recommender can learn at all."""

from __future__ import annotations

from typing import Any

import torch


def loss_before_and_after(model: Any, batch: dict[str, torch.Tensor], steps: int) -> tuple[float, float]:
    """Mean per-item loss on ``batch`` before and after ``steps`` steps of the model's own optimiser."""
    model.train()
    optimizer = model.configure_optimizers()["optimizer"]
    with torch.no_grad():
        before = model(batch).mean().item()
    for _ in range(steps):
        loss = model(batch).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        after = model(batch).mean().item()
    return before, after
