"""Atomic, locked, checksummed writes: a failed or concurrent run loses nothing and never touches an old artefact.

Every top-level output (a ``train.py`` run, an ``unlearn.py`` experiment, a cached original) is written into a
temporary sibling and renamed into place under an advisory lock on ``.<name>.lock`` beside it, so two runs
aimed at one directory cannot both write it: the second fails at once with :class:`OutputBusyError`.
``--overwrite`` replaces only a directory that carries this tool's marker file; temporaries left behind by a
killed run are removed by the next run that takes the same lock. Files and directories get the user's umask
(``tempfile`` would create them 0600/0700).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import math
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

#: Written into every top-level output directory; ``--overwrite`` only ever replaces a directory holding it.
MARKER = ".lit-eraser-output.json"

_held_locks: set[Path] = set()


class OutputBusyError(FileExistsError):
    """Another lit-eraser process holds the lock of this output directory."""


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def apply_umask(path: str | os.PathLike[str]) -> None:
    """Give ``path`` the mode a plain ``open``/``mkdir`` would have given it (``tempfile`` ignores the umask)."""
    path = Path(path)
    base = 0o777 if path.is_dir() else 0o666
    os.chmod(path, base & ~current_umask())


def remove_stale_temporaries(target: Path) -> list[Path]:
    """Remove ``.<name>.tmp-*`` / ``.<name>.old-*`` siblings of ``target`` (left by a killed run). Call only while
    holding ``target``'s lock: then no live run is using them."""
    removed = []
    if target.parent.is_dir():
        for pattern in (f".{target.name}.tmp-*", f".{target.name}.old-*"):
            for stale in target.parent.glob(pattern):
                shutil.rmtree(stale, ignore_errors=True) if stale.is_dir() else stale.unlink(missing_ok=True)
                removed.append(stale)
    if removed:
        warnings.warn(f"removed {len(removed)} temporary folder(s) left by an interrupted run: {', '.join(map(str, removed))}", stacklevel=3)
    return removed


@contextlib.contextmanager
def output_lock(target: str | os.PathLike[str], wait: bool = False) -> Iterator[None]:
    """Hold the advisory lock of ``target`` (re-entrant within this process); clean its stale temporaries.

    Raises:
        OutputBusyError: another process holds it and ``wait`` is false.
    """
    target = Path(target).absolute()
    if target in _held_locks:
        yield
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    lock_path = target.parent / f".{target.name}.lock"
    fd = _acquire(lock_path, wait, target)
    _held_locks.add(target)
    try:
        remove_stale_temporaries(target)
        yield
    finally:
        _held_locks.discard(target)
        lock_path.unlink(missing_ok=True)  # while still held: a waiter then finds a new inode and retries
        os.close(fd)


def _acquire(lock_path: Path, wait: bool, target: Path) -> int:
    """flock ``lock_path``; retry when the file was unlinked by the previous holder between open and lock."""
    while True:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o666 & ~current_umask())
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise OutputBusyError(
                f"{target} is being written by another lit-eraser run (lock {lock_path}); wait for it to finish "
                "or choose another output directory"
            ) from None
        try:
            if os.fstat(fd).st_ino == os.stat(lock_path).st_ino:
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)


def check_replaceable(target: str | os.PathLike[str], overwrite: bool, marked: bool = True) -> None:
    """Refuse an existing ``target`` unless ``overwrite``, and (``marked``) unless it is this tool's output."""
    target = Path(target)
    if not target.exists():
        return
    if not overwrite:
        raise FileExistsError(f"{target} already exists; choose another output directory or pass --overwrite true")
    if marked and not (target / MARKER).is_file():
        raise FileExistsError(
            f"{target} exists and is not a lit-eraser output (no {MARKER} in it); --overwrite only replaces this "
            "tool's own outputs: move it away yourself or choose another output directory"
        )


def check_disjoint(output: str | os.PathLike[str], protected: dict[str, str | os.PathLike[str] | None]) -> None:
    """Refuse an output directory that equals, contains or lies inside a protected one (the adapter, the cache)."""
    out = Path(output).resolve()
    for what, path in protected.items():
        if path is None:
            continue
        keep = Path(path).resolve()
        if out == keep or out in keep.parents or keep in out.parents:
            relation = "is" if out == keep else ("contains" if out in keep.parents else "lies inside")
            raise ValueError(f"--output_dir {output} {relation} the {what} {path}; writing there could destroy it: choose another --output_dir")


@contextlib.contextmanager
def atomic_directory(target: str | os.PathLike[str], overwrite: bool = False, marked: bool = False) -> Iterator[Path]:
    """Yield a fresh temporary sibling of ``target``; on success rename it to ``target``, under ``target``'s lock.

    An existing ``target`` is refused unless ``overwrite``; with ``marked`` (top-level outputs) it must also
    carry :data:`MARKER`, which is then written into the new directory. The old directory is replaced only
    after the new one is complete. On any exception the temporary directory is removed and ``target`` is
    untouched.
    """
    target = Path(target)
    with output_lock(target):
        check_replaceable(target, overwrite, marked)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
        try:
            yield tmp
            if marked:
                write_json(tmp / MARKER, {"tool": "lit-eraser", "what": "output directory"})
            apply_umask(tmp)
            check_replaceable(target, overwrite, marked)  # something may have appeared meanwhile
            if target.exists():
                backup = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
                backup.rmdir()
                os.replace(target, backup)
                os.replace(tmp, target)
                shutil.rmtree(backup, ignore_errors=True)
            else:
                os.rename(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        apply_umask(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def finite_json(payload: Any, path: str = "") -> tuple[Any, list[str]]:
    """``payload`` with every non-finite float replaced by ``None``, and the dotted paths that were replaced."""
    if isinstance(payload, float) and not math.isfinite(payload):
        return None, [path or "."]
    if isinstance(payload, dict):
        out, bad = {}, []
        for key, value in payload.items():
            out[key], sub = finite_json(value, f"{path}.{key}" if path else str(key))
            bad += sub
        return out, bad
    if isinstance(payload, (list, tuple)):
        items = [finite_json(value, f"{path}[{i}]") for i, value in enumerate(payload)]
        return [item for item, _ in items], [p for _, sub in items for p in sub]
    return payload, []


def strict_json(payload: Any) -> Any:
    """``payload`` as strict JSON allows it: non-finite numbers become ``null`` and a top-level dict lists
    their paths under ``non_finite``."""
    clean, bad = finite_json(payload)
    if bad and isinstance(clean, dict):
        clean["non_finite"] = sorted(set(clean.get("non_finite") or []) | set(bad))
    return clean


def write_json(path: str | os.PathLike[str], payload: Any) -> None:
    """Strict JSON (no bare NaN/Infinity; see :func:`strict_json`), written atomically."""
    atomic_write_text(path, json.dumps(strict_json(payload), indent=2, sort_keys=True, allow_nan=False) + "\n")


def sha256_file(path: str | os.PathLike[str]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def directory_checksums(directory: str | os.PathLike[str]) -> dict[str, str]:
    """sha256 of every file under ``directory``, keyed by relative path (this tool's marker excluded)."""
    directory = Path(directory)
    return {
        str(p.relative_to(directory)): sha256_file(p)
        for p in sorted(directory.rglob("*"))
        if p.is_file() and p.name != MARKER
    }
