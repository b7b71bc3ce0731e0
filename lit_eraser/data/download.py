"""Where each real dataset's files come from, how they are checked, and the download step.

Every file has a known sha256 (computed from the canonical copies; for LastFM ``train_data.df`` it is the
checksum published with the data). :func:`ensure_source` is what a datamodule's ``prepare_data()`` calls:

* files present -> their checksums are verified (a mismatch is an error: a truncated download or a
  different version of the data would silently change every experiment);
* files missing and ``download=False`` (the default) -> :class:`DataFilesMissingError` (a
  ``FileNotFoundError``) naming the missing files, the folder searched, and the three ways to fix it;
* files missing and ``download=True`` -> fetched from the public sources below, written atomically
  (a temporary file in the same folder, sha256-checked, then renamed into place), so an interrupted
  download never leaves a file that looks complete.

Sources (licences: MovieLens forbids redistribution, so the project never ships the files):

* LastFM (LLaRA split): the LLaRA data release ``data/ref/lastfm/*``: Hugging Face dataset
  ``joyliao7777/LLaRA`` (linked from the LLaRA README), then GitHub copies of ``data/ref/lastfm``.
* MovieLens 100K: ``https://files.grouplens.org/datasets/movielens/ml-100k.zip`` (GroupLens).
* Book-Crossing (TALLRec prompts): ``data/book/{valid,test}.json`` of the TALLRec GitHub repository.

Several URLs may be listed per file; they are tried in order and the first whose bytes match the
checksum wins. No network access happens unless ``download=True``.

Command line: ``python -m lit_eraser.data.download lastfm ml-100k bookcrossing --root DIR``.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import tempfile
import urllib.error
import urllib.request
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "SOURCES",
    "ChecksumMismatchError",
    "DataFilesMissingError",
    "DataSource",
    "DownloadError",
    "RemoteFile",
    "download_source",
    "ensure_source",
    "missing_files",
    "sha256_file",
    "verify_files",
]

_CHUNK = 1 << 20
_USER_AGENT = "lit-eraser-data-download/0.1"


class DataFilesMissingError(FileNotFoundError):
    """Required data files are not in the data folder (and downloading was not allowed)."""


class ChecksumMismatchError(ValueError):
    """A data file's sha256 is not the expected one (corrupt, truncated, or another version)."""


class DownloadError(RuntimeError):
    """Every source URL for a file failed or returned bytes with the wrong checksum."""


@dataclass(frozen=True)
class RemoteFile:
    """One file of a dataset.

    Args:
        name: File name inside the dataset folder.
        sha256: Expected sha256 of the file's bytes.
        urls: Direct URLs, tried in order (empty when the file comes from the source's archive).
        member: Path of the file inside the source's archive, if it comes from one.
        required: Whether the datamodule reads it (optional files are still checked when present).
    """

    name: str
    sha256: str
    urls: tuple[str, ...] = ()
    member: str | None = None
    required: bool = True


@dataclass(frozen=True)
class DataSource:
    """A dataset's files and where they come from.

    Args:
        name: Key in :data:`SOURCES`, also the default folder name under the data root.
        title: Human-readable name for messages.
        files: The files.
        archive_urls: URLs of a zip archive holding the files (``RemoteFile.member``), tried in order.
        homepage: Where a person can read about the data and its licence.
    """

    name: str
    title: str
    files: tuple[RemoteFile, ...]
    archive_urls: tuple[str, ...] = ()
    homepage: str = ""
    notes: tuple[str, ...] = field(default=())

    @property
    def required(self) -> tuple[RemoteFile, ...]:
        return tuple(f for f in self.files if f.required)


def _llara(name: str, sha: str) -> RemoteFile:
    return RemoteFile(
        name,
        sha,
        urls=(
            f"https://huggingface.co/datasets/joyliao7777/LLaRA/resolve/main/lastfm/{name}",
            f"https://raw.githubusercontent.com/ljy0ustc/LLaRA/main/data/ref/lastfm/{name}",
            f"https://raw.githubusercontent.com/zhangt766/LLaRA_Lastfm/main/data/ref/lastfm/{name}",
        ),
    )


def _tallrec(name: str, sha: str) -> RemoteFile:
    return RemoteFile(
        name,
        sha,
        urls=tuple(
            f"https://raw.githubusercontent.com/SAI990323/TALLRec/{branch}/data/book/{name}"
            for branch in ("main", "master")
        ),
    )


LASTFM = DataSource(
    name="lastfm",
    title="LastFM (LLaRA split)",
    files=(
        _llara("train_data.df", "7db71a60d3da4c449091fbc254efc9602f81eec6eb9a60534811ccd61974dbc1"),
        _llara("Val_data.df", "92a1ddb65ebdeff999f910b65660eb3d8c7cd85e6a19308d80c429481839f8b3"),
        _llara("Test_data.df", "cac058a2842b2a3ed4d39ed1fa0a742f5034a23c9851a2ffc157b4845d703570"),
        _llara("id2name.txt", "b608bcf14300b1608ccd88f4fe240e6345125201ecdb55157395c19787fe4eaf"),
    ),
    homepage="https://github.com/ljy0ustc/LLaRA",
)

