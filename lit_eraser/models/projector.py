"""LLaRA's projector: a trainable MLP from recommender item embeddings to the LLM's input-embedding space."""

from __future__ import annotations

import torch
from torch import nn


class Projector(nn.Module):
    """``Linear(item_dim, hidden) -> GELU -> Linear(hidden, llm_dim)`` (LLaRA's MLP projector).

    Args:
        item_dim: Width of the item embeddings (SASRec's ``hidden_size``).
        llm_dim: Width of the LLM's token embeddings.
        hidden: Width of the hidden layer; ``None`` means ``llm_dim``.
    """

    def __init__(self, item_dim: int, llm_dim: int, hidden: int | None = None) -> None:
        super().__init__()
        hidden = hidden or llm_dim
        self.net = nn.Sequential(nn.Linear(item_dim, hidden), nn.GELU(), nn.Linear(hidden, llm_dim))

    def forward(self, item_embeddings: torch.Tensor) -> torch.Tensor:
        return self.net(item_embeddings)

    @torch.no_grad()
    def calibrate(self, item_embeddings: torch.Tensor, token_embeddings: torch.Tensor) -> None:
        """Rescale the output layer so projected items have the token embeddings' standard deviation."""
        target = token_embeddings.detach().float().std()
        actual = self(item_embeddings.detach().to(self.net[0].weight)).float().std()
        if torch.isfinite(actual) and actual > 0:
            factor = (target / actual).to(self.net[2].weight.dtype)
            self.net[2].weight.mul_(factor)
            self.net[2].bias.mul_(factor)
