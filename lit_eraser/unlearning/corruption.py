"""Seeded corruption generators: the paper's unlearning experiments, as data.

Each generator takes clean training rows and returns a ``Corruption``:

- ``rows``: the training set the *original* adapter is trained on (corrupted rows, or all rows for IR);
- ``requests``: the unlearning requests that undo the corruption (one per affected row, in id order);
- ``clean_rows``: what a clean retrain trains on, ``apply_requests(rows, requests)``.

Counting: ``fraction`` is in ``(0, 1]``; the number of affected rows (users, for ``remove_users``) is
``fraction * n`` rounded half up (computed in decimal, so ``0.15 * 10`` is 2), and at least 1.
Affected rows are drawn without replacement by ``numpy.random.default_rng(seed)`` from the rows sorted by id, so
the result depends on the seed and the rows, not on the rows' order. The same seed gives the same result.

A config names a generator by task and the datamodule's row kind (``CORRUPTIONS``, ``make_corruption``,
``CorruptionSpec``): e.g. ``task: QM, fraction: 0.1`` on a sequential dataset.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

import numpy as np

from lit_eraser.data.rows import RowKind
from lit_eraser.unlearning.requests import (
    ROW_KINDS,
    TASKS,
    UnlearningRequest,
    _copy_row,
    _is_int,
    apply_requests,
    summarize_task,
)

Row = dict[str, Any]


@dataclass(frozen=True)
class Corruption:
    """A corrupted training set and the requests that undo it.

    Args:
        rows: Training rows the original adapter is trained on.
        requests: Unlearning requests, one per affected row, in id order.
        clean_rows: Training rows a clean retrain uses: ``apply_requests(rows, requests)``.
    """

    rows: list[Row]
    requests: list[UnlearningRequest]
    clean_rows: list[Row]

    @property
    def task(self) -> str:
        """``IR``, ``QM``, ``RC`` (or ``mixed``)."""
        return summarize_task(self.requests)

    @property
    def affected_ids(self) -> list[int]:
        """Ids of the rows named by the requests, in id order."""
        return [request.id for request in self.requests]


def affected_count(fraction: float, n: int) -> int:
    """How many of ``n`` rows (or users) a ``fraction`` affects: ``fraction * n`` rounded half up, at least 1."""
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction!r}")
    if n < 1:
        raise ValueError("there are no rows to corrupt")
    exact = Decimal(repr(float(fraction))) * n
    return max(1, int(exact.to_integral_value(rounding=ROUND_HALF_UP)))


def _prepare(rows: Iterable[Mapping[str, Any]], seed: int) -> tuple[list[Row], np.random.Generator]:
    if not _is_int(seed) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    copied = [_copy_row(row) for row in rows]
    ids = [row["id"] for row in copied]
    if len(set(ids)) != len(ids):
        raise ValueError("training rows must have unique ids")
    return copied, np.random.default_rng(int(seed))


def _pick(rng: np.random.Generator, candidates: list[Row], k: int, what: str) -> list[Row]:
    """``k`` of ``candidates`` (without replacement), chosen in id order, returned in id order."""
    if k > len(candidates):
        raise ValueError(f"cannot affect {k} rows: only {len(candidates)} {what}")
    ordered = sorted(candidates, key=lambda row: row["id"])
    picks = sorted(rng.choice(len(ordered), size=k, replace=False).tolist())
    return [ordered[i] for i in picks]


def _require_kind(rows: list[Row], fields: tuple[str, ...], kind: str) -> None:
    for row in rows:
        missing = [name for name in fields if name not in row]
        if missing:
            raise ValueError(f"row {row.get('id')!r} is not a {kind} row (missing {', '.join(missing)})")


def _finish(rows: list[Row], requests: list[UnlearningRequest]) -> Corruption:
    requests = sorted(requests, key=lambda request: request.id)
    return Corruption(rows=rows, requests=requests, clean_rows=apply_requests(rows, requests))


# --------------------------------------------------------------------------------------------------- generators
def corrupt_qm_sequential(
    rows: Iterable[Mapping[str, Any]], fraction: float, seed: int, num_items: int
) -> Corruption:
    """QM: in ``fraction`` of the rows, replace the *last* history item by a random item that is not in the
    history, not the target and not among the row's candidates; the requests restore the clean history
    (the paper's LLaRA experiment, 10% and 5%).

    Args:
        rows: Clean sequential training rows.
        fraction: Share of rows to corrupt, in ``(0, 1]``.
        seed: Seed of the random choices.
        num_items: Catalogue size; replacement items are drawn uniformly from ``[0, num_items)``.
    """
    rows, rng = _prepare(rows, seed)
    _require_kind(rows, ("history", "target", "candidates"), "sequential")
    if not _is_int(num_items) or num_items < 1:
        raise ValueError(f"num_items must be a positive integer, got {num_items!r}")
    for row in rows:
        largest = max([row["target"], *row["history"], *row["candidates"]])
        if largest >= num_items:
            raise ValueError(f"row {row['id']} names item {largest}, outside the catalogue of {num_items} items")
    k = affected_count(fraction, len(rows))
    chosen = _pick(rng, [row for row in rows if row["history"]], k, "rows have a non-empty history")
    requests = []
    for row in chosen:
        excluded = set(row["history"]) | {row["target"]} | set(row["candidates"])
        if len(excluded) >= num_items:
            raise ValueError(f"row {row['id']}: every item of the catalogue is in its history or candidates")
        while True:
            noise = int(rng.integers(num_items))
            if noise not in excluded:
                break
        clean = list(row["history"])
        row["history"] = clean[:-1] + [noise]
        requests.append(UnlearningRequest("QM", row["id"], {"history": clean}))
    return _finish(rows, requests)


def remove_users(rows: Iterable[Mapping[str, Any]], fraction: float, seed: int) -> Corruption:
    """IR: choose ``fraction`` of the distinct users; every row of theirs gets an IR request.

    The rows are unchanged (the original adapter trains on all of them); ``clean_rows`` drops the chosen users'
    rows. Works for rows of either kind.

    Args:
        rows: Training rows (each with a ``user``).
        fraction: Share of distinct users to remove, in ``(0, 1]``.
        seed: Seed of the random choices.
    """
    rows, rng = _prepare(rows, seed)
    _require_kind(rows, ("user",), "user-carrying")
    users = sorted({row["user"] for row in rows})
    k = affected_count(fraction, len(users))
    picks = rng.choice(len(users), size=k, replace=False).tolist()
    removed = {users[i] for i in picks}
    requests = [UnlearningRequest("IR", row["id"]) for row in rows if row["user"] in removed]
    return _finish(rows, requests)


def corrupt_rc_binary(rows: Iterable[Mapping[str, Any]], fraction: float, seed: int) -> Corruption:
    """RC: flip the Yes/No label of ``fraction`` of the rows; the requests restore it.

    Args:
        rows: Clean binary training rows.
        fraction: Share of rows to corrupt, in ``(0, 1]``.
        seed: Seed of the random choices.
    """
    rows, rng = _prepare(rows, seed)
    _require_kind(rows, ("label",), "binary")
    chosen = _pick(rng, rows, affected_count(fraction, len(rows)), "rows")
    requests = []
    for row in chosen:
        clean = int(row["label"])
        row["label"] = 1 - clean
        requests.append(UnlearningRequest("RC", row["id"], {"label": clean}))
    return _finish(rows, requests)


def corrupt_rc_sequential(rows: Iterable[Mapping[str, Any]], fraction: float, seed: int) -> Corruption:
    """RC: in ``fraction`` of the rows, replace the target by a random *other* candidate of the row (so the
    candidate list is unchanged and the pair stays exact); the requests restore the true target.

    Args:
        rows: Clean sequential training rows.
        fraction: Share of rows to corrupt, in ``(0, 1]``.
        seed: Seed of the random choices.
    """
    rows, rng = _prepare(rows, seed)
    _require_kind(rows, ("target", "candidates"), "sequential")
    eligible = [row for row in rows if any(c != row["target"] for c in row["candidates"])]
    chosen = _pick(rng, eligible, affected_count(fraction, len(rows)), "rows have a candidate besides the target")
    requests = []
    for row in chosen:
        clean = row["target"]
        wrong = [c for c in row["candidates"] if c != clean]
        row["target"] = int(wrong[int(rng.integers(len(wrong)))])
        requests.append(UnlearningRequest("RC", row["id"], {"target": clean}))
    return _finish(rows, requests)


# --------------------------------------------------------------------------------------------------- registry
CORRUPTIONS: dict[tuple[str, str], Callable[..., Corruption]] = {
    ("IR", "sequential"): remove_users,
    ("IR", "binary"): remove_users,
    ("QM", "sequential"): corrupt_qm_sequential,
    ("RC", "sequential"): corrupt_rc_sequential,
    ("RC", "binary"): corrupt_rc_binary,
}
"""Corruption generators by ``(task, row kind)``."""

_NEEDS_NUM_ITEMS = {corrupt_qm_sequential}


def make_corruption(
    task: str,
    kind: RowKind,
    rows: Iterable[Mapping[str, Any]],
    fraction: float,
    seed: int = 0,
    num_items: int | None = None,
) -> Corruption:
    """Run the registered generator for ``(task, kind)``; ``num_items`` is required where items are drawn (QM)."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; expected one of {', '.join(TASKS)}")
    if kind not in ROW_KINDS:
        raise ValueError(f"unknown row kind {kind!r}; expected one of {', '.join(ROW_KINDS)}")
    generator = CORRUPTIONS.get((task, kind))
    if generator is None:
        known = ", ".join(f"{t} on {k} rows" for t, k in CORRUPTIONS)
        raise ValueError(f"no corruption generator for task {task} on {kind} rows; there are: {known}")
    if generator in _NEEDS_NUM_ITEMS:
        if num_items is None:
            raise ValueError(f"task {task} on {kind} rows draws items: pass num_items (the catalogue size)")
        return generator(rows, fraction, seed, num_items)
    return generator(rows, fraction, seed)


@dataclass(frozen=True)
class CorruptionSpec:
    """Which corruption an experiment applies to its training data (a config section).

    Args:
        task: ``IR`` (remove a fraction of users), ``QM`` (replace the last history item of a fraction of rows)
            or ``RC`` (corrupt the answer of a fraction of rows).
        fraction: Share of rows (users, for IR) affected, in ``(0, 1]``; rounded half up, at least one.
        seed: Seed of the corruption's random choices.
    """

    task: str = "QM"
    fraction: float = 0.1
    seed: int = 0

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"unknown task {self.task!r}; expected one of {', '.join(TASKS)}")
        affected_count(self.fraction, 1)  # validates the fraction
        if not _is_int(self.seed) or self.seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {self.seed!r}")

    def apply(self, rows: Iterable[Mapping[str, Any]], kind: RowKind, num_items: int | None = None) -> Corruption:
        """Corrupt ``rows`` of the given kind (``num_items``: catalogue size, needed for sequential QM)."""
        return make_corruption(self.task, kind, rows, self.fraction, self.seed, num_items)
