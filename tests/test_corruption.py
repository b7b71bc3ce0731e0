"""Seeded corruption generators: invariants, counts, determinism, and requests that undo them exactly."""

from __future__ import annotations

import copy

import pytest

from lit_eraser.unlearning import (
    CORRUPTIONS,
    CorruptionSpec,
    affected_count,
    apply_requests,
    build_pairs,
    corrupt_qm_sequential,
    corrupt_rc_binary,
    corrupt_rc_sequential,
    make_corruption,
    remove_users,
    validate_requests,
)


def with_users(rows, per_user=3):
    """Rows where several rows share a user (the synthetic data gives every row its own user)."""
    return [{**row, "user": row["id"] // per_user} for row in rows]


def by_id(rows):
    return {row["id"]: row for row in rows}


def run(name, seq, binary, fraction=0.1, seed=0):
    rows, num_items = seq
    if name == "qm_seq":
        return rows, corrupt_qm_sequential(rows, fraction, seed, num_items)
    if name == "ir_seq":
        rows = with_users(rows)
        return rows, remove_users(rows, fraction, seed)
    if name == "ir_bin":
        rows = with_users(binary)
        return rows, remove_users(rows, fraction, seed)
    if name == "rc_seq":
        return rows, corrupt_rc_sequential(rows, fraction, seed)
    if name == "rc_bin":
        return binary, corrupt_rc_binary(binary, fraction, seed)
    raise AssertionError(name)


GENERATORS = ["qm_seq", "ir_seq", "ir_bin", "rc_seq", "rc_bin"]


# --------------------------------------------------------------------------------------------- counting
@pytest.mark.parametrize(
    "fraction, n, expected",
    [(0.1, 256, 26), (0.05, 256, 13), (0.1, 250, 25), (0.05, 10, 1), (0.15, 10, 2), (0.25, 10, 3),
     (0.001, 10, 1), (1.0, 7, 7), (1, 7, 7)],
)
def test_affected_count_rounds_half_up_at_least_one(fraction, n, expected):
    assert affected_count(fraction, n) == expected


@pytest.mark.parametrize("fraction", [0, 0.0, -0.1, 1.01, True, "0.1", float("nan")])
def test_affected_count_rejects_bad_fractions(fraction):
    with pytest.raises(ValueError, match="fraction"):
        affected_count(fraction, 10)


# --------------------------------------------------------------------------------------------- every generator
@pytest.mark.parametrize("name", GENERATORS)
def test_requests_undo_the_corruption(name, seq, binary):
    clean, corruption = run(name, seq, binary)
    snapshot = copy.deepcopy(clean)
    assert corruption.clean_rows == apply_requests(corruption.rows, corruption.requests)
    if name.startswith("ir"):
        removed = {r.id for r in corruption.requests}
        assert corruption.rows == clean  # the original adapter trains on everything
        assert corruption.clean_rows == [row for row in clean if row["id"] not in removed]
    else:
        assert corruption.clean_rows == clean  # restoring every corrupted row gives the clean data back
    assert clean == snapshot  # the input is never modified
    kind = "binary" if name.endswith("bin") else "sequential"
    validate_requests(corruption.requests, by_id(corruption.rows), kind, seq[1] if kind == "sequential" else None)
    ids = [r.id for r in corruption.requests]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert corruption.affected_ids == ids
    assert corruption.task == name[:2].upper()


@pytest.mark.parametrize("name", GENERATORS)
def test_deterministic_by_seed(name, seq, binary):
    _, a = run(name, seq, binary, seed=3)
    _, b = run(name, seq, binary, seed=3)
    _, c = run(name, seq, binary, seed=4)
    assert a == b
    assert a.requests != c.requests


@pytest.mark.parametrize("name", ["qm_seq", "rc_seq", "rc_bin"])
def test_row_order_does_not_matter(name, seq, binary):
    rows, num_items = seq
    source = binary if name == "rc_bin" else rows
    reordered = list(reversed(source))
    _, a = run(name, seq, binary, seed=5)
    if name == "qm_seq":
        b = corrupt_qm_sequential(reordered, 0.1, 5, num_items)
    elif name == "rc_seq":
        b = corrupt_rc_sequential(reordered, 0.1, 5)
    else:
        b = corrupt_rc_binary(reordered, 0.1, 5)
    assert a.requests == b.requests
    assert [row["id"] for row in b.rows] == [row["id"] for row in reordered]  # order of the input kept


@pytest.mark.parametrize("name", ["qm_seq", "rc_seq", "rc_bin"])
@pytest.mark.parametrize("fraction, expected", [(0.1, 26), (0.05, 13), (1.0, 256)])
def test_row_fraction_counts(name, seq, binary, fraction, expected):
    clean, corruption = run(name, seq, binary, fraction=fraction)
    assert len(clean) == 256
    assert len(corruption.requests) == expected
    changed = [new["id"] for old, new in zip(clean, corruption.rows) if old != new]
    assert changed == corruption.affected_ids


# --------------------------------------------------------------------------------------------- QM invariants
def test_qm_sequential_invariants(seq):
    rows, num_items = seq
    corruption = corrupt_qm_sequential(rows, 0.1, 0, num_items)
    clean = by_id(rows)
    assert all(r.task == "QM" and set(r.edit) == {"history"} for r in corruption.requests)
    requested = {r.id: r for r in corruption.requests}
    for row in corruption.rows:
        original = clean[row["id"]]
        if row["id"] not in requested:
            assert row == original
            continue
        noise = row["history"][-1]
        assert row["history"][:-1] == original["history"][:-1]  # only the last item changes
        assert len(row["history"]) == len(original["history"])
        assert noise not in original["history"]
        assert noise != original["target"]
        assert noise not in original["candidates"]
        assert 0 <= noise < num_items
        assert {k: v for k, v in row.items() if k != "history"} == {
            k: v for k, v in original.items() if k != "history"
        }
        assert list(requested[row["id"]].edit["history"]) == original["history"]


def test_qm_pairs_are_exact(seq):
    rows, num_items = seq
    corruption = corrupt_qm_sequential(rows, 0.05, 1, num_items)
    for z, z_prime in build_pairs(corruption.requests, by_id(corruption.rows)):
        assert z_prime["candidates"] == z["candidates"]
        assert z_prime["target"] == z["target"] and z_prime["user"] == z["user"]
        assert z_prime["history"][:-1] == z["history"][:-1] and z_prime["history"][-1] != z["history"][-1]


def test_qm_sequential_checks_num_items(seq):
    rows, num_items = seq
    with pytest.raises(ValueError, match="outside the catalogue"):
        corrupt_qm_sequential(rows, 0.1, 0, num_items // 2)
    with pytest.raises(ValueError, match="num_items"):
        corrupt_qm_sequential(rows, 0.1, 0, 0)


def test_qm_sequential_when_catalogue_is_full():
    row = {"id": 0, "user": 0, "history": [0, 1], "target": 2, "candidates": [2, 3]}
    with pytest.raises(ValueError, match="every item"):
        corrupt_qm_sequential([row], 1.0, 0, 4)
    assert corrupt_qm_sequential([row], 1.0, 0, 5).rows[0]["history"] == [0, 4]


# --------------------------------------------------------------------------------------------- RC invariants
def test_rc_sequential_invariants(seq):
    rows, _ = seq
    corruption = corrupt_rc_sequential(rows, 0.1, 0)
    clean = by_id(rows)
    for request in corruption.requests:
        row = by_id(corruption.rows)[request.id]
        original = clean[request.id]
        assert row["target"] != original["target"]
        assert row["target"] in original["candidates"]
        assert row["candidates"] == original["candidates"] and row["history"] == original["history"]
        assert dict(request.edit) == {"target": original["target"]}


def test_rc_binary_invariants(binary):
    corruption = corrupt_rc_binary(binary, 0.1, 0)
    clean = by_id(binary)
    for request in corruption.requests:
        row = by_id(corruption.rows)[request.id]
        assert row == {**clean[request.id], "label": 1 - clean[request.id]["label"]}
        assert dict(request.edit) == {"label": clean[request.id]["label"]}


# --------------------------------------------------------------------------------------------- IR invariants
@pytest.mark.parametrize("fraction, users", [(0.1, 9), (0.05, 4), (0.5, 43), (1.0, 86)])
def test_remove_users_counts_users(seq, fraction, users):
    rows = with_users(seq[0])  # 256 rows, 86 users (3 rows each, the last has 1)
    corruption = remove_users(rows, fraction, 0)
    removed_users = {by_id(rows)[r.id]["user"] for r in corruption.requests}
    assert len(removed_users) == users
    # every row of a removed user is requested, and no other row
    assert {r.id for r in corruption.requests} == {row["id"] for row in rows if row["user"] in removed_users}
    assert all(r.task == "IR" and not r.edit for r in corruption.requests)


# --------------------------------------------------------------------------------------------- registry
def test_registry_and_spec(seq, binary):
    rows, num_items = seq
    assert set(CORRUPTIONS) == {
        ("IR", "sequential"), ("IR", "binary"), ("QM", "sequential"), ("RC", "sequential"), ("RC", "binary"),
    }
    assert make_corruption("QM", "sequential", rows, 0.1, 0, num_items) == corrupt_qm_sequential(
        rows, 0.1, 0, num_items
    )
    assert make_corruption("RC", "binary", binary, 0.1, 2) == corrupt_rc_binary(binary, 0.1, 2)
    assert CorruptionSpec(task="IR", fraction=0.1, seed=1).apply(binary, "binary") == remove_users(binary, 0.1, 1)
    with pytest.raises(ValueError, match="no corruption generator for task QM on binary"):
        make_corruption("QM", "binary", binary, 0.1)
    with pytest.raises(ValueError, match="num_items"):
        make_corruption("QM", "sequential", rows, 0.1)
    with pytest.raises(ValueError, match="unknown task"):
        CorruptionSpec(task="XX")
    with pytest.raises(ValueError, match="fraction"):
        CorruptionSpec(task="QM", fraction=0)
    with pytest.raises(ValueError, match="seed"):
        corrupt_rc_binary(binary, 0.1, -1)


def test_generators_refuse_wrong_kind(seq, binary):
    rows, num_items = seq
    with pytest.raises(ValueError, match="not a sequential row"):
        corrupt_qm_sequential(binary, 0.1, 0, num_items)
    with pytest.raises(ValueError, match="not a binary row"):
        corrupt_rc_binary(rows, 0.1, 0)
    with pytest.raises(ValueError, match="unique ids"):
        corrupt_rc_binary([binary[0], binary[0]], 0.5, 0)
