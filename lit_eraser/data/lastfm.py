"""LastFM, LLaRA's split (sequential rows: history of up to 10 artists -> next artist, 20 candidates).

Files (``<data_dir>``, see :data:`lit_eraser.data.download.LASTFM`): ``train_data.df``, ``Val_data.df``,
``Test_data.df`` (pickled DataFrames with columns ``seq``, ``len_seq``, ``next``; read with the
allow-listed unpickler of :mod:`lit_eraser.data.safe_pickle`) and ``id2name.txt`` (``id::artist``).

How the rows are built (decisions; the LLaRA code is the reference):

* ``seq`` holds 10 item ids right-padded with the padding id, which is the number of items (4606 =
  the number of lines in ``id2name.txt``). ``history = [i for i in seq[:len_seq] if i != padding]``,
  oldest first (LLaRA's ``remove_padding``); ``target = next``.
* Rows with ``len_seq < min_len_seq`` (3) are dropped, in every split, as LLaRA does
  (``session_data4frame``). On the real files: 50,800 -> 47,872 training rows; all 122 validation and
  122 test rows already have ``len_seq >= 3``.
* User ids (training): the training file lists, for each listening sequence, its prefixes in order,
  starting with an empty history (``len_seq`` 1, all padding). A row belongs to the previous row's user
  iff its history equals ``(previous history + [previous next])[-10:]``; otherwise it starts a new user.
  This is derived on the whole file before filtering, so users are numbered 0..975 (976 users) in file
  order. Validation/test rows are one per (held-out) user, so their ``user`` is their own ``id``.
* Row ids are stable: a training row's id is its row index in ``train_data.df`` (0..50,799; the
  dropped short rows leave gaps), a validation row's is ``100_000 + index`` and a test row's
  ``200_000 + index`` in their files.
* Candidates: :func:`lit_eraser.data.candidates.draw_candidates` keyed by ``(seed, id)``, 20 items
  including the target, none in the history (no history on the real data contains its target).
* Titles: ``id2name.txt`` (UTF-8), name stripped, index = item id; a name longer than
  :data:`~lit_eraser.data.base.MAX_TITLE_CHARS` characters (or a file over
  :data:`~lit_eraser.data.base.MAX_DATA_FILE_BYTES`) is refused.

Building the full data set takes a few seconds (the candidates dominate); with ``max_train_rows`` only
the kept rows get candidates.
"""

from __future__ import annotations

import io
import numbers
from pathlib import Path
from typing import Any

import numpy as np

from lit_eraser.data.base import (
    SEQUENTIAL_FEATURES,
    FileDataModule,
    check_title,
    read_limited_text,
    rows_to_dataset,
    select_columns,
)
from lit_eraser.data.candidates import draw_candidates
from lit_eraser.data.download import LASTFM
from lit_eraser.data.safe_pickle import read_dataframe_pickle

VAL_ID_OFFSET = 100_000
TEST_ID_OFFSET = 200_000
SPLIT_FILES = {"train": "train_data.df", "val": "Val_data.df", "test": "Test_data.df"}
_MAX_ID_DIGITS = 12


def read_id2name(path: str | Path, max_bytes: int | None = None) -> list[str]:
    """Titles by item id from ``id::name`` lines; ids must be exactly 0..n-1.

    The file may hold at most ``max_bytes`` (default :data:`~lit_eraser.data.base.MAX_DATA_FILE_BYTES`) and a
    name at most :data:`~lit_eraser.data.base.MAX_TITLE_CHARS` characters (:class:`DataLimitError` otherwise).
    """
    titles: dict[int, str] = {}
    text = read_limited_text(path, "utf-8", max_bytes, what="title file")
    for lineno, line in enumerate(io.StringIO(text), 1):
        line = line.rstrip("\n")
        if not line:
            continue
        key, sep, name = line.partition("::")
        key = key.strip()
        if not sep or not (key.isascii() and key.isdigit()) or len(key) > _MAX_ID_DIGITS:
            raise ValueError(f"{path}:{lineno}: expected 'id::name', got {line[:80]!r}")
        titles[int(key)] = check_title(name.strip(), f"{path}:{lineno}")
    if sorted(titles) != list(range(len(titles))):
        raise ValueError(f"{path}: item ids are not exactly 0..{len(titles) - 1}")
    return [titles[i] for i in range(len(titles))]


def _ints(values: Any, what: str) -> list[int]:
    """``values`` (a list or 1-D array of integers) as ints; ValueError if it is anything else."""
    if type(values) is list and all(type(v) is int for v in values):  # the common case, fast
        return values
    if isinstance(values, (str, bytes)) or not hasattr(values, "__len__"):
        raise ValueError(f"{what} must be a list of item ids, got {type(values).__name__}")
    if isinstance(values, np.ndarray) and values.ndim != 1:
        raise ValueError(f"{what} must be one-dimensional, got shape {values.shape}")
    return [_int(v, what) for v in values]


