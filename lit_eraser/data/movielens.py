"""MovieLens 100K from the raw GroupLens files, in two shapes.

Files (``<data_dir>``, usually ``<root>/ml-100k``): ``u.data`` (``user \\t item \\t rating \\t time``) and
``u.item`` (``id|title|...``, ISO-8859-1). Item ids become ``u.item id - 1`` (0..1681); users keep their
MovieLens ids (1..943) as ``user``. Each user's ratings are ordered by time, ties broken by item id.

Row ids are stable and independent of the seed: ``id = user * 1000 + t`` where ``t`` is the position of
the row's target in that user's time-ordered ratings (a user has at most 737 ratings).

Both shapes split by **user** (not by time): the users are shuffled with ``seed`` and the first
``round(test_fraction * n)`` become test users, the next ``round(val_fraction * n)`` validation users,
the rest training users (defaults 8:1:1 -> 755 / 94 / 94 of the 943 users). A user's rows all land in one
split, so removing a user is a well-defined unlearning request and no test user is seen in training.

``movielens`` (:class:`MovieLensDataModule`, sequential, LLaRA-style):
    Modelled on LLaRA's LastFM files (976 training users contributing every prefix of their sequence,
    122 + 122 held-out users with one row each, i.e. a user split near 8:1:1). Here: a training user's
    rating at position ``t >= min_history`` gives a row with ``history`` = the up to ``history_len`` (10)
    items before it (LLaRA drops ``len_seq < 3``, hence ``min_history = 3``) and ``target`` = that item;
    a validation/test user gives one row, the last rating as target and the 10 before it as history.
    Candidates: :func:`lit_eraser.data.candidates.draw_candidates` from ``(seed, id)``, 20 items.
    Titles as LLaRA shows them: the year suffix ``" (1995)"`` removed and a trailing article moved to
    the front (``"Usual Suspects, The (1995)"`` -> ``"The Usual Suspects"``).
    Sizes (seed 0): 76,505 train rows (755 users) / 94 val / 94 test rows.

``movielens_tallrec`` (:class:`MovieLensTallrecDataModule`, binary, TALLRec-style):
    TALLRec's ``preprocess_movie.py``: every rating with at least ``history_len`` (10) earlier ratings
    gives a row; of the previous 10 movies, those rated ``> like_threshold`` (3) are ``liked``, the rest
    ``disliked`` (both oldest first); ``target`` is the movie, ``label = int(rating > 3)``. Titles are
    the ``u.item`` titles verbatim, year included, as in TALLRec's prompts. All rows of a user go to the
    user's split (TALLRec also splits contiguous blocks of its user-ordered list; here the users are
    shuffled with the seed instead). About 55 % of the labels are 1.
    Sizes (seed 0): 71,220 train / 9,952 val / 9,398 test rows, label mean 0.55 / 0.54 / 0.53
    (use ``max_train_rows`` / ``max_eval_rows`` for the few-shot settings TALLRec studies).
"""

from __future__ import annotations

import io
import re
from pathlib import Path
from typing import Any

import numpy as np

from lit_eraser.data.base import (
    BINARY_FEATURES,
    SEQUENTIAL_FEATURES,
    FileDataModule,
    check_title,
    read_limited_text,
    rows_to_dataset,
    select_columns,
)
from lit_eraser.data.candidates import draw_candidates
from lit_eraser.data.download import ML_100K

ID_STRIDE = 1000
_MAX_ID_DIGITS = 12
_YEAR = re.compile(r"\s*\(\d{4}\)\s*$")
_TRAILING_ARTICLE = re.compile(r"^(?P<rest>.*), (?P<article>The|A|An)$")


