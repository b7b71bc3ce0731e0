"""The datamodule contract shared by every dataset (docs/ARCHITECTURE.md §2).

``RecDataModule`` is the base of every dataset; ``FileDataModule`` adds what the real datasets share:
locating their files under a data root, verifying them (sha256), and the opt-in download step.

Subsets: ``max_train_rows`` / ``max_eval_rows`` keep a seeded random subset of a split, in the split's
original order. The subset of size ``k`` is the first ``k`` of one seeded permutation, so smaller subsets
are nested inside larger ones (for the same seed), and a subset never depends on other arguments.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import datasets
import lightning as L
import numpy as np
from torch.utils.data import DataLoader

from lit_eraser.data.rows import RowKind

_List = getattr(datasets, "List", None) or datasets.Sequence

#: Arrow schema of sequential rows (docs/ARCHITECTURE.md §1).
SEQUENTIAL_FEATURES = datasets.Features(
    {
        "id": datasets.Value("int64"),
        "user": datasets.Value("int64"),
        "history": _List(datasets.Value("int64")),
        "target": datasets.Value("int64"),
        "candidates": _List(datasets.Value("int64")),
    }
)

#: Arrow schema of binary rows (docs/ARCHITECTURE.md §1).
BINARY_FEATURES = datasets.Features(
    {
        "id": datasets.Value("int64"),
        "user": datasets.Value("int64"),
        "liked": _List(datasets.Value("string")),
        "disliked": _List(datasets.Value("string")),
        "target": datasets.Value("string"),
        "label": datasets.Value("int64"),
    }
)

#: Salts that make the train/val/test subsets independent streams of one seed.
_SUBSET_SALT = {"train": 0, "val": 1, "test": 2}

# ------------------------------------------------------------------------------------------------- input limits
#: Longest item title / item name (characters) a data file, a datamodule or an edit request may hold. The real
#: data stay far below it (LastFM 47, MovieLens 81, Book-Crossing 255); a longer "title" is a wrong or damaged
#: file, and one of megabytes would stall the tokenizer's BPE training for hours.
MAX_TITLE_CHARS = 1000

#: Largest data file (bytes) read into memory (``u.item``, ``id2name.txt``, the TALLRec ``*.json`` files, the
#: LastFM ``*.df`` pickles). The real files are under 3 MB; checksums do not bound anything when they are off.
MAX_DATA_FILE_BYTES = 256 * 2**20


class DataLimitError(ValueError):
    """A data file, or a value in it, exceeds one of the size limits above (the file is wrong or damaged)."""

    hint = "check that --data.data_dir holds the dataset's own files (and keep --data.verify_checksums true)"


def _mib(n: int) -> str:
    return f"{n / 2**20:,.1f} MiB" if n >= 2**20 else f"{n:,} bytes"


def read_limited_bytes(path: str | os.PathLike[str], max_bytes: int | None = None, what: str = "data file") -> bytes:
    """The bytes of ``path``, refusing a directory and anything larger than ``max_bytes`` (default
    :data:`MAX_DATA_FILE_BYTES`). Never reads more than ``max_bytes + 1`` bytes, so a device such as
    ``/dev/zero`` or an endless pipe is refused instead of filling the memory.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        DataLimitError: ``path`` is a directory or larger than the limit.
    """
    limit = MAX_DATA_FILE_BYTES if max_bytes is None else int(max_bytes)
    path = Path(path)
    if path.is_dir():
        raise DataLimitError(f"{path} is a directory, not a {what}")
    with open(path, "rb") as fh:
        try:
            size = os.fstat(fh.fileno()).st_size
        except OSError:  # pragma: no cover - fstat on an open file does not fail in practice
            size = 0
        if size > limit:
            raise DataLimitError(f"{path}: {_mib(size)} is larger than the {_mib(limit)} a {what} may have")
        data = fh.read(limit + 1)
    if len(data) > limit:
        raise DataLimitError(f"{path}: more than the {_mib(limit)} a {what} may have (is it a device or a pipe?)")
    return data


def read_limited_text(
    path: str | os.PathLike[str], encoding: str = "utf-8", max_bytes: int | None = None, what: str = "data file"
) -> str:
    """:func:`read_limited_bytes` decoded with ``encoding``, newlines translated as ``open`` does (universal)."""
    data = read_limited_bytes(path, max_bytes, what)
    try:
        text = data.decode(encoding)
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not valid {encoding} ({err.reason} at byte {err.start})") from None
    return text.replace("\r\n", "\n").replace("\r", "\n")


def check_title(title: str, where: str, max_chars: int | None = None) -> str:
    """``title`` unchanged, or a :class:`DataLimitError` naming ``where`` if it is longer than
    :data:`MAX_TITLE_CHARS` characters."""
    limit = MAX_TITLE_CHARS if max_chars is None else int(max_chars)
    if len(title) > limit:
        raise DataLimitError(
            f"{where}: an item title/name of {len(title):,} characters (starting {title[:40]!r}); item titles and "
            f"names may have at most {limit:,} characters"
        )
    return title


def collate_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Keep a batch as a list of row dicts: the LightningModule encodes them (one encoder everywhere)."""
    return list(rows)


