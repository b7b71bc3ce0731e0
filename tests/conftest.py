"""Shared pytest fixtures."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")  # tiny models: one thread each is faster than oversubscribed cores

import pytest
import torch

torch.set_num_threads(1)

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data_dir() -> Path:
    """The real data root: ``$LIT_ERASER_DATA`` if set, else ``<repo>/../shared/data``; skips when absent."""
    env = os.environ.get("LIT_ERASER_DATA")
    root = Path(env).expanduser() if env else DEFAULT_SHARED_DATA
    if not root.is_dir():
        origin = "$LIT_ERASER_DATA" if env else "the default <repo>/../shared/data"
        pytest.skip(
            f"real data root {root} (from {origin}) does not exist; set LIT_ERASER_DATA to a folder "
            "holding lastfm/, ml-100k/ and bookcrossing/ to run the real-data tests"
        )
    return root


def _dataset_dir(root: Path, name: str, files: tuple[str, ...]) -> Path:
    path = root / name
    missing = [f for f in files if not (path / f).is_file()]
    if missing:
        pytest.skip(f"real data folder {path} lacks {', '.join(missing)}")
    return path


@pytest.fixture(scope="session")
def lastfm_dir(shared_data_dir: Path) -> Path:
    """``<data root>/lastfm`` (skips when its files are absent)."""
    return _dataset_dir(shared_data_dir, "lastfm", ("train_data.df", "Val_data.df", "Test_data.df", "id2name.txt"))


@pytest.fixture(scope="session")
def ml100k_dir(shared_data_dir: Path) -> Path:
    """``<data root>/ml-100k`` (skips when its files are absent)."""
    return _dataset_dir(shared_data_dir, "ml-100k", ("u.data", "u.item"))


@pytest.fixture(scope="session")
def bookcrossing_dir(shared_data_dir: Path) -> Path:
    """``<data root>/bookcrossing`` (skips when its files are absent)."""
    return _dataset_dir(shared_data_dir, "bookcrossing", ("valid.json", "test.json"))


@pytest.fixture(scope="session", autouse=True)
def _isolated_caches(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Tokenizer/SASRec caches and W&B files go to a temporary folder; W&B never goes online in tests."""
    mp = pytest.MonkeyPatch()
    root = tmp_path_factory.mktemp("caches")
    mp.setenv("LIT_ERASER_CACHE", str(root / "lit-eraser"))
    mp.setenv("WANDB_MODE", "offline")
    mp.setenv("WANDB_SILENT", "true")
    mp.setenv("WANDB_DIR", str(root / "wandb"))
    yield
    mp.undo()


@pytest.fixture(scope="session")
def seq() -> tuple[list[dict], int]:
    """Synthetic sequential training rows (default settings) and the catalogue size."""
    from lit_eraser.data.synthetic import SyntheticDataModule

    dm = SyntheticDataModule(kind="sequential")
    dm.setup()
    return list(dm.train_rows), dm.num_items


@pytest.fixture(scope="session")
def binary() -> list[dict]:
    """Synthetic binary (Yes/No) training rows (default settings)."""
    from lit_eraser.data.synthetic import SyntheticDataModule

    dm = SyntheticDataModule(kind="binary")
    dm.setup()
    return list(dm.train_rows)
