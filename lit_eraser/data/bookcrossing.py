"""Book-Crossing as TALLRec ships it: Yes/No prompts (binary rows).

Files (``<data_dir>``): ``valid.json`` and ``test.json`` from TALLRec's ``data/book/`` (its ``train.json``
is not public); each is a JSON list of ``{"instruction", "input", "output"}``, 2,427 items each. An
``input`` reads::

    User Preference: "Kiss the Girls" written by James Patterson, "I, Claudius" written by Robert Graves
    User Unpreference: "Rising Sun" written by MICHAEL CRICHTON
    Whether the user will like the target book ""Friday" written by Robert Heinlein"?

Parsing (decisions):

* An item is kept as its text, ``"Title" written by Author`` (quotes included), exactly as the prompt
  shows it. A list is split with the regex :data:`ITEM` -- a quoted title, ``" written by "``, and an
  author running up to the next ``, "`` or the end -- so titles with commas (``"I, Claudius"``) or
  inner quotes stay whole. Every list must be re-created exactly by ``", ".join(items)``; otherwise
  the row is rejected with an error naming the file and the row (on the real files every row parses,
  with 3..10 items per row).
* An empty ``User Preference:`` / ``User Unpreference:`` is an empty list.
* ``target`` is the text between the outer quotes of ``the target book "..."?``; ``label`` is
  ``int(output == "Yes.")``.

Splits: ``valid.json`` is shuffled with ``seed`` and ``val_fraction`` (10 %) of it becomes the
validation split, the rest training (2,184 / 243 rows); ``test.json`` is the test split (2,427 rows).
Ids: the row index in ``valid.json`` for train/val rows, ``100_000 +`` the index in ``test.json`` for
test rows. The source has no user ids, so ``user = id``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np

from lit_eraser.data.base import (
    BINARY_FEATURES,
    DataLimitError,
    FileDataModule,
    check_title,
    read_limited_text,
    rows_to_dataset,
    select_columns,
)
from lit_eraser.data.download import BOOKCROSSING

TEST_ID_OFFSET = 100_000
#: Longest ``input`` of one record (characters); the real ones have at most 1,296. Checked before the regexes run.
MAX_INPUT_CHARS = 16_000

#: One item: ``"Title" written by Author``, the author running up to the next ``, "`` or the end.
ITEM = re.compile(r'"(?P<title>.*?)" written by (?P<author>.*?)(?=, "|\Z)', re.S)
PROMPT = re.compile(
    r"\AUser Preference: (?P<liked>.*)\nUser Unpreference: (?P<disliked>.*)\n"
    r'Whether the user will like the target book "(?P<target>.*)"\?\s*\Z',
    re.S,
)


def parse_items(text: str) -> list[str]:
    """Split a comma-separated list of ``"Title" written by Author`` items, checking nothing is lost."""
    text = text.strip()
    if not text:
        return []
    items = [m.group(0) for m in ITEM.finditer(text)]
    if ", ".join(items) != text:
        raise ValueError(f"cannot split into '\"Title\" written by Author' items: {text[:200]!r}")
    return items


def parse_prompt(record: dict[str, Any]) -> tuple[list[str], list[str], str, int]:
    """``(liked, disliked, target, label)`` of one TALLRec record.

    An ``input`` longer than :data:`MAX_INPUT_CHARS` or an item longer than
    :data:`~lit_eraser.data.base.MAX_TITLE_CHARS` characters is refused (:class:`DataLimitError`).
    """
    if not isinstance(record, dict):
        raise ValueError(f"expected an object with 'input' and 'output', got {type(record).__name__}")
    text = record["input"]
    if not isinstance(text, str):
        raise ValueError(f"'input' must be a string, got {type(text).__name__}")
    if len(text) > MAX_INPUT_CHARS:
        raise DataLimitError(
            f"an input of {len(text):,} characters (starting {text[:40]!r}); a TALLRec prompt may have at most "
            f"{MAX_INPUT_CHARS:,}"
        )
    match = PROMPT.match(text)
    if match is None:
        raise ValueError(f"input is not a TALLRec book prompt: {record['input'][:200]!r}")
    target = match["target"]
    if not ITEM.fullmatch(target):
        raise ValueError(f"target is not a '\"Title\" written by Author' item: {target!r}")
    output = record["output"].strip()
    if output not in ("Yes.", "No."):
        raise ValueError(f"output must be 'Yes.' or 'No.', got {record['output']!r}")
    liked, disliked = parse_items(match["liked"]), parse_items(match["disliked"])
    for item in (*liked, *disliked, target):
        check_title(item, "input")
    return liked, disliked, target, int(output == "Yes.")


def read_prompts(path: str | Path, id_offset: int = 0, max_bytes: int | None = None) -> dict[str, list[Any]]:
    """Rows (as columns) of a TALLRec ``*.json`` file; ``id = id_offset + index``, ``user = id``. The file may
    hold at most ``max_bytes`` (default :data:`~lit_eraser.data.base.MAX_DATA_FILE_BYTES`)."""
    text = read_limited_text(path, "utf-8", max_bytes, what="prompt file")
    try:
        records = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from None
    except RecursionError:
        raise ValueError(f"{path}: not a TALLRec prompt file (JSON nested too deeply)") from None
    if not isinstance(records, list):
        raise ValueError(f"{path}: expected a JSON list of prompts")
    columns: dict[str, list[Any]] = {k: [] for k in ("id", "user", "liked", "disliked", "target", "label")}
    for index, record in enumerate(records):
        try:
            liked, disliked, target, label = parse_prompt(record)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            kind = DataLimitError if isinstance(exc, DataLimitError) else ValueError
            raise kind(f"{path}: row {index}: {exc}") from None
        row_id = id_offset + index
        for key, value in zip(columns, (row_id, row_id, liked, disliked, target, label)):
            columns[key].append(value)
    return columns


class BookCrossingDataModule(FileDataModule):
    """TALLRec's Book-Crossing prompts as binary rows; ``valid.json`` -> train/val, ``test.json`` -> test.

    Args:
        val_fraction: Fraction of ``valid.json`` (seeded) used as the validation split.
    """

    name = "bookcrossing"
    kind = "binary"
    source = BOOKCROSSING

    def __init__(self, val_fraction: float = 0.1, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not 0.0 <= val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
        self.val_fraction = val_fraction

    def _build(self) -> None:
        directory = self.dataset_dir()
        pool = read_prompts(directory / "valid.json")
        n = len(pool["id"])
        order = np.random.default_rng([int(self.seed), 0xB00C]).permutation(n)
        n_val = int(round(self.val_fraction * n))
        splits = {
            "train": select_columns(pool, sorted(order[n_val:].tolist())),
            "val": select_columns(pool, sorted(order[:n_val].tolist())),
            "test": read_prompts(directory / "test.json", TEST_ID_OFFSET),
        }
        for split, columns in splits.items():
            columns = select_columns(columns, self.limit_indices(split, len(columns["id"])))
            setattr(self, f"{split}_rows", rows_to_dataset(columns, BINARY_FEATURES))
