"""Unlearning request files: parsing, whole-file validation, exact pairs, the edited training set."""

from __future__ import annotations

import copy
import json
import pickle
from pathlib import Path

import pytest

from lit_eraser.unlearning import (
    RequestError,
    UnlearningRequest,
    apply_requests,
    build_pairs,
    dump_requests,
    load_requests,
    read_requests,
    summarize_task,
    validate_requests,
)


def by_id(rows):
    return {row["id"]: row for row in rows}


def write(tmp_path: Path, *lines: str | dict) -> Path:
    path = tmp_path / "requests.jsonl"
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path


def wrong_candidate(row):
    return next(c for c in row["candidates"] if c != row["target"])


def outside_item(row, num_items):
    """An item in no part of the row: not history, not target, not a candidate."""
    taken = set(row["history"]) | set(row["candidates"]) | {row["target"]}
    return next(i for i in range(num_items) if i not in taken)


def errors_for(path, rows, kind, num_items=None):
    with pytest.raises(RequestError) as info:
        validate_requests(load_requests(path), by_id(rows), kind, num_items)
    return info.value


# --------------------------------------------------------------------------------------------- valid files
def test_valid_mixed_sequential_file(tmp_path, seq):
    rows, num_items = seq
    r0, r1, r2 = rows[0], rows[1], rows[2]
    new_history = r1["history"][:-1] + [outside_item(r1, num_items)]
    path = write(
        tmp_path,
        {"task": "IR", "id": r0["id"]},
        "",  # blank lines are skipped
        {"task": "QM", "id": r1["id"], "history": new_history},
        {"task": "RC", "id": r2["id"], "target": wrong_candidate(r2)},
    )
    requests = load_requests(path)
    assert [r.line for r in requests] == [1, 3, 4]
    validate_requests(requests, by_id(rows), "sequential", num_items)
    assert summarize_task(requests) == "mixed"
    assert read_requests(path, by_id(rows), "sequential", num_items) == requests


def test_valid_mixed_binary_file(tmp_path, binary):
    r0, r1, r2, r3 = binary[:4]
    path = write(
        tmp_path,
        {"task": "IR", "id": r0["id"]},
        {"task": "QM", "id": r1["id"], "liked": r1["liked"][1:]},
        {"task": "QM", "id": r2["id"], "liked": ["new thing"], "disliked": []},
        {"task": "RC", "id": r3["id"], "label": 1 - r3["label"]},
    )
    validate_requests(load_requests(path), by_id(binary), "binary")


@pytest.mark.parametrize("text, value", [("Yes.", 1), ("No.", 0), (1, 1), (0, 0)])
def test_binary_label_accepts_text_and_ints(tmp_path, binary, text, value):
    row = next(r for r in binary if r["label"] != value)
    path = write(tmp_path, {"task": "RC", "id": row["id"], "label": text})
    (request,) = load_requests(path)
    assert request.edit["label"] == value
    validate_requests([request], by_id(binary), "binary")
    assert UnlearningRequest("RC", row["id"], {"label": text}) == request


def test_summarize_task():
    assert summarize_task([UnlearningRequest("IR", 1), UnlearningRequest("IR", 2)]) == "IR"
    assert summarize_task([UnlearningRequest("RC", 1, {"label": 0})]) == "RC"
    assert summarize_task([UnlearningRequest("IR", 1), UnlearningRequest("RC", 2, {"label": 0})]) == "mixed"
    with pytest.raises(ValueError):
        summarize_task([])


# --------------------------------------------------------------------------------------------- whole-file errors
def test_one_error_lists_every_bad_line(tmp_path, seq):
    rows, num_items = seq
    r = rows[5]
    path = write(
        tmp_path,
        {"task": "IR", "id": rows[0]["id"]},  # 1 ok
        "{not json",  # 2 malformed
        {"task": "XX", "id": 3},  # 3 unknown task
        {"task": "IR", "id": 10**6},  # 4 unknown id
        {"task": "IR", "id": rows[0]["id"]},  # 5 duplicate id
        {"task": "RC", "id": r["id"], "target": r["target"]},  # 6 no-op
        "[1, 2]",  # 7 not an object
        {"task": "QM", "id": rows[6]["id"], "history": [num_items + 3]},  # 8 out of range
    )
    err = errors_for(path, rows, "sequential", num_items)
    lines = {line for line, _ in err.problems}
    assert lines == {2, 3, 4, 5, 6, 7, 8}
    message = str(err)
    for line in (2, 3, 4, 5, 6, 7, 8):
        assert f"line {line}:" in message
    assert "line 1:" not in message
    assert str(path) in message
    assert isinstance(err, ValueError)


