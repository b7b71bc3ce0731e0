"""Datasets as LightningDataModules, registered by name so a config can name them.

| name                | class                        | rows       | source                                  |
| ------------------- | ---------------------------- | ---------- | --------------------------------------- |
| ``synthetic``       | ``SyntheticDataModule``      | either     | generated (no files)                    |
| ``lastfm``          | ``LastFMDataModule``         | sequential | LLaRA's LastFM split                    |
| ``movielens``       | ``MovieLensDataModule``      | sequential | MovieLens 100K, LLaRA-style             |
| ``movielens_tallrec`` | ``MovieLensTallrecDataModule`` | binary | MovieLens 100K, TALLRec-style Yes/No    |
| ``bookcrossing``    | ``BookCrossingDataModule``   | binary     | TALLRec's Book-Crossing prompts         |

Real datasets read their files from ``--data.data_dir``, else ``$LIT_ERASER_DATA/<folder>``, else a user
cache folder, verify their sha256, and download them only with ``--data.download true``.
"""

from lit_eraser.data.base import FileDataModule, RecDataModule, collate_rows
from lit_eraser.data.bookcrossing import BookCrossingDataModule
from lit_eraser.data.download import ChecksumMismatchError, DataFilesMissingError, DownloadError
from lit_eraser.data.lastfm import LastFMDataModule
from lit_eraser.data.movielens import MovieLensDataModule, MovieLensTallrecDataModule
from lit_eraser.data.safe_pickle import CorruptPickleError, UnsafePickleError, read_dataframe_pickle
from lit_eraser.data.synthetic import SyntheticDataModule

DATASETS: dict[str, type[RecDataModule]] = {
    "synthetic": SyntheticDataModule,
    "lastfm": LastFMDataModule,
    "movielens": MovieLensDataModule,
    "movielens_tallrec": MovieLensTallrecDataModule,
    "bookcrossing": BookCrossingDataModule,
}

__all__ = [
    "DATASETS",
    "BookCrossingDataModule",
    "ChecksumMismatchError",
    "CorruptPickleError",
    "DataFilesMissingError",
    "DownloadError",
    "FileDataModule",
    "LastFMDataModule",
    "MovieLensDataModule",
    "MovieLensTallrecDataModule",
    "RecDataModule",
    "SyntheticDataModule",
    "UnsafePickleError",
    "collate_rows",
    "read_dataframe_pickle",
]
