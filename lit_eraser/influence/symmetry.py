"""LoRA's rotation symmetry: directions of θ along which no loss changes, so H_λ must not be inverted there.

A LoRA pair computes B·A, and B·Q, Qᵀ·A gives the same product for every orthogonal r×r Q; ‖A‖² + ‖B‖² is
unchanged too. So at a stationary point of mean loss + (λ/2)‖θ‖², H + λI is exactly singular along the
tangents of that orbit, and near one (an L-BFGS finish stops at ‖∇J‖ ≈ 1e-4) it is nearly singular with a
right-hand side whose component there is of the same small order: a dense solve then returns an arbitrary
move along the orbit, different on every CPU. Moving along the orbit changes no prediction to first order,
so the well-posed update is the one orthogonal to it.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

LORA_A, LORA_B = ".lora_A.", ".lora_B."


def lora_pairs(names: list[str]) -> list[tuple[str, str]]:
    """(A name, B name) of every PEFT LoRA linear pair among ``names``."""
    present = set(names)
    return [(name, name.replace(LORA_A, LORA_B)) for name in names if LORA_A in name and name.replace(LORA_A, LORA_B) in present]


def lora_rotation_directions(params: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Orthonormal basis (p × k, float64) of the orbit tangents at θ: for each pair and each antisymmetric
    generator X = e_i e_jᵀ − e_j e_iᵀ, the direction dA = −X·A, dB = B·X (zero elsewhere)."""
    names = list(params)
    offsets, offset = {}, 0
    for name in names:
        offsets[name] = offset
        offset += params[name].numel()
    columns: list[torch.Tensor] = []
    for a_name, b_name in lora_pairs(names):
        a = params[a_name].detach().double().cpu()
        b = params[b_name].detach().double().cpu()
        if a.dim() != 2 or b.dim() != 2 or a.shape[0] != b.shape[1]:
            continue
        rank = a.shape[0]
        for i in range(rank):
            for j in range(i + 1, rank):
                x = torch.zeros(rank, rank, dtype=torch.float64)
                x[i, j], x[j, i] = 1.0, -1.0
                column = torch.zeros(offset, dtype=torch.float64)
                column[offsets[a_name] : offsets[a_name] + a.numel()] = (-x @ a).reshape(-1)
                column[offsets[b_name] : offsets[b_name] + b.numel()] = (b @ x).reshape(-1)
                columns.append(column)
    if not columns:
        return torch.zeros(offset, 0, dtype=torch.float64)
    u, s, _ = torch.linalg.svd(torch.stack(columns, dim=1), full_matrices=False)
    return u[:, s > 1e-10 * float(s.max())] if float(s.max()) > 0 else torch.zeros(offset, 0, dtype=torch.float64)
