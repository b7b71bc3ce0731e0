"""Data roots, missing-file errors, checksums, the (offline) download step, subsets and the registry."""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import pytest

from lit_eraser.data import (
    DATASETS,
    BookCrossingDataModule,
    ChecksumMismatchError,
    DataFilesMissingError,
    LastFMDataModule,
    MovieLensDataModule,
    RecDataModule,
)
from lit_eraser.data.base import seeded_subset_indices
from lit_eraser.data.download import SOURCES, DataSource, DownloadError, RemoteFile, download_source, ensure_source

REAL = ["lastfm", "movielens", "movielens_tallrec", "bookcrossing"]


def test_registry() -> None:
    assert set(DATASETS) == {"synthetic", *REAL}
    assert all(issubclass(cls, RecDataModule) for cls in DATASETS.values())
    assert {DATASETS[n].kind for n in REAL} == {"sequential", "binary"}


@pytest.mark.parametrize("name", REAL)
def test_missing_data_dir_is_a_clear_error(name: str, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("LIT_ERASER_DATA", raising=False)
    dm = DATASETS[name](data_dir=str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError) as info:
        dm.prepare_data()
    message = str(info.value)
    assert isinstance(info.value, DataFilesMissingError)
    assert str(tmp_path / "nowhere") in message and "--data.data_dir" in message
    assert "LIT_ERASER_DATA" in message and "--data.download true" in message
    first_file = DATASETS[name].source.required[0].name
    assert first_file in message
    with pytest.raises(FileNotFoundError):  # setup() alone checks too
        DATASETS[name](data_dir=str(tmp_path / "nowhere")).setup()
    assert not (tmp_path / "nowhere").exists()  # nothing created, nothing downloaded


def test_env_root_is_used_and_named(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("LIT_ERASER_DATA", str(tmp_path))
    assert MovieLensDataModule().resolve_data_dir() == tmp_path / "ml-100k"
    assert LastFMDataModule().resolve_data_dir() == tmp_path / "lastfm"
    with pytest.raises(DataFilesMissingError, match=r"ml-100k.*LIT_ERASER_DATA="):
        MovieLensDataModule().prepare_data()


@pytest.mark.real_data
def test_data_root_given_as_data_dir_and_env(shared_data_dir: Path, monkeypatch) -> None:
    dm = BookCrossingDataModule(data_dir=str(shared_data_dir))  # a root, not the dataset folder: accepted
    assert dm.dataset_dir() == shared_data_dir / "bookcrossing"
    monkeypatch.setenv("LIT_ERASER_DATA", str(shared_data_dir))
    assert BookCrossingDataModule().dataset_dir() == shared_data_dir / "bookcrossing"


@pytest.mark.real_data
def test_real_files_match_known_checksums(shared_data_dir: Path) -> None:
    for source in SOURCES.values():
        ensure_source(source, shared_data_dir / source.name)  # raises on any mismatch


def test_checksum_mismatch(tmp_path: Path) -> None:
    (tmp_path / "valid.json").write_text("[]")
    (tmp_path / "test.json").write_text("[]")
    with pytest.raises(ChecksumMismatchError, match="valid.json"):
        BookCrossingDataModule(data_dir=str(tmp_path)).prepare_data()
    dm = BookCrossingDataModule(data_dir=str(tmp_path), verify_checksums=False)
    dm.setup()  # an opt-out, e.g. for a re-generated copy
    assert len(dm.test_rows) == 0


def _source(tmp_path: Path, payload: bytes, urls: tuple[str, ...]) -> DataSource:
    return DataSource("toy", "Toy", (RemoteFile("a.txt", hashlib.sha256(payload).hexdigest(), urls=urls),))


def test_download_is_atomic_and_checked(tmp_path: Path) -> None:
    """Offline: file:// URLs stand in for the public sources."""
    good, bad = tmp_path / "good.txt", tmp_path / "bad.txt"
    good.write_bytes(b"hello")
    bad.write_bytes(b"hellO")
    dest = tmp_path / "dest"
    source = _source(tmp_path, b"hello", (bad.as_uri(), (tmp_path / "absent").as_uri(), good.as_uri()))
    ensure_source(source, dest, download=True, log=lambda _: None)
    assert (dest / "a.txt").read_bytes() == b"hello"
    assert sorted(p.name for p in dest.iterdir()) == ["a.txt"]  # no partial files left behind
    only_bad = _source(tmp_path, b"hello", (bad.as_uri(),))
    with pytest.raises(DownloadError, match="sha256"):
        download_source(only_bad, tmp_path / "dest2", log=lambda _: None)
    assert list((tmp_path / "dest2").iterdir()) == []


def test_download_from_archive(tmp_path: Path) -> None:
    archive = tmp_path / "ml.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("ml-100k/u.data", "1\t1\t5\t100\n")
    spec = RemoteFile("u.data", hashlib.sha256(b"1\t1\t5\t100\n").hexdigest(), member="ml-100k/u.data")
    source = DataSource("toy", "Toy", (spec,), archive_urls=(archive.as_uri(),))
    download_source(source, tmp_path / "out", log=lambda _: None)
    assert (tmp_path / "out" / "u.data").read_text() == "1\t1\t5\t100\n"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["u.data"]


def test_seeded_subsets_are_nested_and_sorted() -> None:
    small = seeded_subset_indices(1000, 10, seed=0)
    large = seeded_subset_indices(1000, 100, seed=0)
    assert small == sorted(small) and set(small) <= set(large)
    assert seeded_subset_indices(1000, 10, seed=0) == small != seeded_subset_indices(1000, 10, seed=1)
    assert seeded_subset_indices(1000, 10, 0, "val") != small
    assert seeded_subset_indices(5, 10, 0) is None and seeded_subset_indices(5, None, 0) is None


def test_synthetic_honours_row_limits() -> None:
    dm = DATASETS["synthetic"](max_train_rows=40, max_eval_rows=8)
    dm.setup()
    assert (len(dm.train_rows), len(dm.val_rows), len(dm.test_rows)) == (40, 8, 8)


@pytest.mark.parametrize("name", REAL)
def test_cli_signature(name: str) -> None:
    """jsonargparse (LightningCLI) sees the base and the dataset's own arguments through **kwargs."""
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(RecDataModule, "data")
    cls = DATASETS[name]
    cfg = parser.parse_args(
        [f"--data={cls.__module__}.{cls.__name__}", "--data.download=true", "--data.seed=3", "--data.data_dir=/x"]
    )
    init = cfg.data.init_args
    assert (init.download, init.seed, init.data_dir, init.verify_checksums) == (True, 3, "/x", True)