def default_data_root() -> Path:
    """``$LIT_ERASER_DATA`` if set, else ``<user cache dir>/lit-eraser/data`` (where downloads go)."""
    env = os.environ.get("LIT_ERASER_DATA")
    if env:
        return Path(env).expanduser()
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("lit-eraser")) / "data"


def seeded_subset_indices(n_total: int, n_keep: int | None, seed: int, split: str = "train") -> list[int] | None:
    """Indices (sorted) of a seeded random subset of ``n_keep`` out of ``n_total``; ``None`` to keep all.

    The subset of size ``k`` is the first ``k`` entries of one permutation drawn from ``(seed, split)``,
    so subsets of one seed are nested.
    """
    if n_keep is None or n_keep >= n_total:
        return None
    if n_keep < 0:
        raise ValueError(f"a row limit must be >= 0, got {n_keep}")
    rng = np.random.default_rng([int(seed), 0x5EED, _SUBSET_SALT.get(split, 3)])
    return sorted(rng.permutation(n_total)[:n_keep].tolist())


def rows_to_dataset(columns: dict[str, list[Any]], features: datasets.Features) -> datasets.Dataset:
    """A ``datasets.Dataset`` from column lists with an explicit schema (empty lists stay typed)."""
    return datasets.Dataset.from_dict({key: columns[key] for key in features}, features=features)


def dataset_rows(dataset: datasets.Dataset) -> list[dict[str, Any]]:
    """All rows of ``dataset`` as plain dicts (one Arrow->Python conversion; much faster than iterating)."""
    columns = dataset.to_dict()
    keys = list(columns)
    return [dict(zip(keys, values)) for values in zip(*columns.values())]


def select_columns(columns: dict[str, list[Any]], indices: list[int] | None) -> dict[str, list[Any]]:
    """Keep the rows at ``indices`` (``None`` keeps all) of a dict of equally long column lists."""
    if indices is None:
        return columns
    return {key: [values[i] for i in indices] for key, values in columns.items()}


