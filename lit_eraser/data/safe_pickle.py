"""Read pickled pandas DataFrames without running arbitrary code.

A pickle is a program: ``pickle.load`` will import and call whatever the file names (``os.system``,
``builtins.eval``, ...). The LastFM split of LLaRA ships as pickled DataFrames (``*.df``), so they are
read with :class:`SafeUnpickler`, whose ``find_class`` admits only the handful of pandas/numpy names a
DataFrame of plain columns needs (found with ``pickletools`` on the real files) and refuses everything
else with :class:`UnsafePickleError` naming the offending ``module.name``. Callables can only enter an
unpickled object graph through ``find_class`` (``persistent_load`` is not supported and the copyreg
extension opcodes resolve through ``find_class`` too), so this allow-list is the whole gate.

Pickles written with numpy 1.x name ``numpy.core.*``; numpy 2 renamed that package ``numpy._core``
(the old name still imports but warns). Both spellings are accepted and resolved to whichever exists.

A truncated or otherwise corrupt file raises :class:`CorruptPickleError` (a ``ValueError``) that names the
file and says how to get a fresh copy.

Never call ``pickle.load`` / ``pandas.read_pickle`` on data files; call :func:`read_dataframe_pickle`.
"""

from __future__ import annotations

import importlib
import io
import pickle
import struct
from os import PathLike
from pathlib import Path
from typing import Any

import pandas as pd

__all__ = [
    "ALLOWED_GLOBALS",
    "CorruptPickleError",
    "PickleFileError",
    "SafeUnpickler",
    "UnsafePickleError",
    "read_dataframe_pickle",
    "safe_loads",
]


class PickleFileError(Exception):
    """Base class of the errors :func:`read_dataframe_pickle` raises."""


class UnsafePickleError(PickleFileError, pickle.UnpicklingError):
    """The pickle references a global that is not on the allow-list (it could run code)."""


class CorruptPickleError(PickleFileError, ValueError):
    """The pickle is truncated, corrupt, or does not hold a DataFrame."""


_NUMPY_CORE_MODULES = ("multiarray", "numeric")

#: ``(module, name)`` pairs a DataFrame pickle may reference. ``numpy.core.X`` is normalised to
#: ``numpy._core.X`` before the lookup.
ALLOWED_GLOBALS: frozenset[tuple[str, str]] = frozenset(
    {
        # pandas containers
        ("pandas.core.frame", "DataFrame"),
        ("pandas.core.internals.managers", "BlockManager"),
        ("pandas._libs.internals", "_unpickle_block"),
        ("pandas.core.indexes.base", "_new_Index"),
        ("pandas.core.indexes.base", "Index"),
        ("pandas.core.indexes.range", "RangeIndex"),
        # the same classes under their public names (pickles written by pandas >= 2)
        ("pandas", "DataFrame"),
        ("pandas", "Index"),
        ("pandas", "RangeIndex"),
        # numpy arrays, dtypes and scalars
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy._core.numeric", "_frombuffer"),
        # block placements are pickled as slices; buffers (protocol 5) as bytearrays
        ("builtins", "slice"),
        ("builtins", "bytearray"),
    }
)


def _normalise(module: str) -> str:
    for sub in _NUMPY_CORE_MODULES:
        if module == f"numpy.core.{sub}":
            return f"numpy._core.{sub}"
    return module


def _import_global(module: str, name: str) -> Any:
    """Import an allow-listed global; ``numpy._core`` falls back to ``numpy.core`` on numpy 1.x."""
    try:
        mod = importlib.import_module(module)
    except ImportError:
        if not module.startswith("numpy._core."):
            raise
        mod = importlib.import_module(module.replace("numpy._core.", "numpy.core.", 1))
    return getattr(mod, name)


class SafeUnpickler(pickle.Unpickler):
    """A ``pickle.Unpickler`` that only resolves the globals in :data:`ALLOWED_GLOBALS`.

    Args:
        file: A binary file object positioned at the start of the pickle.
        allowed: Override the allow-list (``(module, name)`` pairs); the default admits DataFrames only.
    """

    def __init__(self, file: Any, *, allowed: frozenset[tuple[str, str]] = ALLOWED_GLOBALS) -> None:
        super().__init__(file)
        self._allowed = allowed

    def find_class(self, module: str, name: str) -> Any:  # noqa: D401 - pickle API
        key = (_normalise(module), name)
        if key not in self._allowed:
            raise UnsafePickleError(
                f"refusing to unpickle global {module}.{name}: it is not on the allow-list of pandas/numpy "
                "names a DataFrame needs (a pickle can run arbitrary code; only load files you trust, "
                "and only with lit_eraser.data.safe_pickle)"
            )
        return _import_global(*key)

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError(f"refusing persistent id {pid!r}: persistent references are not allowed")


# Exceptions a truncated/corrupt stream can raise from inside pickle, numpy or pandas.
_CORRUPT_ERRORS = (
    EOFError,
    pickle.UnpicklingError,
    ValueError,
    TypeError,
    IndexError,
    KeyError,
    AttributeError,
    struct.error,
    OverflowError,
    MemoryError,
)


def safe_loads(data: bytes, *, what: str = "<bytes>") -> Any:
    """Unpickle ``data`` with :class:`SafeUnpickler`; corrupt input raises :class:`CorruptPickleError`."""
    try:
        return SafeUnpickler(io.BytesIO(data)).load()
    except UnsafePickleError as exc:
        raise UnsafePickleError(f"{what}: {exc}") from None
    except RecursionError as exc:
        raise CorruptPickleError(f"{what}: pickle nests too deeply ({exc})") from None
    except _CORRUPT_ERRORS as exc:
        raise CorruptPickleError(
            f"{what}: not a complete, valid pickle ({type(exc).__name__}: {exc}); the file is truncated or "
            "corrupt: delete it and fetch it again (e.g. with --data.download true)"
        ) from exc


def read_dataframe_pickle(path: str | PathLike[str]) -> pd.DataFrame:
    """Read a pickled ``pandas.DataFrame`` through the allow-listed unpickler.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        UnsafePickleError: the pickle references anything but the DataFrame building blocks.
        CorruptPickleError: the file is truncated, corrupt, or holds something other than a DataFrame.
    """
    path = Path(path)
    data = path.read_bytes()
    obj = safe_loads(data, what=str(path))
    if not isinstance(obj, pd.DataFrame):
        raise CorruptPickleError(f"{path}: expected a pickled pandas DataFrame, found {type(obj).__name__}")
    return obj
