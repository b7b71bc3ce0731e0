"""The right-hand side b of the influence system H_λ Δ = b (METHOD.md, "The update").

    b = (1/n) Σ_{e∈S} [∇ℓ(z_e, θ̂) − ∇ℓ(z'_e, θ̂)],   ∇ℓ(z'_e) := 0 for instance removal (IR).

``removed_batches`` hold the original items z_e of every request (IR, QM and RC alike), ``added_batches``
the edited twins z'_e of the QM/RC requests (none for IR). Each twin must be built from its original exactly
(same candidates, template, ordering; METHOD.md bug 2) — that is the caller's job; here b is just the sum of
per-item gradients of the first set minus those of the second, divided by n (or by ``normalizer``, e.g.
n − |S| for IR with exact renormalisation). Gradients are taken in eval mode (no dropout; METHOD.md bug 3)
with respect to θ only; the module's modes, ``requires_grad`` flags and ``.grad`` fields are left as found.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn

from lit_eraser.influence._utils import (
    Encode,
    TensorDict,
    check_grad_possible,
    evaluation_mode,
    param_device,
    per_item_losses,
    prepare,
    requiring_grad,
    resolve_params,
    tadd,
    tscale,
)


def gradient_sum(
    module: nn.Module,
    params: Mapping[str, nn.Parameter],
    batches: Iterable[Any] | None,
    *,
    encode: Encode | None = None,
) -> tuple[TensorDict, int]:
    """(Σ_i ∇_θ ℓ(z_i, θ) over every item of ``batches``, the number of items), in eval mode."""
    check_grad_possible()
    params = resolve_params(module, params)
    device = param_device(params)
    total: TensorDict = {k: torch.zeros_like(p).detach() for k, p in params.items()}
    count = 0
    if batches is None:
        return total, 0
    with evaluation_mode(module), requiring_grad(params):
        for raw in batches:
            batch = prepare(raw, encode, device)
            losses = per_item_losses(module, batch)
            if losses.numel() == 0:
                continue
            grads = torch.autograd.grad(losses.sum(), list(params.values()), allow_unused=True)
            for (k, p), g in zip(params.items(), grads):
                if g is not None:
                    total[k] = total[k] + g.detach()
            count += int(losses.numel())
    return total, count


def rhs(
    module: nn.Module,
    params: Mapping[str, nn.Parameter],
    removed_batches: Iterable[Any],
    added_batches: Iterable[Any] | None = None,
    n_train: int | None = None,
    *,
    encode: Encode | None = None,
    normalizer: float | None = None,
) -> TensorDict:
    """b = (1/N) [Σ_{z∈removed} ∇ℓ(z) − Σ_{z'∈added} ∇ℓ(z')] at the current θ = θ̂, N = ``normalizer`` or n.

    Args:
        module: returns per-item losses from ``module(batch)``.
        params: θ, ``{name: parameter}``.
        removed_batches: an iterable of raw batches holding the original items z_e of every request.
        added_batches: an iterable of raw batches holding the edited twins z'_e (QM/RC); ``None`` for pure IR.
        n_train: n, the size of the training set that θ̂ was fitted on.
        encode: optional raw-batch encoder (e.g. ``recommender.encode``).
        normalizer: the divisor N in place of n, e.g. ``n_train - n_removed`` for IR with exact
            renormalisation (the difference is second order).
    """
    divisor = normalizer if normalizer is not None else n_train
    if divisor is None:
        raise ValueError("rhs needs n_train (the training-set size) or an explicit normalizer")
    if not divisor > 0:
        raise ValueError(f"the normalizer must be > 0, got {divisor}")
    if n_train is not None and n_train < 1:
        raise ValueError(f"n_train must be >= 1, got {n_train}")
    removed, n_removed = gradient_sum(module, params, removed_batches, encode=encode)
    if n_removed == 0:
        raise ValueError("rhs: removed_batches hold no items; every request names at least its original item z_e")
    added, _ = gradient_sum(module, params, added_batches, encode=encode)
    return tscale(tadd(removed, added, -1.0), 1.0 / float(divisor))


__all__ = ["gradient_sum", "rhs"]
