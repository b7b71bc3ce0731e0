"""The allow-listed unpickler: real LastFM frames load; code-running and broken pickles are refused."""

from __future__ import annotations

import builtins
import os
import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lit_eraser.data.safe_pickle import (
    CorruptPickleError,
    UnsafePickleError,
    read_dataframe_pickle,
    safe_loads,
)


class _Reduce:
    """Pickles as ``func(*args)``; building the pickle never calls ``func``."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return (self.func, self.args)


def _write(path: Path, obj) -> Path:
    path.write_bytes(pickle.dumps(obj, protocol=4))
    return path


@pytest.mark.real_data
@pytest.mark.parametrize("name, rows", [("train_data.df", 50_800), ("Val_data.df", 122), ("Test_data.df", 122)])
def test_loads_real_lastfm_frames(lastfm_dir: Path, name: str, rows: int) -> None:
    frame = read_dataframe_pickle(lastfm_dir / name)
    assert isinstance(frame, pd.DataFrame)
    assert list(frame.columns) == ["seq", "len_seq", "next"]
    assert len(frame) == rows
    assert len(frame["seq"].iloc[0]) == 10


@pytest.mark.parametrize(
    "payload, named",
    [
        (_Reduce(os.system, "echo pwned"), "system"),
        (_Reduce(builtins.eval, "1 + 1"), "builtins.eval"),
        (_Reduce(np.load, "x.npy"), "numpy.load"),  # an allowed module, but not an allowed name
        (pd.DataFrame({"a": [_Reduce(builtins.exec, "x = 1")]}), "builtins.exec"),  # hidden in a cell
    ],
    ids=["os.system", "builtins.eval", "numpy.load", "exec-inside-dataframe"],
)
def test_rejects_code_with_clear_error(tmp_path: Path, payload, named: str) -> None:
    path = _write(tmp_path / "evil.df", payload)
    with pytest.raises(UnsafePickleError, match="refusing to unpickle global") as info:
        read_dataframe_pickle(path)
    assert named in str(info.value)
    assert str(path) in str(info.value)


def test_unsafe_error_is_an_unpickling_error() -> None:
    with pytest.raises(pickle.UnpicklingError):
        safe_loads(pickle.dumps(_Reduce(builtins.eval, "1")))


@pytest.mark.real_data
def test_truncated_file_gives_clear_error(lastfm_dir: Path, tmp_path: Path) -> None:
    data = (lastfm_dir / "Val_data.df").read_bytes()
    for cut in (len(data) // 2, len(data) - 1, 5):
        path = tmp_path / f"cut{cut}.df"
        path.write_bytes(data[:cut])
        with pytest.raises(CorruptPickleError, match="truncated or corrupt") as info:
            read_dataframe_pickle(path)
        assert str(path) in str(info.value)


def test_garbage_and_non_dataframe(tmp_path: Path) -> None:
    (tmp_path / "junk.df").write_bytes(b"this is not a pickle at all")
    with pytest.raises(CorruptPickleError):
        read_dataframe_pickle(tmp_path / "junk.df")
    with pytest.raises(CorruptPickleError, match="expected a pickled pandas DataFrame"):
        read_dataframe_pickle(_write(tmp_path / "list.df", [1, 2, 3]))
    with pytest.raises(FileNotFoundError):
        read_dataframe_pickle(tmp_path / "absent.df")


def test_plain_numeric_frame_round_trips(tmp_path: Path) -> None:
    frame = pd.DataFrame({0: [[1, 2], [3]], 1: np.array([2, 1]), 2: np.array([5.0, 6.0])})
    loaded = read_dataframe_pickle(_write(tmp_path / "ok.df", frame))
    pd.testing.assert_frame_equal(loaded, frame)