ML_100K = DataSource(
    name="ml-100k",
    title="MovieLens 100K",
    files=(
        RemoteFile(
            "u.data", "06416e597f82b7342361e41163890c81036900f418ad91315590814211dca490", member="ml-100k/u.data"
        ),
        RemoteFile(
            "u.item", "553841ebc7de3a0fd0d6b62a204ea30c1e651aacfb2814c7a6584ac52f2c5701", member="ml-100k/u.item"
        ),
        RemoteFile(
            "u.user",
            "f120e114da2e8cf314fd28f99417c94ae9ddf1cb6db8ce0e4b5995d40e90e62c",
            member="ml-100k/u.user",
            required=False,
        ),
        RemoteFile(
            "README",
            "4883b8cf340ed0059971b33f56ad3adc88a40792108ebca3d24aafc4c82e8b52",
            member="ml-100k/README",
            required=False,
        ),
    ),
    archive_urls=("https://files.grouplens.org/datasets/movielens/ml-100k.zip",),
    homepage="https://grouplens.org/datasets/movielens/100k/",
    notes=("MovieLens licence: the data may not be redistributed; read ml-100k/README.",),
)

BOOKCROSSING = DataSource(
    name="bookcrossing",
    title="Book-Crossing (TALLRec prompts)",
    files=(
        _tallrec("valid.json", "484165aefc7941fd9f19cc9f42144832d5cee7424b15dc661b753d7705769aa2"),
        _tallrec("test.json", "28ab5fe8b28f4094b7fa5b0d46acdbb3984f55e728d04f78e3ea42e7c2bf102b"),
    ),
    homepage="https://github.com/SAI990323/TALLRec",
)

#: Sources by name (also the folder name under a data root).
SOURCES: dict[str, DataSource] = {s.name: s for s in (LASTFM, ML_100K, BOOKCROSSING)}


# --------------------------------------------------------------------------------------------- checking
def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def missing_files(source: DataSource, directory: str | os.PathLike[str]) -> list[str]:
    """Names of ``source``'s required files that are not in ``directory``."""
    directory = Path(directory)
    return [f.name for f in source.required if not (directory / f.name).is_file()]


def verify_files(source: DataSource, directory: str | os.PathLike[str]) -> None:
    """Check the sha256 of every present file of ``source`` in ``directory``.

    Raises:
        ChecksumMismatchError: naming each file whose bytes differ from the known release.
    """
    directory = Path(directory)
    bad = []
    for spec in source.files:
        path = directory / spec.name
        if path.is_file():
            actual = sha256_file(path)
            if actual != spec.sha256:
                bad.append(f"{path} (sha256 {actual}, expected {spec.sha256})")
    if bad:
        raise ChecksumMismatchError(
            f"{source.title}: file contents differ from the known release: " + "; ".join(bad) + ". The file is "
            "truncated, corrupt, or a different version of the data. Delete it and fetch it again "
            "(--data.download true), or pass --data.verify_checksums false to use it anyway."
        )


def missing_files_message(source: DataSource, directory: Path, missing: Iterable[str], origin: str = "") -> str:
    """The text of :class:`DataFilesMissingError`: what is missing, where it was looked for, and the fixes."""
    missing = list(missing)
    where = f"{directory}" + (f" (from {origin})" if origin else "")
    return (
        f"{source.title} data not found: missing {', '.join(missing)} in {where}. "
        "Fix it in one of three ways: point --data.data_dir at a folder holding these files; "
        f"or set LIT_ERASER_DATA to a data root that has a '{source.name}/' folder with them; "
        "or pass --data.download true to fetch them from the public source"
        + (f" ({source.homepage})" if source.homepage else "")
        + " into that folder."
    )


# --------------------------------------------------------------------------------------------- download
def _fetch(url: str, dest: Path, timeout: float) -> str:
    """Stream ``url`` into ``dest``; return the sha256 of what was written."""
    request = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT})
    digest = hashlib.sha256()
    with urllib.request.urlopen(request, timeout=timeout) as response, open(dest, "wb") as out:
        total = response.headers.get("Content-Length")
        done = 0
        for chunk in iter(lambda: response.read(_CHUNK), b""):
            out.write(chunk)
            digest.update(chunk)
            done += len(chunk)
        if total is not None and done != int(total):
            raise DownloadError(f"{url}: got {done} of {total} bytes")
    return digest.hexdigest()


def _atomic_install(tmp: Path, dest: Path) -> None:
    os.replace(tmp, dest)


