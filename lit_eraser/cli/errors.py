"""Turn bad input into one clear line on stderr and a non-zero exit code (tracebacks with LIT_ERASER_DEBUG=1).

A user error prints ``error: <Type>: <message>`` and then ``hint: <what to do>``, and exits with status 2. The
message is capped at :data:`MAX_MESSAGE_CHARS` characters (a request file of 100k bad lines, or a value of
megabytes quoted in a message, must not flood the terminal). A full disk (``ENOSPC``/``EDQUOT``, also when a
library wraps it) is a user error too: it names the file that could not be written.
"""

from __future__ import annotations

import errno
import functools
import os
import sys
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

#: Longest error message printed (characters); the rest is cut and counted.
MAX_MESSAGE_CHARS = 8000

_DISK_FULL_ERRNOS = frozenset(code for code in (getattr(errno, "ENOSPC", None), getattr(errno, "EDQUOT", None)) if code)
_DISK_FULL_TEXT = ("no space left on device", "disk quota exceeded", "os error 28")
_DEBUG_HINT = "LIT_ERASER_DEBUG=1 shows the traceback"


def _user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean "your input is wrong" (files, requests, configs), not "lit-eraser has a bug".

    Validation raises ``ValueError`` (or a subclass: RequestError, RunDirectoryError, TokenizerError, ...), file
    problems ``FileNotFoundError``/``FileExistsError``/``IsADirectoryError``/``NotADirectoryError``/
    ``PermissionError`` or the data errors below. A bare ``KeyError``, ``TypeError`` or ``RuntimeError`` is a bug
    and keeps its traceback (unless it reports a full disk, see :func:`disk_full_error`).
    """
    from lit_eraser.data.download import DownloadError
    from lit_eraser.data.safe_pickle import PickleFileError

    return (
        ValueError,
        FileNotFoundError,
        FileExistsError,
        IsADirectoryError,
        NotADirectoryError,
        PermissionError,
        PickleFileError,
        DownloadError,
    )


def _chain(error: BaseException) -> list[BaseException]:
    """``error`` and the exceptions it was raised from or while handling (each once)."""
    seen: list[BaseException] = []
    current: BaseException | None = error
    while current is not None and all(current is not e for e in seen) and len(seen) < 32:
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen


def disk_full_error(error: BaseException) -> BaseException | None:
    """The exception in ``error``'s chain that reports a full disk or quota (``ENOSPC``/``EDQUOT``), if any.

    Libraries that write files from native code (tokenizers, safetensors) raise their own types whose message
    holds the OS text, so the message is matched too.
    """
    for link in _chain(error):
        if isinstance(link, OSError) and link.errno in _DISK_FULL_ERRNOS:
            return link
    for link in _chain(error):
        text = str(link).lower()
        if any(marker in text for marker in _DISK_FULL_TEXT):
            return link
    return None


def _clip(message: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    if len(message) <= limit:
        return message
    return f"{message[:limit]}... [{len(message) - limit:,} more characters not shown]"


def _hint(error: BaseException) -> str:
    hint = getattr(error, "hint", None)
    if isinstance(hint, str) and hint:
        return f"{hint}; {_DEBUG_HINT}"
    if isinstance(error, IsADirectoryError):
        return f"give the path of a file, not of a directory; {_DEBUG_HINT}"
    if isinstance(error, PermissionError):
        return f"check the permissions of that path, or choose another location; {_DEBUG_HINT}"
    if isinstance(error, FileNotFoundError):
        return f"check the path; {_DEBUG_HINT}"
    return _DEBUG_HINT


def describe_user_error(error: BaseException) -> tuple[str, str] | None:
    """``(error line, hint line)`` for a user error, ``None`` for an exception that is a bug."""
    full = disk_full_error(error)
    if full is not None:
        where = getattr(full, "filename", None)
        target = f" while writing {where}" if where else ""
        detail = getattr(full, "strerror", None) or str(full)
        return (
            _clip(f"error: disk full{target}: {detail}"),
            "hint: free space on that file system (or quota), or write elsewhere (--output_dir, --cache_dir, "
            "$LIT_ERASER_CACHE, $TMPDIR), then run again; an output that was being written is not kept "
            f"({_DEBUG_HINT})",
        )
    if isinstance(error, _user_errors()):
        return _clip(f"error: {type(error).__name__}: {error}"), f"hint: {_hint(error)}"
    return None


def exit_on_user_error(main: Callable[..., T]) -> Callable[..., T]:
    """Run ``main``; a user error prints ``error: <message>`` and a ``hint:`` line and exits with status 2."""

    @functools.wraps(main)
    def wrapper(*args: object, **kwargs: object) -> T:
        try:
            return main(*args, **kwargs)
        except Exception as error:  # noqa: BLE001 - a bug is re-raised below
            described = describe_user_error(error)
            if described is None or os.environ.get("LIT_ERASER_DEBUG"):
                raise
            print(*described, sep="\n", file=sys.stderr)
            raise SystemExit(2) from None

    return wrapper