class RecDataModule(L.LightningDataModule):
    """Base class: subclasses fill ``train_rows``/``val_rows``/``test_rows`` in ``setup`` and say their ``kind``.

    Args:
        data_dir: Folder holding this dataset's files (real datasets also accept a data root holding the
            dataset's folder). Falls back to ``$LIT_ERASER_DATA/<folder>`` (``lastfm``, ``ml-100k``,
            ``bookcrossing``), then to a user cache directory that ``prepare_data()`` can fill from the
            public source (``download``).
        batch_size: Training batch size.
        eval_batch_size: Batch size for validation and test.
        seed: Seed for every random choice the data makes (splits, candidates, subsets).
        num_workers: DataLoader worker processes.
        max_train_rows: Keep only this many training rows (a seeded subset), ``None`` for all.
        max_eval_rows: Keep only this many validation and test rows each, ``None`` for all.
    """

    name: str = ""
    #: Folder name under the data root (defaults to ``name``; both MovieLens variants read ``ml-100k``).
    dirname: str = ""
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
        for key, limit in (("max_train_rows", max_train_rows), ("max_eval_rows", max_eval_rows)):
            if limit is not None and limit < 1:
                raise ValueError(f"{key} must be >= 1 or None, got {limit}")
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
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
        self._full_train_pairs: list[dict[str, Any]] | None = None

    # ----------------------------------------------------------------------------------------- data root
    def resolve_data_dir(self) -> Path:
        """``data_dir`` if given, else ``$LIT_ERASER_DATA/<name>``, else the user cache directory."""
        if self.data_dir:
            return Path(self.data_dir).expanduser()
        return default_data_root() / (self.dirname or self.name)

    def data_dir_origin(self) -> str:
        """How :meth:`resolve_data_dir` chose its folder (for error messages)."""
        if self.data_dir:
            return "--data.data_dir"
        if os.environ.get("LIT_ERASER_DATA"):
            return f"$LIT_ERASER_DATA={os.environ['LIT_ERASER_DATA']}"
        return "the user cache directory; neither --data.data_dir nor $LIT_ERASER_DATA is set"

    # ----------------------------------------------------------------------------------------- rows
    @property
    def num_items(self) -> int:
        return len(self.item_titles)

    def text_corpus(self) -> Iterator[str]:
        """Strings the tokenizer is trained on: item titles (sequential) or item names (binary).

        Raises:
            DataLimitError: a title or name is longer than :data:`MAX_TITLE_CHARS` (BPE training on it would
                stall); the file readers refuse such titles already, this also covers other datamodules.
        """
        for text in self._raw_text_corpus():
            if isinstance(text, str) and len(text) > MAX_TITLE_CHARS:
                check_title(text, f"{type(self).__name__} ({self.kind} rows)")
            yield text

    def _raw_text_corpus(self) -> Iterator[str]:
        if self.kind == "sequential":
            yield from self.item_titles
            return
        for split in (self.train_rows, self.val_rows, self.test_rows):
            if split is None:
                continue
            # One Arrow->Python conversion per column is much faster than iterating rows.
            columns = split.select_columns(["liked", "disliked", "target"]).to_dict()
            for liked, disliked, target in zip(columns["liked"], columns["disliked"], columns["target"]):
                yield from liked
                yield from disliked
                yield target

    def set_train_rows(self, rows: datasets.Dataset | list[dict[str, Any]]) -> None:
        """Replace the training rows (an edited or corrupted copy) for every later ``setup``/loader."""
        if isinstance(rows, list):
            rows = datasets.Dataset.from_list(rows)
        ids = rows["id"]
        if len(set(ids)) != len(ids):
            raise ValueError("training rows must have unique ids")
        self._train_override = rows
        self.train_rows = rows

    def keep_full_train_pairs(self, histories: list[list[int]], targets: list[int]) -> None:
        """Remember the whole training split's (history, target) pairs before ``max_train_rows`` subsets it."""
        self._full_train_pairs = [{"history": list(h), "target": int(t)} for h, t in zip(histories, targets)]

    def item_encoder_rows(self) -> list[dict[str, Any]]:
        """The (history, target) pairs of the *whole* training split as distributed: no ``max_train_rows``
        subset, no edits or overrides. A frozen item encoder (SASRec) trained on these is an upstream
        component like the base LLM; LLaRA trains it on all training sequences.

        Raises:
            RuntimeError: ``setup()`` has not run, or this datamodule never recorded its full split (a
                sequential datamodule calls :meth:`keep_full_train_pairs` while it builds the split).
        """
        if self._full_train_pairs is None:
            raise RuntimeError(
                f"{type(self).__name__} has no full training split to give (call setup() first; a custom "
                "datamodule must call keep_full_train_pairs() while building its training split)"
            )
        return self._full_train_pairs

    def limit_indices(self, split: str, n_total: int) -> list[int] | None:
        """Indices of the seeded subset ``max_train_rows`` (train) / ``max_eval_rows`` (val, test) keeps."""
        limit = self.max_train_rows if split == "train" else self.max_eval_rows
        return seeded_subset_indices(n_total, limit, self.seed, split)

    def _limit(self, split: str, rows: datasets.Dataset | None) -> datasets.Dataset | None:
        if rows is None:
            return None
        indices = self.limit_indices(split, len(rows))
        return rows if indices is None else rows.select(indices)

    def _finish_setup(self) -> None:
        """Apply the row limits (a no-op where a subclass already did) and a training-row override, if any."""
        self.train_rows = self._limit("train", self.train_rows)
        self.val_rows = self._limit("val", self.val_rows)
        self.test_rows = self._limit("test", self.test_rows)
        if self._train_override is not None:
            self.train_rows = self._train_override

    def row_by_id(self) -> dict[int, dict[str, Any]]:
        """Training rows by id (for requests and exact z/z' pairs)."""
        assert self.train_rows is not None, "call setup() first"
        return {int(row["id"]): row for row in dataset_rows(self.train_rows)}

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


