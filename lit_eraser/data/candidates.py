"""Deterministic candidate lists: the same (seed, row id) always gives the same 20 items, so evaluation
is reproducible and a row and its edited twin share their candidates."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np


def draw_candidates(
    seed: int, row_id: int, target: int, history: Iterable[int], num_items: int, n_candidates: int = 20
) -> list[int]:
    """Target plus ``n_candidates - 1`` distinct items outside the history, in a shuffled order.

    The generator is keyed by ``(seed, row_id)`` only; the history is used to exclude items, so an edit
    that changes the history may change which items are excluded but never the random stream.
    """
    excluded = set(int(i) for i in history) | {int(target)}
    if num_items - len(excluded) < n_candidates - 1:
        raise ValueError(
            f"row {row_id}: only {num_items - len(excluded)} items outside the history, "
            f"need {n_candidates - 1} negatives"
        )
    rng = np.random.default_rng([int(seed), int(row_id)])
    negatives: list[int] = []
    seen: set[int] = set()
    while len(negatives) < n_candidates - 1:
        for item in rng.integers(0, num_items, size=2 * n_candidates).tolist():
            if item not in excluded and item not in seen:
                seen.add(item)
                negatives.append(item)
                if len(negatives) == n_candidates - 1:
                    break
    candidates = negatives + [int(target)]
    order = rng.permutation(n_candidates).tolist()
    return [candidates[i] for i in order]
