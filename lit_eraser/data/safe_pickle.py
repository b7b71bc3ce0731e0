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

Sizes are bounded too, so a crafted file cannot exhaust the memory or crash the interpreter (checksums are
optional, ``--data.verify_checksums false``): a file over :data:`MAX_PICKLE_BYTES` is not read, and every
allocation an allow-listed call or an ndarray's state asks for (``bytearray(n)``, ``ndarray(shape)``,
``_reconstruct``, ``ndarray.__setstate__``) is charged to a budget proportional to the file's size
(:data:`ALLOCATION_FACTOR` x its bytes + :data:`ALLOCATION_SLACK`; a real pickle carries its data, so its
arrays are never larger than that) before it happens; :class:`OversizedPickleError` otherwise. An ndarray state
whose data do not match its shape (which makes numpy read past its buffer) and structured dtypes are refused.
The opcodes are run by the pure-Python unpickler (``pickle._Unpickler``), whose memo is a dict (the C one sizes
its memo array by the largest index a file names) and whose REDUCE/NEWOBJ/BUILD can be checked before they run;
on the real LastFM files it is as fast as the C one.

Never call ``pickle.load`` / ``pandas.read_pickle`` on data files; call :func:`read_dataframe_pickle`.
"""

from __future__ import annotations

import importlib
import io
import math
import numbers
import os
import pickle
import struct
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

__all__ = [
    "ALLOWED_GLOBALS",
    "ALLOCATION_FACTOR",
    "ALLOCATION_SLACK",
    "CorruptPickleError",
    "MAX_PICKLE_BYTES",
    "OversizedPickleError",
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


class OversizedPickleError(PickleFileError, ValueError):
    """The file, or an allocation it asks for, exceeds the size limits (it is not a real data file)."""

    hint = "delete the file and fetch it again (e.g. with --data.download true), and keep --data.verify_checksums true"


#: Largest pickle file read (bytes); the real LastFM ``train_data.df`` has 2.5 MB.
MAX_PICKLE_BYTES = 256 * 2**20
#: Allocation budget per byte of pickle: numeric data are 1:1, an object array holds one 8-byte pointer per
#: element and every element costs at least two bytes of opcodes (4:1); 8 leaves a margin.
ALLOCATION_FACTOR = 8
#: Allocation budget every pickle gets on top (bytes), so tiny frames are never refused.
ALLOCATION_SLACK = 2**20


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


def _size(n: int) -> str:
    return f"{n / 2**20:,.1f} MiB" if n >= 2**20 else f"{n:,} bytes"


def _shape_elements(shape: Any) -> int:
    """The number of elements of an ndarray ``shape`` (an int or a tuple of ints); ValueError if malformed."""
    dims = (shape,) if isinstance(shape, numbers.Integral) else shape
    if not isinstance(dims, (tuple, list)) or not all(isinstance(d, numbers.Integral) and not isinstance(d, bool) for d in dims):
        raise CorruptPickleError(f"malformed ndarray shape {str(shape)[:80]}")
    if any(d < 0 for d in dims):
        raise CorruptPickleError(f"negative ndarray dimension in {str(shape)[:80]}")
    return math.prod(int(d) for d in dims)


def _itemsize(dtype: Any) -> int:
    try:
        return int(np.dtype(dtype).itemsize)
    except (TypeError, ValueError) as exc:
        raise CorruptPickleError(f"malformed dtype {str(dtype)[:80]} ({exc})") from None


class SafeUnpickler(pickle._Unpickler):
    """An unpickler that only resolves the globals in :data:`ALLOWED_GLOBALS` and bounds what it allocates.

    Args:
        file: A binary file object positioned at the start of the pickle.
        allowed: Override the allow-list (``(module, name)`` pairs); the default admits DataFrames only.
        max_alloc: Allocation budget in bytes (``bytearray(n)``, ndarray shapes and states, summed over the
            whole pickle); ``None`` for no budget. :func:`safe_loads` sets it from the pickle's size.
    """

    dispatch = dict(pickle._Unpickler.dispatch)

    def __init__(
        self, file: Any, *, allowed: frozenset[tuple[str, str]] = ALLOWED_GLOBALS, max_alloc: int | None = None
    ) -> None:
        super().__init__(file)
        self._allowed = allowed
        self._budget = max_alloc
        self._allocated = 0

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

    # ------------------------------------------------------------------------------------------- size checks
    def _charge(self, nbytes: int, what: str) -> None:
        if self._budget is None:
            return
        self._allocated += int(nbytes)
        if self._allocated > self._budget:
            raise OversizedPickleError(
                f"refusing to allocate {_size(int(nbytes))} for {what}: the pickle would need more than "
                f"{_size(self._budget)}, more than a file of this size can hold"
            )

    def _check_call(self, func: Any, args: tuple[Any, ...]) -> None:
        """Charge what calling an allow-listed ``func(*args)`` would allocate, before the call."""
        if func is bytearray:
            if args and isinstance(args[0], numbers.Integral):
                self._charge(int(args[0]), f"bytearray({int(args[0])})")
            elif args and isinstance(args[0], (bytes, bytearray, str, list, tuple)):
                self._charge(len(args[0]), f"a bytearray of {len(args[0]):,} bytes")
        elif func is np.ndarray or func is _RECONSTRUCT:
            shape, dtype = (args[1], args[2]) if func is _RECONSTRUCT else (args[0], args[1] if len(args) > 1 else float)
            if func is _RECONSTRUCT and not (isinstance(args[0], type) and issubclass(args[0], np.ndarray)):
                raise CorruptPickleError(f"_reconstruct of a non-ndarray type {args[0]!r}")
            self._charge(_shape_elements(shape) * _itemsize(dtype), f"an ndarray of shape {str(shape)[:80]}")

    def _check_state(self, inst: Any, state: Any) -> None:
        """Refuse ndarray/dtype states numpy would mishandle, and charge an ndarray's size, before BUILD."""
        if isinstance(inst, np.ndarray):
            if not isinstance(state, tuple) or len(state) not in (4, 5):
                raise CorruptPickleError("malformed ndarray state")
            shape, dtype, _, raw = state[-4:]
            if not isinstance(dtype, np.dtype):
                raise CorruptPickleError(f"ndarray state with a dtype of type {type(dtype).__name__}")
            if dtype.fields is not None or dtype.subdtype is not None:
                raise CorruptPickleError("structured or sub-array dtypes are not allowed in a DataFrame pickle")
            count = _shape_elements(shape)
            self._charge(count * dtype.itemsize, f"an ndarray of shape {str(shape)[:80]}")
            if dtype.hasobject:
                if not isinstance(raw, list) or len(raw) != count:
                    raise CorruptPickleError(
                        f"an object ndarray of {count:,} elements whose state holds "
                        f"{len(raw) if isinstance(raw, list) else type(raw).__name__} values"
                    )
            elif not isinstance(raw, (bytes, bytearray, str)) or len(raw) != count * dtype.itemsize:
                raise CorruptPickleError(f"an ndarray of shape {str(shape)[:80]} whose data have the wrong size")
        elif isinstance(inst, np.dtype):
            if not isinstance(state, tuple) or len(state) < 5 or state[2:5] != (None, None, None):
                raise CorruptPickleError("structured or sub-array dtypes are not allowed in a DataFrame pickle")

    # ------------------------------------------------------------------------------------------- opcodes
    def _load_reduce(self) -> None:
        stack = self.stack
        args = stack.pop()
        func = stack[-1]
        self._check_call(func, args)
        stack[-1] = func(*args)

    def _load_newobj(self) -> None:
        args = self.stack.pop()
        cls = self.stack.pop()
        if cls is np.ndarray:
            self._check_call(cls, args)
        self.append(cls.__new__(cls, *args))

    def _load_newobj_ex(self) -> None:
        kwargs = self.stack.pop()
        args = self.stack.pop()
        cls = self.stack.pop()
        if cls is np.ndarray:
            if kwargs:
                raise CorruptPickleError("ndarray.__new__ with keyword arguments")
            self._check_call(cls, args)
        self.append(cls.__new__(cls, *args, **kwargs))

    def _load_build(self) -> None:
        self._check_state(self.stack[-2], self.stack[-1])
        pickle._Unpickler.load_build(self)

    def _instantiate(self, klass: Any, args: list[Any]) -> None:
        self._check_call(klass, tuple(args))
        super()._instantiate(klass, args)

    dispatch[pickle.REDUCE[0]] = _load_reduce
    dispatch[pickle.NEWOBJ[0]] = _load_newobj
    dispatch[pickle.NEWOBJ_EX[0]] = _load_newobj_ex
    dispatch[pickle.BUILD[0]] = _load_build