class FileDataModule(RecDataModule):
    """Base of the real datasets: files under a data root, sha256-verified, downloaded only on request.

    Subclasses set ``source`` (a :class:`lit_eraser.data.download.DataSource`) and implement ``_build()``,
    which reads ``self.dataset_dir()`` and sets the three splits (and ``item_titles`` when sequential).
    ``setup()`` builds once and reuses the result for later stages.

    Args:
        download: If the files are missing, fetch them from the dataset's public source into the data
            folder (atomically, sha256-checked). Off by default: a missing file is an error that says how
            to fix it.
        verify_checksums: Check every data file's sha256 against the known release before reading it.
    """

    source: Any = None  # a lit_eraser.data.download.DataSource

    def __init__(self, download: bool = False, verify_checksums: bool = True, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.download = download
        self.verify_checksums = verify_checksums
        self._built = False

    def _candidate_dirs(self) -> list[Path]:
        base = self.resolve_data_dir()
        dirs = [base]
        if self.data_dir:  # also accept a data *root* given as --data.data_dir
            dirs.append(base / (self.dirname or self.name))
        return dirs

    def dataset_dir(self, download: bool = False) -> Path:
        """The folder holding this dataset's files, verified; fetches them first if ``download``.

        Raises:
            lit_eraser.data.download.DataFilesMissingError: files missing and ``download`` false.
            lit_eraser.data.download.ChecksumMismatchError: a file differs from the known release.
        """
        from lit_eraser.data.download import ensure_source, missing_files

        dirs = self._candidate_dirs()
        chosen = next((d for d in dirs if not missing_files(self.source, d)), dirs[0])
        return ensure_source(
            self.source,
            chosen,
            download=download,
            verify=self.verify_checksums,
            origin=self.data_dir_origin(),
        )

    def prepare_data(self) -> None:
        """Verify the files, or download them if they are missing and ``download`` is true."""
        self.dataset_dir(download=self.download)

    def _build(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def setup(self, stage: str | None = None) -> None:
        """Build the splits once (later stages reuse them), then apply limits and any training override."""
        if not self._built:
            # Under a Trainer, prepare_data() (rank 0) has already downloaded; called directly, setup()
            # honours ``download`` itself so that ``dm.setup()`` alone works.
            if self.download and self.trainer is None:
                self.dataset_dir(download=True)
            self._build()
            self._built = True
        self._finish_setup()