def test_error_survives_pickling(tmp_path, seq):
    rows, _ = seq
    err = errors_for(write(tmp_path, {"task": "IR", "id": -5}), rows, "sequential")
    clone = pickle.loads(pickle.dumps(err))
    assert clone.problems == err.problems and str(clone) == str(err)


def test_empty_file_is_an_error(tmp_path, seq):
    rows, _ = seq
    err = errors_for(write(tmp_path, ""), rows, "sequential")
    assert "no requests" in str(err)


# --------------------------------------------------------------------------------------------- each reason
def seq_cases(rows, num_items):
    r = rows[7]
    fixed_history = r["history"][:-1] + [outside_item(r, num_items)]
    return {
        "malformed": ('{"task": "IR", "id": 1', "malformed JSON"),
        "duplicate key": ('{"task": "IR", "id": 1, "id": 2}', "duplicate key"),
        "not object": ('"IR"', "not a JSON object"),
        "missing task": ({"id": r["id"]}, "missing 'task'"),
        "unknown task": ({"task": "ZZ", "id": r["id"]}, "unknown task 'ZZ'"),
        "missing id": ({"task": "IR"}, "missing 'id'"),
        "string id": ({"task": "IR", "id": "7"}, "'id' must be an integer"),
        "float id": ({"task": "IR", "id": 7.0}, "'id' must be an integer"),
        "bool id": ({"task": "IR", "id": True}, "'id' must be an integer"),
        "unknown id": ({"task": "IR", "id": 999_999}, "unknown id 999999"),
        "IR with fields": ({"task": "IR", "id": r["id"], "target": r["target"]}, "takes no edit fields"),
        "QM wrong field": (
            {"task": "QM", "id": r["id"], "history": fixed_history, "target": r["target"]},
            "'target' do not belong to a sequential QM",
        ),
        "QM binary field": ({"task": "QM", "id": r["id"], "liked": ["x"]}, "'liked' do not belong"),
        "QM no fields": ({"task": "QM", "id": r["id"]}, "needs 'history'"),
        "RC wrong field": ({"task": "RC", "id": r["id"], "label": 0}, "'label' do not belong"),
        "RC no fields": ({"task": "RC", "id": r["id"]}, "needs 'target'"),
        "history not list": ({"task": "QM", "id": r["id"], "history": 5}, "history must be a list"),
        "history str items": ({"task": "QM", "id": r["id"], "history": ["5"]}, "non-integer item '5'"),
        "history bool items": ({"task": "QM", "id": r["id"], "history": [True]}, "non-integer item True"),
        "history out of range": ({"task": "QM", "id": r["id"], "history": [num_items]}, "out of range"),
        "history negative": ({"task": "QM", "id": r["id"], "history": [-1]}, "out of range"),
        "empty history": ({"task": "QM", "id": r["id"], "history": []}, "history is empty"),
        "history has candidate": (
            {"task": "QM", "id": r["id"], "history": r["history"][:-1] + [wrong_candidate(r)]},
            "among the row's candidates",
        ),
        "history has target": (
            {"task": "QM", "id": r["id"], "history": r["history"] + [r["target"]]},
            "among the row's candidates",
        ),
        "QM no-op": ({"task": "QM", "id": r["id"], "history": r["history"]}, "no-op"),
        "target not int": ({"task": "RC", "id": r["id"], "target": "57"}, "must be an integer item id"),
        "target out of range": ({"task": "RC", "id": r["id"], "target": num_items + 1}, "out of range"),
        "target not candidate": (
            {"task": "RC", "id": r["id"], "target": outside_item(r, num_items)},
            "not among the row's 20 candidates",
        ),
        "RC no-op": ({"task": "RC", "id": r["id"], "target": r["target"]}, "no-op"),
    }


SEQ_CASE_NAMES = [
    "malformed", "duplicate key", "not object", "missing task", "unknown task", "missing id", "string id",
    "float id", "bool id", "unknown id", "IR with fields", "QM wrong field", "QM binary field", "QM no fields",
    "RC wrong field", "RC no fields", "history not list", "history str items", "history bool items",
    "history out of range", "history negative", "empty history", "history has candidate", "history has target",
    "QM no-op", "target not int", "target out of range", "target not candidate", "RC no-op",
]


@pytest.mark.parametrize("case", SEQ_CASE_NAMES)
def test_sequential_rejection_reasons(tmp_path, seq, case):
    rows, num_items = seq
    line, reason = seq_cases(rows, num_items)[case]
    ok = {"task": "IR", "id": rows[0]["id"]}
    err = errors_for(write(tmp_path, ok, line), rows, "sequential", num_items)
    assert {number for number, _ in err.problems} == {2}, err.problems  # only the bad line
    assert any(reason in problem for _, problem in err.problems), err.problems


