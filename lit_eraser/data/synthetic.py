"""A synthetic dataset with learnable structure, built in well under a second: the embedded default.

Items belong to ``n_genres`` genres and each item's title names its genre ("jazz item 7"). A user has
one favourite genre. Sequential rows: the history is mostly favourite-genre items, the target is a
favourite-genre item; the 19 negatives are drawn at random, so a model that reads genres beats chance
by a wide margin. Binary rows: liked items are from the favourite genre, disliked from others, and the
label says whether the target is from the favourite genre.
"""

from __future__ import annotations

from typing import Any

import datasets
import numpy as np

from lit_eraser.data.base import RecDataModule
from lit_eraser.data.candidates import draw_candidates
from lit_eraser.data.rows import RowKind

GENRE_WORDS = (
    "jazz", "rock", "folk", "metal", "blues", "soul", "disco", "opera", "punk", "salsa", "tango", "reggae",
)


def synthetic_titles(num_items: int, n_genres: int) -> list[str]:
    """Item ``i`` is in genre ``i % n_genres`` and its title says so."""
    return [f"{GENRE_WORDS[i % n_genres]} item {i}" for i in range(num_items)]


class SyntheticDataModule(RecDataModule):
    """Seeded synthetic recommendation data of either kind (no files, no network).

    Args:
        kind: ``sequential`` (LLaRA-style rows) or ``binary`` (TALLRec-style rows).
        num_items: Catalogue size.
        n_genres: Number of genres (at most 12).
        n_train: Training rows.
        n_val: Validation rows.
        n_test: Test rows.
        history_len: Items in each history (sequential) or liked+disliked items (binary).
        noise: Probability that a history item is drawn outside the favourite genre.
        n_candidates: Candidates per sequential row, target included.
    """

    name = "synthetic"

    def __init__(
        self,
        kind: RowKind = "sequential",
        num_items: int = 96,
        n_genres: int = 6,
        n_train: int = 256,
        n_val: int = 32,
        n_test: int = 64,
        history_len: int = 5,
        noise: float = 0.1,
        n_candidates: int = 20,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if kind not in ("sequential", "binary"):
            raise ValueError(f"kind must be 'sequential' or 'binary', got {kind!r}")
        if not 1 <= n_genres <= len(GENRE_WORDS):
            raise ValueError(f"n_genres must be in 1..{len(GENRE_WORDS)}, got {n_genres}")
        if num_items < n_genres * (history_len + 2) or num_items < n_candidates + history_len:
            raise ValueError(f"num_items={num_items} is too small for the other settings")
        self.kind = kind
        self.n_genres = n_genres
        self.n_train, self.n_val, self.n_test = n_train, n_val, n_test
        self.history_len = history_len
        self.noise = noise
        self.n_candidates = n_candidates
        self.item_titles = synthetic_titles(num_items, n_genres)

    def prepare_data(self) -> None:
        """Nothing to download."""

    def _genre_items(self, genre: int) -> np.ndarray:
        return np.arange(genre, self.num_items, self.n_genres)

    def _row(self, rng: np.random.Generator, row_id: int) -> dict[str, Any]:
        genre = int(rng.integers(self.n_genres))
        own = self._genre_items(genre)
        others = np.setdiff1d(np.arange(self.num_items), own)
        if self.kind == "sequential":
            picks = rng.choice(own, size=self.history_len + 1, replace=False).tolist()
            target, history = int(picks[-1]), [int(i) for i in picks[:-1]]
            for pos in range(len(history)):
                if rng.random() < self.noise:
                    choice = int(rng.choice(others))
                    if choice not in history:
                        history[pos] = choice
            candidates = draw_candidates(self.seed, row_id, target, history, self.num_items, self.n_candidates)
            return {"id": row_id, "user": row_id, "history": history, "target": target, "candidates": candidates}
        n_liked = max(1, self.history_len // 2 + 1)
        liked = rng.choice(own, size=n_liked, replace=False).tolist()
        disliked = rng.choice(others, size=self.history_len - n_liked, replace=False).tolist()
        label = int(rng.random() < 0.5)
        pool = np.setdiff1d(own if label else others, liked + disliked)
        target = int(rng.choice(pool))
        names = self.item_titles
        return {
            "id": row_id,
            "user": row_id,
            "liked": [names[i] for i in liked],
            "disliked": [names[i] for i in disliked],
            "target": names[target],
            "label": label,
        }

    def setup(self, stage: str | None = None) -> None:
        rng = np.random.default_rng(self.seed)
        total = self.n_train + self.n_val + self.n_test
        rows = [self._row(rng, row_id) for row_id in range(total)]
        train = rows[: self.n_train]
        self.train_rows = datasets.Dataset.from_list(train)
        if self.kind == "sequential":
            self.keep_full_train_pairs([r["history"] for r in train], [r["target"] for r in train])
        self.val_rows = datasets.Dataset.from_list(rows[self.n_train : self.n_train + self.n_val])
        self.test_rows = datasets.Dataset.from_list(rows[self.n_train + self.n_val :])
        self._finish_setup()