_RECONSTRUCT = _import_global("numpy._core.multiarray", "_reconstruct")


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


def allocation_budget(n_bytes: int) -> int:
    """The allocation budget of a pickle of ``n_bytes`` bytes."""
    return ALLOCATION_FACTOR * int(n_bytes) + ALLOCATION_SLACK


def safe_loads(data: bytes, *, what: str = "<bytes>", max_alloc: int | None = None) -> Any:
    """Unpickle ``data`` with :class:`SafeUnpickler`; corrupt input raises :class:`CorruptPickleError`, an
    allocation over ``max_alloc`` bytes (default :func:`allocation_budget` of ``len(data)``)
    :class:`OversizedPickleError`."""
    budget = allocation_budget(len(data)) if max_alloc is None else max_alloc
    try:
        return SafeUnpickler(io.BytesIO(data), max_alloc=budget).load()
    except (UnsafePickleError, OversizedPickleError) as exc:
        raise type(exc)(f"{what}: {exc}") from None
    except CorruptPickleError as exc:
        raise CorruptPickleError(
            f"{what}: not a valid DataFrame pickle ({exc}); the file is corrupt: delete it and fetch it again "
            "(e.g. with --data.download true)"
        ) from None
    except RecursionError as exc:
        raise CorruptPickleError(f"{what}: pickle nests too deeply ({exc})") from None
    except _CORRUPT_ERRORS as exc:
        raise CorruptPickleError(
            f"{what}: not a complete, valid pickle ({type(exc).__name__}: {str(exc)[:300]}); the file is truncated "
            "or corrupt: delete it and fetch it again (e.g. with --data.download true)"
        ) from exc