def _download_file(spec: RemoteFile, directory: Path, timeout: float, log) -> None:
    errors = []
    for url in spec.urls:
        fd, name = tempfile.mkstemp(prefix=f".{spec.name}.", suffix=".partial", dir=directory)
        os.close(fd)
        tmp = Path(name)
        try:
            log(f"downloading {url}")
            actual = _fetch(url, tmp, timeout)
            if actual != spec.sha256:
                errors.append(f"{url}: sha256 {actual}, expected {spec.sha256}")
                continue
            _atomic_install(tmp, directory / spec.name)
            return
        except (OSError, urllib.error.URLError, DownloadError) as exc:
            errors.append(f"{url}: {exc}")
        finally:
            tmp.unlink(missing_ok=True)
    raise DownloadError(f"could not download {spec.name}: " + "; ".join(errors))


def _download_archive(source: DataSource, specs: list[RemoteFile], directory: Path, timeout: float, log) -> None:
    errors = []
    for url in source.archive_urls:
        fd, name = tempfile.mkstemp(prefix=f".{source.name}.", suffix=".zip.partial", dir=directory)
        os.close(fd)
        archive = Path(name)
        try:
            log(f"downloading {url}")
            _fetch(url, archive, timeout)
            with zipfile.ZipFile(archive) as zf:
                for spec in specs:
                    assert spec.member is not None
                    fd, member_tmp = tempfile.mkstemp(prefix=f".{spec.name}.", suffix=".partial", dir=directory)
                    os.close(fd)
                    tmp = Path(member_tmp)
                    try:
                        with zf.open(spec.member) as src, open(tmp, "wb") as out:
                            shutil.copyfileobj(src, out, _CHUNK)
                        actual = sha256_file(tmp)
                        if actual != spec.sha256:
                            raise DownloadError(f"{spec.member}: sha256 {actual}, expected {spec.sha256}")
                        _atomic_install(tmp, directory / spec.name)
                    finally:
                        tmp.unlink(missing_ok=True)
            return
        except (OSError, urllib.error.URLError, zipfile.BadZipFile, KeyError, DownloadError) as exc:
            errors.append(f"{url}: {exc}")
        finally:
            archive.unlink(missing_ok=True)
    raise DownloadError(f"could not download {source.title}: " + "; ".join(errors))


def download_source(
    source: DataSource,
    directory: str | os.PathLike[str],
    *,
    only_missing: bool = True,
    timeout: float = 60.0,
    log=print,
) -> None:
    """Fetch ``source``'s files into ``directory`` (created if needed), atomically and sha256-checked.

    Args:
        source: What to fetch.
        directory: Destination folder.
        only_missing: Fetch only files that are not already there.
        timeout: Socket timeout per request, in seconds.
        log: Called with one progress line per request.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    todo = [f for f in source.files if not (only_missing and (directory / f.name).is_file())]
    if not todo:
        return
    for note in source.notes:
        log(note)
    direct = [f for f in todo if f.urls]
    archived = [f for f in todo if not f.urls and f.member]
    for spec in direct:
        _download_file(spec, directory, timeout, log)
    if archived:
        _download_archive(source, archived, directory, timeout, log)


def ensure_source(
    source: DataSource,
    directory: str | os.PathLike[str],
    *,
    download: bool = False,
    verify: bool = True,
    origin: str = "",
    log=print,
) -> Path:
    """Make sure ``directory`` holds ``source``'s required files; return it.

    Args:
        source: The dataset.
        directory: Where the files are (or go).
        download: Fetch missing files from the public source; without it a missing file is an error.
        verify: Check the sha256 of every present file.
        origin: How ``directory`` was chosen (for the error message).
        log: Progress lines while downloading.

    Raises:
        DataFilesMissingError: files are missing and ``download`` is false.
        ChecksumMismatchError: a present file has unexpected contents (``verify``).
        DownloadError: ``download`` is true and a file could not be fetched.
    """
    directory = Path(directory)
    missing = missing_files(source, directory)
    if missing and not download:
        raise DataFilesMissingError(missing_files_message(source, directory, missing, origin))
    if missing:
        download_source(source, directory, log=log)
    if verify:
        verify_files(source, directory)
    return directory


def main(argv: list[str] | None = None) -> None:
    """``python -m lit_eraser.data.download NAME... --root DIR``: fetch datasets into ``DIR/NAME``."""
    from lit_eraser.data.base import default_data_root

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="+", choices=sorted(SOURCES), help="datasets to fetch")
    parser.add_argument("--root", default=None, help="data root (default: $LIT_ERASER_DATA or the user cache)")
    args = parser.parse_args(argv)
    root = Path(args.root).expanduser() if args.root else default_data_root()
    for name in args.names:
        path = ensure_source(SOURCES[name], root / name, download=True)
        print(f"{SOURCES[name].title}: ok in {path}")


if __name__ == "__main__":  # pragma: no cover
    main()
