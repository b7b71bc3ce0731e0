"""LastFM (LLaRA split) on the real files: sizes, users, ids, candidates, determinism."""

from __future__ import annotations

from pathlib import Path

import pytest

from lit_eraser.data import DATASETS, LastFMDataModule
from lit_eraser.data.lastfm import TEST_ID_OFFSET, VAL_ID_OFFSET

pytestmark = pytest.mark.real_data


@pytest.fixture(scope="module")
def lastfm(lastfm_dir: Path) -> LastFMDataModule:
    dm = LastFMDataModule(data_dir=str(lastfm_dir), seed=0)
    dm.prepare_data()
    dm.setup("fit")
    return dm


def cols(dataset) -> dict[str, list]:
    """Columns as Python lists (one Arrow conversion: far faster than indexing a Column)."""
    return dataset.to_dict()


def test_registered() -> None:
    assert DATASETS["lastfm"] is LastFMDataModule


def test_sizes_titles_and_ids(lastfm: LastFMDataModule) -> None:
    assert lastfm.kind == "sequential"
    assert (len(lastfm.train_rows), len(lastfm.val_rows), len(lastfm.test_rows)) == (47_872, 122, 122)
    assert lastfm.num_items == 4606
    assert lastfm.item_titles[:2] == ["Morcheeba", "Enigma"]
    train_ids = cols(lastfm.train_rows)["id"]
    assert len(set(train_ids)) == len(train_ids) and min(train_ids) >= 0 and max(train_ids) < 50_800
    assert cols(lastfm.val_rows)["id"] == [VAL_ID_OFFSET + i for i in range(122)]
    test = cols(lastfm.test_rows)
    assert test["id"] == [TEST_ID_OFFSET + i for i in range(122)]
    assert test["user"] == test["id"]


def test_first_user_prefixes(lastfm: LastFMDataModule) -> None:
    # rows 0..2 of the file (len_seq < 3) are dropped; row 3 is user 0 with history [0, 1, 2] -> 3
    first = lastfm.train_rows[0]
    assert (first["id"], first["user"], first["history"], first["target"]) == (3, 0, [0, 1, 2], 3)
    users = cols(lastfm.train_rows)["user"]
    assert len(set(users)) == 976
    assert users == sorted(users)  # a user's rows are contiguous in the file


def test_rows_are_well_formed(lastfm: LastFMDataModule) -> None:
    padding = lastfm.num_items
    for split in (lastfm.train_rows, lastfm.val_rows, lastfm.test_rows):
        c = cols(split)
        for history, target, candidates in zip(c["history"], c["target"], c["candidates"]):
            assert 3 <= len(history) <= 10 and padding not in history
            assert len(candidates) == 20 and len(set(candidates)) == 20
            assert target in candidates
            assert not set(candidates) & set(history)
            assert all(0 <= c < padding for c in candidates)


def test_deterministic_across_constructions(lastfm: LastFMDataModule, lastfm_dir: Path) -> None:
    again = LastFMDataModule(data_dir=str(lastfm_dir), seed=0)
    again.setup("fit")
    for split in ("train_rows", "val_rows", "test_rows"):
        assert getattr(again, split).to_dict() == getattr(lastfm, split).to_dict()


def test_subset_is_seeded_and_consistent(lastfm: LastFMDataModule, lastfm_dir: Path) -> None:
    small = LastFMDataModule(data_dir=str(lastfm_dir), seed=0, max_train_rows=500, max_eval_rows=30)
    small.setup("fit")
    assert (len(small.train_rows), len(small.val_rows), len(small.test_rows)) == (500, 30, 30)
    full = lastfm.row_by_id()
    for row in small.train_rows:  # same rows, same candidates as in the full build
        assert full[row["id"]] == row
    other = LastFMDataModule(data_dir=str(lastfm_dir), seed=1, max_train_rows=500, max_eval_rows=30)
    other.setup("fit")
    assert cols(other.train_rows)["id"] != cols(small.train_rows)["id"]
    assert cols(other.test_rows) != cols(small.test_rows)


def test_subset_keeps_the_full_split_for_the_item_encoder(lastfm: LastFMDataModule, lastfm_dir: Path) -> None:
    small = LastFMDataModule(data_dir=str(lastfm_dir), seed=0, max_train_rows=500)
    small.setup("fit")
    pairs = small.item_encoder_rows()
    assert len(small.train_rows) == 500 and len(pairs) == len(lastfm.train_rows)
    columns = cols(lastfm.train_rows)
    assert [p["history"] for p in pairs] == columns["history"] and [p["target"] for p in pairs] == columns["target"]