def test_sequential_case_names_are_complete(seq):
    rows, num_items = seq
    assert sorted(seq_cases(rows, num_items)) == sorted(SEQ_CASE_NAMES)


def test_duplicate_id_names_first_line(tmp_path, seq):
    rows, _ = seq
    r = rows[3]
    path = write(tmp_path, {"task": "IR", "id": r["id"]}, {"task": "RC", "id": r["id"], "target": wrong_candidate(r)})
    err = errors_for(path, rows, "sequential")
    assert err.problems == [(2, err.problems[0][1])]
    assert f"duplicate id {r['id']} (first at line 1)" in err.problems[0][1]


def binary_cases(rows):
    r = rows[4]
    return {
        "liked not list": ({"task": "QM", "id": r["id"], "liked": "abc"}, "liked must be a list of item names"),
        "liked int items": ({"task": "QM", "id": r["id"], "liked": [3]}, "non-string item 3"),
        "empty name": ({"task": "QM", "id": r["id"], "disliked": ["  "]}, "empty item name"),
        "empty query": ({"task": "QM", "id": r["id"], "liked": [], "disliked": []}, "empty query"),
        "QM no fields": ({"task": "QM", "id": r["id"]}, "needs 'disliked' and/or 'liked'"),
        "QM seq field": ({"task": "QM", "id": r["id"], "history": [1]}, "'history' do not belong to a binary QM"),
        "QM no-op": ({"task": "QM", "id": r["id"], "liked": r["liked"], "disliked": r["disliked"]}, "no-op"),
        "RC target field": ({"task": "RC", "id": r["id"], "target": "x"}, "'target' do not belong to a binary RC"),
        "label bool": ({"task": "RC", "id": r["id"], "label": False}, "label must be 0, 1"),
        "label 2": ({"task": "RC", "id": r["id"], "label": 2}, "label must be 0, 1"),
        "label text": ({"task": "RC", "id": r["id"], "label": "yes"}, "label must be 0, 1"),
        "RC no-op": ({"task": "RC", "id": r["id"], "label": r["label"]}, "no-op"),
        "RC no-op text": ({"task": "RC", "id": r["id"], "label": "Yes." if r["label"] else "No."}, "no-op"),
    }


@pytest.mark.parametrize(
    "case",
    [
        "liked not list", "liked int items", "empty name", "empty query", "QM no fields", "QM seq field",
        "QM no-op", "RC target field", "label bool", "label 2", "label text", "RC no-op", "RC no-op text",
    ],
)
def test_binary_rejection_reasons(tmp_path, binary, case):
    line, reason = binary_cases(binary)[case]
    err = errors_for(write(tmp_path, line), binary, "binary")
    assert {number for number, _ in err.problems} == {1}, err.problems  # only the bad line
    assert any(reason in problem for _, problem in err.problems), err.problems


def test_requests_built_in_code_are_numbered_by_position(seq):
    rows, _ = seq
    requests = [UnlearningRequest("IR", rows[0]["id"]), UnlearningRequest("IR", 10**7)]
    with pytest.raises(RequestError) as info:
        validate_requests(requests, by_id(rows), "sequential")
    assert info.value.problems[0][0] == 2
    assert "request 2: unknown id" in str(info.value)


def test_bad_kind_and_constructor_checks(seq):
    rows, _ = seq
    with pytest.raises(ValueError, match="kind"):
        validate_requests([UnlearningRequest("IR", rows[0]["id"])], by_id(rows), "tabular")
    with pytest.raises(ValueError, match="unknown task"):
        UnlearningRequest("XX", 1)
    with pytest.raises(TypeError):
        UnlearningRequest("IR", True)
    with pytest.raises(ValueError):
        UnlearningRequest("QM", 1, {"id": 2})


def test_request_is_frozen_and_hashable():
    request = UnlearningRequest("QM", 3, {"history": [1, 2]})
    with pytest.raises(AttributeError):
        request.task = "IR"  # type: ignore[misc]
    with pytest.raises(TypeError):
        request.edit["history"] = [4]  # type: ignore[index]
    assert hash(request) == hash(UnlearningRequest("QM", 3, {"history": [1, 2]}))
    assert len({request, UnlearningRequest("QM", 3, {"history": [1, 2]})}) == 1


def test_request_copies_its_edit():
    history = [1, 2]
    request = UnlearningRequest("QM", 3, {"history": history})
    history.append(9)
    assert request.edit["history"] == [1, 2]


