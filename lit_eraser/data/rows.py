"""The row formats every datamodule emits and every recommender encodes (docs/ARCHITECTURE.md §1)."""

from __future__ import annotations

from typing import Literal, TypedDict

RowKind = Literal["sequential", "binary"]


class SequentialRow(TypedDict):
    """LLaRA-style next-item choice: history of item ids (oldest first), target, 20 candidates.

    ``user`` groups rows of one user (instance removal of users); rows without a known user get their own id.
    """

    id: int
    user: int
    history: list[int]
    target: int
    candidates: list[int]


class BinaryRow(TypedDict):
    """TALLRec-style Yes/No: item names the user liked and disliked, a target item, label 1 = Yes."""

    id: int
    user: int
    liked: list[str]
    disliked: list[str]
    target: str
    label: int


SEQUENTIAL_FIELDS = frozenset(SequentialRow.__annotations__)
BINARY_FIELDS = frozenset(BinaryRow.__annotations__)