def read_u_item(path: str | Path, max_bytes: int | None = None) -> list[str]:
    """Raw ``u.item`` titles by item id (``u.item id - 1``).

    The file may hold at most ``max_bytes`` (default :data:`~lit_eraser.data.base.MAX_DATA_FILE_BYTES`) and a
    title at most :data:`~lit_eraser.data.base.MAX_TITLE_CHARS` characters (:class:`DataLimitError` otherwise).
    """
    titles: dict[int, str] = {}
    text = read_limited_text(path, "ISO-8859-1", max_bytes, what="title file")
    for lineno, line in enumerate(io.StringIO(text), 1):
        if not line.strip():
            continue
        fields = line.rstrip("\n").split("|", 2)
        key = fields[0]
        if len(fields) < 2 or not (key.isascii() and key.isdigit()) or len(key) > _MAX_ID_DIGITS:
            raise ValueError(f"{path}:{lineno}: expected 'id|title|...', got {line[:80]!r}")
        titles[int(key) - 1] = check_title(fields[1].strip(), f"{path}:{lineno}")
    if sorted(titles) != list(range(len(titles))):
        raise ValueError(f"{path}: item ids are not exactly 1..{len(titles)}")
    return [titles[i] for i in range(len(titles))]


def llara_title(title: str) -> str:
    """LLaRA's display title: no year suffix, trailing article moved to the front."""
    title = _YEAR.sub("", title)
    match = _TRAILING_ARTICLE.match(title)
    if match:
        title = f"{match['article']} {match['rest']}"
    return title