# --------------------------------------------------------------------------------------------- pairs and edits
def test_build_pairs_are_exact(seq):
    rows, num_items = seq
    r0, r1, r2 = rows[10], rows[11], rows[12]
    new_history = r1["history"][:-1] + [outside_item(r1, num_items)]
    new_target = wrong_candidate(r2)
    requests = [
        UnlearningRequest("IR", r0["id"]),
        UnlearningRequest("QM", r1["id"], {"history": new_history}),
        UnlearningRequest("RC", r2["id"], {"target": new_target}),
    ]
    snapshot = copy.deepcopy(rows)
    pairs = build_pairs(requests, by_id(rows))
    assert rows == snapshot  # inputs untouched
    assert pairs[0] == (r0, None)
    (z1, z1p), (z2, z2p) = pairs[1], pairs[2]
    assert z1 == r1 and z2 == r2
    assert z1p == {**r1, "history": new_history}
    assert z2p == {**r2, "target": new_target}
    assert z1p["candidates"] == z1["candidates"] and z2p["candidates"] == z2["candidates"]
    assert z1p["history"] is not z1["history"] and z1p["candidates"] is not z1["candidates"]


def test_build_pairs_binary(binary):
    r = binary[20]
    (z, zp), = build_pairs([UnlearningRequest("RC", r["id"], {"label": "Yes." if r["label"] == 0 else "No."})],
                           by_id(binary))
    assert zp == {**r, "label": 1 - r["label"]} and z == r


def test_build_pairs_and_apply_validate(seq):
    rows, _ = seq
    with pytest.raises(RequestError, match="unknown id"):
        build_pairs([UnlearningRequest("IR", 10**9)], by_id(rows))
    with pytest.raises(RequestError, match="no-op"):
        apply_requests(rows, [UnlearningRequest("RC", rows[0]["id"], {"target": rows[0]["target"]})])


def test_build_pairs_refuses_a_file_with_parse_errors(tmp_path, seq):
    rows, _ = seq
    requests = load_requests(write(tmp_path, {"task": "IR", "id": rows[0]["id"]}, "oops"))
    assert len(requests) == 1 and requests.parse_errors
    with pytest.raises(RequestError, match="line 2: malformed JSON"):
        build_pairs(requests, by_id(rows))


def test_apply_requests(seq):
    rows, num_items = seq
    r0, r1, r2 = rows[0], rows[1], rows[2]
    new_history = r1["history"][:-1] + [outside_item(r1, num_items)]
    requests = [
        UnlearningRequest("RC", r2["id"], {"target": wrong_candidate(r2)}),
        UnlearningRequest("IR", r0["id"]),
        UnlearningRequest("QM", r1["id"], {"history": new_history}),
    ]
    snapshot = copy.deepcopy(rows)
    edited = apply_requests(rows, requests)
    assert rows == snapshot
    assert len(edited) == len(rows) - 1
    assert [row["id"] for row in edited] == [row["id"] for row in rows[1:]]
    assert edited[0] == {**r1, "history": new_history}
    assert edited[1] == {**r2, "target": wrong_candidate(r2)}
    assert edited[2:] == rows[3:]
    assert apply_requests(rows, []) == rows


def test_apply_requests_rejects_duplicate_row_ids(seq):
    rows, _ = seq
    with pytest.raises(ValueError, match="unique ids"):
        apply_requests([rows[0], rows[0]], [UnlearningRequest("IR", rows[0]["id"])])


# --------------------------------------------------------------------------------------------- round trip
def test_dump_load_round_trip(tmp_path, seq, binary):
    rows, num_items = seq
    r1 = rows[1]
    requests = [
        UnlearningRequest("IR", rows[0]["id"]),
        UnlearningRequest("QM", r1["id"], {"history": r1["history"][:-1] + [outside_item(r1, num_items)]}),
        UnlearningRequest("RC", rows[2]["id"], {"target": wrong_candidate(rows[2])}),
    ]
    path = tmp_path / "sub" / "requests.jsonl"
    dump_requests(requests, path)
    assert load_requests(path) == requests
    assert [p.name for p in path.parent.iterdir()] == ["requests.jsonl"]  # no temporary files left
    first = json.loads(path.read_text().splitlines()[0])
    assert first == {"task": "IR", "id": rows[0]["id"]}

    brequests = [
        UnlearningRequest("RC", binary[0]["id"], {"label": "Yes." if binary[0]["label"] == 0 else "No."}),
        UnlearningRequest("QM", binary[1]["id"], {"liked": ["a"], "disliked": ["b"]}),
    ]
    dump_requests(brequests, path)
    loaded = load_requests(path)
    assert loaded == brequests
    assert json.loads(path.read_text().splitlines()[0])["label"] in (0, 1)
    validate_requests(loaded, by_id(binary), "binary")
