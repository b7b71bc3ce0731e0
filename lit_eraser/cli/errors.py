"""Turn bad input into one clear line on stderr and a non-zero exit code (tracebacks with LIT_ERASER_DEBUG=1)."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

def _user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean "your input is wrong" (files, requests, configs), not "lit-eraser has a bug".

    Validation raises ``ValueError`` (or a subclass: RequestError, RunDirectoryError, TokenizerError, ...), file
    problems ``FileNotFoundError``/``FileExistsError`` or the data errors below. A bare ``KeyError``,
    ``TypeError`` or ``RuntimeError`` is a bug and keeps its traceback.
    """
    from lit_eraser.data.download import DownloadError
    from lit_eraser.data.safe_pickle import PickleFileError

    return (ValueError, FileNotFoundError, FileExistsError, PickleFileError, DownloadError)


def exit_on_user_error(main: Callable[..., T]) -> Callable[..., T]:
    """Run ``main``; a user error prints ``error: <message>`` and exits with status 2."""

    @functools.wraps(main)
    def wrapper(*args: object, **kwargs: object) -> T:
        try:
            return main(*args, **kwargs)
        except _user_errors() as error:
            if os.environ.get("LIT_ERASER_DEBUG"):
                raise
            print(f"error: {type(error).__name__}: {error}", file=sys.stderr)
            raise SystemExit(2) from None

    return wrapper