def _read_bounded(path: Path, max_bytes: int) -> bytes:
    if path.is_dir():
        raise CorruptPickleError(f"{path} is a directory, not a pickled DataFrame")
    with open(path, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        if size > max_bytes:
            raise OversizedPickleError(f"{path}: {_size(size)} is larger than the {_size(max_bytes)} a data file may have")
        data = fh.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise OversizedPickleError(f"{path}: more than the {_size(max_bytes)} a data file may have (a device or a pipe?)")
    return data


def read_dataframe_pickle(path: str | PathLike[str], max_bytes: int | None = None) -> pd.DataFrame:
    """Read a pickled ``pandas.DataFrame`` through the allow-listed, size-bounded unpickler.

    Args:
        path: The ``*.df`` file.
        max_bytes: Largest file read (default :data:`MAX_PICKLE_BYTES`); never more than this is read.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        UnsafePickleError: the pickle references anything but the DataFrame building blocks.
        OversizedPickleError: the file is too large, or asks for more memory than its size allows.
        CorruptPickleError: the file is truncated, corrupt, or holds something other than a DataFrame.
    """
    path = Path(path)
    data = _read_bounded(path, MAX_PICKLE_BYTES if max_bytes is None else int(max_bytes))
    obj = safe_loads(data, what=str(path))
    if not isinstance(obj, pd.DataFrame):
        raise CorruptPickleError(f"{path}: expected a pickled pandas DataFrame, found {type(obj).__name__}")
    return obj