def _int(value: Any, what: str) -> int:
    if type(value) is int:
        return value
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (numbers.Integral, np.integer, float, np.floating)):
        raise ValueError(f"{what} must hold integers, got {type(value).__name__} {str(value)[:40]!r}")
    if isinstance(value, (float, np.floating)) and not float(value).is_integer():
        raise ValueError(f"{what} must hold integers, got {value!r}")
    return int(value)


def read_sessions(path: str | Path, padding: int) -> tuple[list[list[int]], list[int], list[int]]:
    """``(histories, len_seqs, targets)`` of a LLaRA ``*.df`` file, padding removed, all rows in file order.

    Raises ``ValueError`` naming the file and row for cells of the wrong type or shape (a ``seq`` that is not
    a 1-D list of item ids, a non-integer ``len_seq``/``next``) or item ids out of range.
    """
    frame = read_dataframe_pickle(path)
    missing = {"seq", "len_seq", "next"} - set(frame.columns)
    if missing:
        raise ValueError(f"{path}: missing column(s) {sorted(missing)}; found {list(frame.columns)}")
    histories: list[list[int]] = []
    lens: list[int] = []
    targets: list[int] = []
    columns = zip(frame["seq"].tolist(), frame["len_seq"].tolist(), frame["next"].tolist())
    for row, (seq, n, target) in enumerate(columns):
        try:
            seq = _ints(seq, "seq")
            n = _int(n, "len_seq")
            target = _int(target, "next")
        except ValueError as err:
            raise ValueError(f"{path}: row {row}: {err}") from None
        if not 0 <= n <= len(seq):
            raise ValueError(f"{path}: row {row}: len_seq {n} is outside 0..{len(seq)} (the length of its seq)")
        history = [i for i in seq[:n] if i != padding]
        if not 0 <= target < padding or any(not 0 <= i < padding for i in history):
            raise ValueError(f"{path}: row {row} has an item id outside 0..{padding - 1}")
        histories.append(history)
        lens.append(n)
        targets.append(target)
    return histories, lens, targets


def derive_users(histories: list[list[int]], targets: list[int], window: int = 10) -> list[int]:
    """User index of each training row: a row continues the previous row's sequence iff its history is
    ``(previous history + [previous target])[-window:]``."""
    users: list[int] = []
    user = -1
    for row, history in enumerate(histories):
        if row == 0 or history != (histories[row - 1] + [targets[row - 1]])[-window:]:
            user += 1
        users.append(user)
    return users


class LastFMDataModule(FileDataModule):
    """LLaRA's LastFM split as sequential rows (next-artist choice among 20 candidates).

    Args:
        min_len_seq: Drop rows whose ``len_seq`` is below this (LLaRA: 3).
        n_candidates: Candidates per row, target included.
    """

    name = "lastfm"
    kind = "sequential"
    source = LASTFM
    interaction_verb = "listened to"  # LLaRA's LastFM prompt wording

    def __init__(self, min_len_seq: int = 3, n_candidates: int = 20, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if min_len_seq < 1:
            raise ValueError(f"min_len_seq must be >= 1, got {min_len_seq}")
        if n_candidates < 2:
            raise ValueError(f"n_candidates must be >= 2, got {n_candidates}")
        self.min_len_seq = min_len_seq
        self.n_candidates = n_candidates

    def _split_columns(self, directory: Path, split: str) -> dict[str, list[Any]]:
        padding = len(self.item_titles)
        histories, lens, targets = read_sessions(directory / SPLIT_FILES[split], padding)
        if split == "train":
            window = max((len(h) for h in histories), default=10)
            users = derive_users(histories, targets, window)
            ids = list(range(len(histories)))
        else:
            offset = VAL_ID_OFFSET if split == "val" else TEST_ID_OFFSET
            ids = [offset + i for i in range(len(histories))]
            users = ids
        keep = [i for i, n in enumerate(lens) if n >= self.min_len_seq]
        columns = {"id": ids, "user": users, "history": histories, "target": targets}
        return select_columns(columns, keep)

    def _build(self) -> None:
        directory = self.dataset_dir()
        self.item_titles = read_id2name(directory / "id2name.txt")
        for split in ("train", "val", "test"):
            columns = self._split_columns(directory, split)
            if split == "train":
                self.keep_full_train_pairs(columns["history"], columns["target"])
            columns = select_columns(columns, self.limit_indices(split, len(columns["id"])))
            columns["candidates"] = [
                draw_candidates(self.seed, row_id, target, history, self.num_items, self.n_candidates)
                for row_id, target, history in zip(columns["id"], columns["target"], columns["history"])
            ]
            setattr(self, f"{split}_rows", rows_to_dataset(columns, SEQUENTIAL_FEATURES))
