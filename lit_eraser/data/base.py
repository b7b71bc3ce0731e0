"""The datamodule contract shared by every dataset (docs/ARCHITECTURE.md §2)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import datasets
import lightning as L
from torch.utils.data import DataLoader

from lit_eraser.data.rows import RowKind


def collate_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Keep a batch as a list of row dicts: the LightningModule encodes them (one encoder everywhere)."""
    return list(rows)


class RecDataModule(L.LightningDataModule):
    """Base class: subclasses fill ``train_rows``/``val_rows``/``test_rows`` in ``setup`` and say their ``kind``.

    Args:
        data_dir: Folder holding this dataset's files. Falls back to ``$LIT_ERASER_DATA/<name>``, then to a
            user cache directory that ``prepare_data()`` fills from the public source.
        batch_size: Training batch size.
        eval_batch_size: Batch size for validation and test.
        seed: Seed for every random choice the data makes (splits, candidates, subsets).
        num_workers: DataLoader worker processes.
        max_train_rows: Keep only this many training rows (a seeded subset), ``None`` for all.
        max_eval_rows: Keep only this many validation and test rows each, ``None`` for all.
    """

    name: str = ""
    kind: RowKind = "sequential"

    def __init__(
        self,
        data_dir: str | None = None,
        batch_size: int = 16,
        eval_batch_size: int = 32,
        seed: int = 0,
        num_workers: int = 0,
        max_train_rows: int | None = None,
        max_eval_rows: int | None = None,
    ) -> None:
        super().__init__()
        for key, value in (("batch_size", batch_size), ("eval_batch_size", eval_batch_size)):
            if value < 1:
                raise ValueError(f"{key} must be >= 1, got {value}")
        self.data_dir = data_dir
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.seed = seed
        self.num_workers = num_workers
        self.max_train_rows = max_train_rows
        self.max_eval_rows = max_eval_rows
        self.train_rows: datasets.Dataset | None = None
        self.val_rows: datasets.Dataset | None = None
        self.test_rows: datasets.Dataset | None = None
        self.item_titles: list[str] = []
        self._train_override: datasets.Dataset | None = None

    # ----------------------------------------------------------------------------------------- data root
    def resolve_data_dir(self) -> Path:
        """``data_dir`` if given, else ``$LIT_ERASER_DATA/<name>``, else the user cache directory."""
        if self.data_dir:
            return Path(self.data_dir).expanduser()
        env = os.environ.get("LIT_ERASER_DATA")
        if env:
            return Path(env).expanduser() / self.name
        from platformdirs import user_cache_dir

        return Path(user_cache_dir("lit-eraser")) / "data" / self.name

    # ----------------------------------------------------------------------------------------- rows
    @property
    def num_items(self) -> int:
        return len(self.item_titles)

    def text_corpus(self) -> Iterator[str]:
        """Strings the tokenizer is trained on: item titles (sequential) or item names (binary)."""
        if self.kind == "sequential":
            yield from self.item_titles
            return
        for split in (self.train_rows, self.val_rows, self.test_rows):
            if split is None:
                continue
            for row in split:
                yield from row["liked"]
                yield from row["disliked"]
                yield row["target"]

    def set_train_rows(self, rows: datasets.Dataset | list[dict[str, Any]]) -> None:
        """Replace the training rows (an edited or corrupted copy) for every later ``setup``/loader."""
        if isinstance(rows, list):
            rows = datasets.Dataset.from_list(rows)
        ids = rows["id"]
        if len(set(ids)) != len(ids):
            raise ValueError("training rows must have unique ids")
        self._train_override = rows
        self.train_rows = rows

    def _finish_setup(self) -> None:
        """Apply a training-row override, if any, after a subclass has (re)built its splits."""
        if self._train_override is not None:
            self.train_rows = self._train_override

    def row_by_id(self) -> dict[int, dict[str, Any]]:
        """Training rows by id (for requests and exact z/z' pairs)."""
        assert self.train_rows is not None, "call setup() first"
        return {int(row["id"]): row for row in self.train_rows}

    # ----------------------------------------------------------------------------------------- loaders
    def _loader(self, rows: datasets.Dataset | None, batch_size: int, shuffle: bool) -> DataLoader:
        if rows is None:
            raise RuntimeError(f"{type(self).__name__}.setup() has not been called")
        return DataLoader(
            rows,
            batch_size=batch_size,
            shuffle=shuffle,
            collate_fn=collate_rows,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_rows, self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_rows, self.eval_batch_size, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_rows, self.eval_batch_size, shuffle=False)