def read_u_data(
    path: str | Path, num_items: int, max_bytes: int | None = None
) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Per user: ``(items, ratings)`` ordered by time, ties by item id (item ids 0-based); the file may hold at
    most ``max_bytes`` (default :data:`~lit_eraser.data.base.MAX_DATA_FILE_BYTES`)."""
    text = read_limited_text(path, "ISO-8859-1", max_bytes, what="ratings file")
    try:
        raw = np.loadtxt(io.StringIO(text), dtype=np.int64, delimiter="\t", ndmin=2)
    except (ValueError, OverflowError) as exc:
        raise ValueError(f"{path}: not 'user<TAB>item<TAB>rating<TAB>time' lines ({str(exc)[:200]})") from None
    if raw.ndim != 2 or raw.shape[1] != 4:
        raise ValueError(f"{path}: expected 4 tab-separated columns, found shape {raw.shape}")
    if raw.shape[0] == 0:
        raise ValueError(f"{path}: holds no ratings")
    users, items, ratings, times = raw[:, 0], raw[:, 1] - 1, raw[:, 2], raw[:, 3]
    if items.min() < 0 or items.max() >= num_items:
        raise ValueError(f"{path}: item ids outside 1..{num_items}")
    order = np.lexsort((items, times, users))  # by user, then time, then item
    users, items, ratings = users[order], items[order], ratings[order]
    bounds = np.flatnonzero(np.diff(users)) + 1
    per_user = {}
    for u_items, u_ratings, start in zip(np.split(items, bounds), np.split(ratings, bounds), np.r_[0, bounds]):
        per_user[int(users[start])] = (u_items, u_ratings)
    return per_user


def split_users(users: list[int], seed: int, val_fraction: float, test_fraction: float) -> dict[str, list[int]]:
    """Shuffle ``users`` with ``seed``; first the test users, then validation, then training (each sorted)."""
    order = np.random.default_rng([int(seed), 0x4D4C]).permutation(sorted(users)).tolist()
    n_test = int(round(test_fraction * len(order)))
    n_val = int(round(val_fraction * len(order)))
    return {
        "test": sorted(order[:n_test]),
        "val": sorted(order[n_test : n_test + n_val]),
        "train": sorted(order[n_test + n_val :]),
    }


class _MovieLensBase(FileDataModule):
    dirname = "ml-100k"
    source = ML_100K

    def __init__(
        self, history_len: int = 10, val_fraction: float = 0.1, test_fraction: float = 0.1, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        if history_len < 1:
            raise ValueError(f"history_len must be >= 1, got {history_len}")
        for key, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
            if not 0.0 <= value < 1.0:
                raise ValueError(f"{key} must be in [0, 1), got {value}")
        if val_fraction + test_fraction >= 1.0:
            raise ValueError("val_fraction + test_fraction must leave some training users")
        self.history_len = history_len
        self.val_fraction = val_fraction
        self.test_fraction = test_fraction

    def _load(self) -> tuple[list[str], dict[int, tuple[np.ndarray, np.ndarray]], dict[str, list[int]]]:
        directory = self.dataset_dir()
        raw_titles = read_u_item(directory / "u.item")
        per_user = read_u_data(directory / "u.data", len(raw_titles))
        longest = max(len(items) for items, _ in per_user.values())
        if longest > ID_STRIDE:
            raise ValueError(f"{directory / 'u.data'}: a user has {longest} ratings; row ids assume < {ID_STRIDE}")
        splits = split_users(list(per_user), self.seed, self.val_fraction, self.test_fraction)
        return raw_titles, per_user, splits


class MovieLensDataModule(_MovieLensBase):
    """MovieLens 100K as LLaRA-style sequential rows (next movie among 20 candidates), split by user.

    Args:
        history_len: Most items in a history (LLaRA: 10).
        min_history: Training rows need at least this many earlier ratings (LLaRA drops ``len_seq < 3``).
        val_fraction: Fraction of users held out for validation (one row each).
        test_fraction: Fraction of users held out for test (one row each).
        n_candidates: Candidates per row, target included.
    """

    name = "movielens"
    kind = "sequential"

    def __init__(self, min_history: int = 3, n_candidates: int = 20, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if min_history < 1:
            raise ValueError(f"min_history must be >= 1, got {min_history}")
        if n_candidates < 2:
            raise ValueError(f"n_candidates must be >= 2, got {n_candidates}")
        self.min_history = min_history
        self.n_candidates = n_candidates

    def _build(self) -> None:
        raw_titles, per_user, splits = self._load()
        self.item_titles = [llara_title(t) for t in raw_titles]
        for split, users in splits.items():
            columns: dict[str, list[Any]] = {"id": [], "user": [], "history": [], "target": []}
            for user in users:
                items = per_user[user][0].tolist()
                if split == "train":
                    positions = range(self.min_history, len(items))
                else:
                    positions = range(len(items) - 1, len(items)) if len(items) > self.min_history else range(0)
                for t in positions:
                    columns["id"].append(user * ID_STRIDE + t)
                    columns["user"].append(user)
                    columns["history"].append(items[max(0, t - self.history_len) : t])
                    columns["target"].append(items[t])
            if split == "train":
                self.keep_full_train_pairs(columns["history"], columns["target"])
            columns = select_columns(columns, self.limit_indices(split, len(columns["id"])))
            columns["candidates"] = [
                draw_candidates(self.seed, row_id, target, history, self.num_items, self.n_candidates)
                for row_id, target, history in zip(columns["id"], columns["target"], columns["history"])
            ]
            setattr(self, f"{split}_rows", rows_to_dataset(columns, SEQUENTIAL_FEATURES))


class MovieLensTallrecDataModule(_MovieLensBase):
    """MovieLens 100K as TALLRec-style Yes/No rows (10 previous ratings -> will the user like it?), split by user.

    Args:
        history_len: Previous ratings shown per row; rows need at least this many (TALLRec: 10).
        like_threshold: A rating above this is a like (TALLRec: 3).
        val_fraction: Fraction of users held out for validation (all their rows).
        test_fraction: Fraction of users held out for test (all their rows).
    """

    name = "movielens_tallrec"
    kind = "binary"

    def __init__(self, like_threshold: int = 3, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.like_threshold = like_threshold

    def _build(self) -> None:
        titles, per_user, splits = self._load()
        self.movie_titles = titles
        k = self.history_len
        for split, users in splits.items():
            columns: dict[str, list[Any]] = {k_: [] for k_ in ("id", "user", "liked", "disliked", "target", "label")}
            for user in users:
                items, ratings = (a.tolist() for a in per_user[user])
                likes = [r > self.like_threshold for r in ratings]
                for t in range(k, len(items)):
                    window = range(t - k, t)
                    columns["id"].append(user * ID_STRIDE + t)
                    columns["user"].append(user)
                    columns["liked"].append([titles[items[i]] for i in window if likes[i]])
                    columns["disliked"].append([titles[items[i]] for i in window if not likes[i]])
                    columns["target"].append(titles[items[t]])
                    columns["label"].append(int(likes[t]))
            columns = select_columns(columns, self.limit_indices(split, len(columns["id"])))
            setattr(self, f"{split}_rows", rows_to_dataset(columns, BINARY_FEATURES))
