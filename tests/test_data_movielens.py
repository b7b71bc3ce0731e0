"""MovieLens 100K in both shapes on the real files: user splits, windows, candidates, labels, determinism."""

from __future__ import annotations

from pathlib import Path

import pytest

from lit_eraser.data import DATASETS, MovieLensDataModule, MovieLensTallrecDataModule
from lit_eraser.data.movielens import ID_STRIDE, llara_title, read_u_data, read_u_item, split_users

pytestmark = pytest.mark.real_data


@pytest.fixture(scope="module")
def ratings(ml100k_dir: Path):
    titles = read_u_item(ml100k_dir / "u.item")
    return titles, read_u_data(ml100k_dir / "u.data", len(titles))


@pytest.fixture(scope="module")
def tallrec(ml100k_dir: Path) -> MovieLensTallrecDataModule:
    dm = MovieLensTallrecDataModule(data_dir=str(ml100k_dir), seed=0)
    dm.prepare_data()
    dm.setup()
    return dm


def test_registered() -> None:
    assert DATASETS["movielens"] is MovieLensDataModule
    assert DATASETS["movielens_tallrec"] is MovieLensTallrecDataModule


def test_raw_files(ratings) -> None:
    titles, per_user = ratings
    assert len(titles) == 1682 and titles[0] == "Toy Story (1995)"
    assert len(per_user) == 943 and sum(len(items) for items, _ in per_user.values()) == 100_000
    assert llara_title("Usual Suspects, The (1995)") == "The Usual Suspects"


def test_user_split_is_a_seeded_partition(ratings) -> None:
    users = list(ratings[1])
    split = split_users(users, 0, 0.1, 0.1)
    assert [len(split[k]) for k in ("train", "val", "test")] == [755, 94, 94]
    assert sorted(split["train"] + split["val"] + split["test"]) == sorted(users)
    assert split_users(users, 0, 0.1, 0.1) == split
    assert split_users(users, 1, 0.1, 0.1) != split


def test_sequential_rows(ratings, ml100k_dir: Path) -> None:
    # The full training split has ~76k rows; a seeded subset keeps the test fast and exercises max_*_rows.
    dm = MovieLensDataModule(data_dir=str(ml100k_dir), seed=0, max_train_rows=3000)
    dm.prepare_data()
    dm.setup()
    assert dm.kind == "sequential" and dm.num_items == 1682 and dm.item_titles[0] == "Toy Story"
    assert (len(dm.train_rows), len(dm.val_rows), len(dm.test_rows)) == (3000, 94, 94)
    per_user = ratings[1]
    train, val, test = dm.train_rows.to_dict(), dm.val_rows.to_dict(), dm.test_rows.to_dict()
    assert not set(train["user"]) & set(val["user"]) and not set(val["user"]) & set(test["user"])
    for split in (train, val, test):
        for row_id, user, history, target, candidates in zip(*split.values()):
            t = row_id % ID_STRIDE
            items = per_user[user][0].tolist()
            assert row_id // ID_STRIDE == user and items[t] == target
            assert history == items[max(0, t - 10) : t] and 3 <= len(history) <= 10
            assert len(set(candidates)) == 20 and target in candidates and not set(candidates) & set(history)
    for split in (val, test):  # held-out users: one row each, their last rating
        assert len(set(split["user"])) == len(split["user"])
        assert all(i % ID_STRIDE == len(per_user[u][0]) - 1 for i, u in zip(split["id"], split["user"]))
    again = MovieLensDataModule(data_dir=str(ml100k_dir), seed=0, max_train_rows=3000)
    again.setup()
    assert again.train_rows.to_dict() == train and again.test_rows.to_dict() == test


def test_tallrec_rows(tallrec: MovieLensTallrecDataModule, ratings) -> None:
    titles, per_user = ratings
    assert tallrec.kind == "binary"
    assert (len(tallrec.train_rows), len(tallrec.val_rows), len(tallrec.test_rows)) == (71_220, 9_952, 9_398)
    total = sum(len(tallrec_split) for tallrec_split in (tallrec.train_rows, tallrec.val_rows, tallrec.test_rows))
    assert total == 100_000 - 943 * 10  # every rating after the first 10 of its user
    sample = tallrec.train_rows.select(range(0, len(tallrec.train_rows), 97)).to_dict()
    for row_id, user, liked, disliked, target, label in zip(*sample.values()):
        t = row_id % ID_STRIDE
        items, stars = (a.tolist() for a in per_user[user])
        assert target == titles[items[t]] and label == int(stars[t] > 3)
        window = range(t - 10, t)
        assert liked == [titles[items[i]] for i in window if stars[i] > 3]
        assert disliked == [titles[items[i]] for i in window if stars[i] <= 3]


def test_tallrec_label_balance(tallrec: MovieLensTallrecDataModule) -> None:
    for split in (tallrec.train_rows, tallrec.val_rows, tallrec.test_rows):
        labels = split.select_columns(["label"]).to_dict()["label"]
        assert set(labels) == {0, 1}
        assert 0.45 < sum(labels) / len(labels) < 0.65


def test_tallrec_subsets_deterministic(tallrec: MovieLensTallrecDataModule, ml100k_dir: Path) -> None:
    kwargs = dict(data_dir=str(ml100k_dir), seed=0, max_train_rows=256, max_eval_rows=64)
    a, b = MovieLensTallrecDataModule(**kwargs), MovieLensTallrecDataModule(**kwargs)
    a.setup()
    b.setup()
    assert a.train_rows.to_dict() == b.train_rows.to_dict() and a.val_rows.to_dict() == b.val_rows.to_dict()
    assert (len(a.train_rows), len(a.val_rows), len(a.test_rows)) == (256, 64, 64)
    position = {row_id: k for k, row_id in enumerate(tallrec.train_rows.select_columns(["id"]).to_dict()["id"])}
    subset = a.train_rows.to_dict()  # the same rows as in the full build
    assert tallrec.train_rows.select([position[i] for i in subset["id"]]).to_dict() == subset
    assert any(a.text_corpus())
