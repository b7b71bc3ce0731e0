"""Unlearning request files (JSONL) and their validation, exact (z, z') pairs and the edited training set.

One request per line, naming a training row by its stable ``id`` (docs/ARCHITECTURE.md §1)::

    {"task": "IR", "id": 12}                                         remove row 12
    {"task": "QM", "id": 12, "history": [3, 4, 5]}                   sequential: corrected history (item ids)
    {"task": "QM", "id": 12, "liked": ["A"], "disliked": ["B"]}      binary: corrected liked and/or disliked
    {"task": "RC", "id": 12, "target": 57}                           sequential: corrected next item
    {"task": "RC", "id": 12, "label": 0}                             binary: corrected answer

Rules (``validate_requests`` checks all of them, for the whole file, before any work is done):

- Blank lines are skipped; line numbers are 1-based physical lines of the file.
- Tasks may be mixed in one file, but a row ``id`` may appear only once.
- IR takes no edit fields. Sequential QM takes exactly ``history``; sequential RC exactly ``target``.
  Binary QM takes ``liked`` and/or ``disliked``; binary RC exactly ``label``.
- Item ids are integers in ``[0, num_items)``. A corrected history is non-empty and shares no item with the
  row's candidates (the target included), because the row contract forbids it and z and z' keep the same
  candidates. A corrected sequential target must be one of the row's candidates, so the pair stays exact.
- Binary ``label`` is ``0``/``1``, or the response text ``"Yes."``/``"No."``, which is normalised to ``1``/``0``
  when the request is built (files written by ``dump_requests`` always hold ``0``/``1``). JSON booleans are
  rejected. Binary item names are non-empty strings, and an edit may not leave both lists empty.
- An edit must change its row: a request whose edited fields all equal the row's current values is a no-op
  and is rejected.

Every problem is reported at once, in one ``RequestError`` that lists each bad line with its reason.
"""

from __future__ import annotations

import json
import numbers
import os
import types
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from lit_eraser.data.rows import BINARY_FIELDS, SEQUENTIAL_FIELDS, RowKind
from lit_eraser.io import atomic_write_text

Task = Literal["IR", "QM", "RC"]
TASKS: tuple[str, ...] = ("IR", "QM", "RC")
ROW_KINDS: tuple[str, ...] = ("sequential", "binary")

EDIT_FIELDS: dict[tuple[str, str], frozenset[str]] = {
    ("IR", "sequential"): frozenset(),
    ("IR", "binary"): frozenset(),
    ("QM", "sequential"): frozenset({"history"}),
    ("QM", "binary"): frozenset({"liked", "disliked"}),
    ("RC", "sequential"): frozenset({"target"}),
    ("RC", "binary"): frozenset({"label"}),
}
"""The edit fields each (task, row kind) accepts."""

LABEL_TEXT = {"Yes.": 1, "No.": 0}
"""Binary response texts accepted in place of a 0/1 label."""


class RequestError(ValueError):
    """One or more bad unlearning requests; ``problems`` lists ``(line, reason)`` for every one of them.

    ``line`` is the 1-based line of the request file, or the 1-based position in the list for requests built
    in code.
    """

    def __init__(self, problems: Sequence[tuple[int, str]], source: str | None = None) -> None:
        self.problems = sorted(problems, key=lambda p: p[0])
        self.source = source
        where = f"{source}: " if source else ""
        label = "line" if source else "request"
        count = len(self.problems)
        lines = "\n".join(
            f"  {label} {number}: {reason}" if number > 0 else f"  {reason}" for number, reason in self.problems
        )
        noun = "problem" if count == 1 else "problems"
        super().__init__(f"{where}{count} {noun} in the unlearning requests; nothing was done:\n{lines}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.problems, self.source))


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _normalise(value: Any) -> Any:
    """Copy lists (JSON arrays) and turn integer-like scalars (numpy ints) into ``int``; keep anything else."""
    if isinstance(value, (list, tuple)):
        return [int(v) if _is_int(v) else v for v in value]
    if _is_int(value):
        return int(value)
    return value


@dataclass(frozen=True)
class UnlearningRequest:
    """One instance-wise request: remove row ``id`` (IR) or replace some of its fields (QM, RC).

    Args:
        task: ``IR`` (instance removal), ``QM`` (query modification) or ``RC`` (response correction).
        id: The training row's stable id.
        edit: The corrected fields (empty for IR): ``history`` or ``target`` for sequential rows,
            ``liked``/``disliked`` or ``label`` for binary rows. Stored as a read-only copy.
        line: The request file's line this request came from (not part of equality), ``None`` if built in code.
    """

    task: str
    id: int
    edit: Mapping[str, Any] = field(default_factory=dict)
    line: int | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"unknown task {self.task!r}; expected one of {', '.join(TASKS)}")
        if not _is_int(self.id):
            raise TypeError(f"request id must be an integer, got {self.id!r}")
        if not isinstance(self.edit, Mapping):
            raise TypeError(f"request edit must be a mapping of field -> value, got {type(self.edit).__name__}")
        for key in ("task", "id"):
            if key in self.edit:
                raise ValueError(f"{key!r} is not an edit field")
        edit = {str(k): _normalise(v) for k, v in self.edit.items()}
        if self.task == "RC" and isinstance(edit.get("label"), str) and edit["label"] in LABEL_TEXT:
            edit["label"] = LABEL_TEXT[edit["label"]]
        object.__setattr__(self, "id", int(self.id))
        object.__setattr__(self, "edit", types.MappingProxyType(edit))

    def __repr__(self) -> str:
        return f"UnlearningRequest(task={self.task!r}, id={self.id!r}, edit={dict(self.edit)!r})"

    def __hash__(self) -> int:
        frozen = tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in self.edit.items()))
        return hash((self.task, self.id, frozen))

    def to_json(self) -> dict[str, Any]:
        """The JSON object of this request's line: ``{"task", "id", **edit}``."""
        return {"task": self.task, "id": self.id, **{k: _normalise(v) for k, v in self.edit.items()}}


class RequestList(list):
    """The requests read from one file, plus the lines that could not even be parsed into a request.

    ``validate_requests`` reports ``parse_errors`` together with every other problem, so a file's problems
    are all listed in one error. Requests built from a ``RequestList`` with parse errors are refused.
    """

    def __init__(
        self,
        requests: Iterable[UnlearningRequest] = (),
        source: str | None = None,
        parse_errors: Sequence[tuple[int, str]] = (),
    ) -> None:
        super().__init__(requests)
        self.source = source
        self.parse_errors: list[tuple[int, str]] = list(parse_errors)


# --------------------------------------------------------------------------------------------------- files
def _reject_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [k for k, _ in pairs]
    duplicates = sorted({k for k in keys if keys.count(k) > 1})
    if duplicates:
        raise ValueError(f"duplicate key(s) {', '.join(repr(k) for k in duplicates)} in one request")
    return dict(pairs)


def load_requests(path: str | os.PathLike[str]) -> RequestList:
    """Parse a JSONL request file (parse only: run ``validate_requests`` before using the requests).

    Lines that are not a JSON object with a known ``task`` and an integer ``id`` become ``parse_errors`` of the
    returned list instead of requests; blank lines are skipped.
    """
    path = Path(path)
    requests: list[UnlearningRequest] = []
    problems: list[tuple[int, str]] = []
    for number, raw in enumerate(path.read_bytes().split(b"\n"), start=1):
        try:
            text = raw.decode("utf-8-sig" if number == 1 else "utf-8").strip()
        except UnicodeDecodeError as err:
            problems.append((number, f"not valid UTF-8 ({err.reason} at byte {err.start})"))
            continue
        if not text:
            continue
        try:
            obj = json.loads(text, object_pairs_hook=_reject_duplicate_keys)
        except json.JSONDecodeError as err:
            problems.append((number, f"malformed JSON: {err.msg} at column {err.colno}"))
            continue
        except ValueError as err:  # duplicate keys
            problems.append((number, f"malformed JSON: {err}"))
            continue
        if not isinstance(obj, dict):
            problems.append((number, f"not a JSON object (got {type(obj).__name__})"))
            continue
        bad = []
        if "task" not in obj:
            bad.append("missing 'task'")
        elif obj["task"] not in TASKS:
            bad.append(f"unknown task {obj['task']!r} (expected {', '.join(TASKS)})")
        if "id" not in obj:
            bad.append("missing 'id'")
        elif not _is_int(obj["id"]):
            bad.append(f"'id' must be an integer, got {obj['id']!r}")
        if bad:
            problems.extend((number, reason) for reason in bad)
            continue
        edit = {k: v for k, v in obj.items() if k not in ("task", "id")}
        requests.append(UnlearningRequest(obj["task"], obj["id"], edit, line=number))
    return RequestList(requests, source=str(path), parse_errors=problems)


def dump_requests(requests: Iterable[UnlearningRequest], path: str | os.PathLike[str]) -> None:
    """Write requests as JSONL (one ``{"task", "id", **edit}`` object per line), atomically."""
    lines = [json.dumps(request.to_json()) for request in requests]
    atomic_write_text(path, "".join(line + "\n" for line in lines))


def read_requests(
    path: str | os.PathLike[str],
    rows_by_id: Mapping[int, Mapping[str, Any]],
    kind: RowKind,
    num_items: int | None = None,
) -> RequestList:
    """``load_requests`` then ``validate_requests``: the requests of a file, or one error listing its problems."""
    requests = load_requests(path)
    validate_requests(requests, rows_by_id, kind, num_items)
    return requests


# --------------------------------------------------------------------------------------------------- validation
def _check_items(name: str, value: Any, num_items: int | None) -> list[str]:
    """Problems with a list of item ids (empty list: no problem here)."""
    if not isinstance(value, list):
        return [f"{name} must be a list of item ids, got {type(value).__name__}"]
    problems = []
    for item in value:
        if not _is_int(item):
            problems.append(f"{name} holds a non-integer item {item!r}")
        elif item < 0 or (num_items is not None and item >= num_items):
            problems.append(f"{name} item {item} is out of range [0, {num_items if num_items is not None else 'n'})")
    return problems


def _check_item(name: str, value: Any, num_items: int | None) -> list[str]:
    if not _is_int(value):
        return [f"{name} must be an integer item id, got {value!r}"]
    if value < 0 or (num_items is not None and value >= num_items):
        return [f"{name} {value} is out of range [0, {num_items if num_items is not None else 'n'})"]
    return []


def _check_names(name: str, value: Any) -> list[str]:
    if not isinstance(value, list):
        return [f"{name} must be a list of item names, got {type(value).__name__}"]
    problems = []
    for item in value:
        if not isinstance(item, str):
            problems.append(f"{name} holds a non-string item {item!r}")
        elif not item.strip():
            problems.append(f"{name} holds an empty item name")
    return problems


def _request_problems(
    request: UnlearningRequest, row: Mapping[str, Any] | None, kind: str, num_items: int | None
) -> list[str]:
    """Everything wrong with one request (``row`` is None when its id is unknown)."""
    allowed = EDIT_FIELDS[(request.task, kind)]
    extra = sorted(set(request.edit) - allowed)
    problems = []
    if extra:
        if allowed:
            takes = f"takes only {', '.join(sorted(allowed))}"
        else:
            takes = "takes no edit fields"
        problems.append(
            f"field(s) {', '.join(repr(k) for k in extra)} do not belong to a {kind} {request.task} request "
            f"(it {takes})"
        )
    edit = {k: v for k, v in request.edit.items() if k in allowed}
    if request.task == "IR":
        return problems
    if not edit:
        needs = " and/or ".join(repr(k) for k in sorted(allowed))
        return problems + [f"a {kind} {request.task} request needs {needs}"]

    field_problems: list[str] = []
    if kind == "sequential" and request.task == "QM":
        field_problems += _check_items("history", edit["history"], num_items)
        if not field_problems and not edit["history"]:
            field_problems.append("history is empty")
    elif kind == "sequential":  # RC
        field_problems += _check_item("target", edit["target"], num_items)
    elif request.task == "QM":
        for name, value in edit.items():
            field_problems += _check_names(name, value)
    else:  # binary RC
        label = edit["label"]
        if not _is_int(label) or label not in (0, 1):
            field_problems.append(f'label must be 0, 1, "Yes." or "No.", got {label!r}')
    problems += field_problems
    if row is None or field_problems:
        return problems

    # Checks against the row itself.
    required = SEQUENTIAL_FIELDS if kind == "sequential" else BINARY_FIELDS
    missing = sorted(required - set(row))
    if missing:
        return problems + [f"row {request.id} is not a {kind} row (missing {', '.join(missing)})"]
    if kind == "sequential" and request.task == "QM":
        candidates = set(row["candidates"])
        clash = [item for item in edit["history"] if item in candidates]
        if clash:
            problems.append(
                f"history item(s) {', '.join(map(str, clash))} are among the row's candidates; a history may not "
                "hold a candidate or the target, and z and z' share their candidates"
            )
    elif kind == "sequential":
        if edit["target"] not in set(row["candidates"]):
            problems.append(
                f"target {edit['target']} is not among the row's {len(row['candidates'])} candidates "
                "(z and z' share their candidates)"
            )
    elif request.task == "QM":
        liked = edit.get("liked", row["liked"])
        disliked = edit.get("disliked", row["disliked"])
        if not liked and not disliked:
            problems.append("empty query: liked and disliked would both be empty")
    if all(list(value) == list(row[name]) if isinstance(value, list) else value == row[name]
           for name, value in edit.items()):
        shown = ", ".join(f"{name}={value!r}" for name, value in edit.items())
        problems.append(f"no-op: the edit ({shown}) does not change row {request.id}")
    return problems


def _collect_problems(
    requests: Sequence[Any], rows_by_id: Mapping[int, Mapping[str, Any]], kind: str, num_items: int | None
) -> list[tuple[int, str]]:
    if kind not in ROW_KINDS:
        raise ValueError(f"kind must be one of {', '.join(ROW_KINDS)}, got {kind!r}")
    if num_items is not None and (not _is_int(num_items) or num_items < 1):
        raise ValueError(f"num_items must be a positive integer, got {num_items!r}")
    problems: list[tuple[int, str]] = list(getattr(requests, "parse_errors", []))
    label = "line" if getattr(requests, "source", None) else "request"
    first_line: dict[int, int] = {}
    for position, request in enumerate(requests, start=1):
        if not isinstance(request, UnlearningRequest):
            problems.append((position, f"not an UnlearningRequest: {request!r}"))
            continue
        number = request.line if request.line is not None else position
        row = rows_by_id.get(request.id)
        if row is None:
            problems.append((number, f"unknown id {request.id} (no training row has it)"))
        if request.id in first_line:
            problems.append((number, f"duplicate id {request.id} (first at {label} {first_line[request.id]}); "
                                     "a row may be named only once per file"))
        else:
            first_line[request.id] = number
        problems.extend((number, reason) for reason in _request_problems(request, row, kind, num_items))
    return problems


def validate_requests(
    requests: Sequence[UnlearningRequest],
    rows_by_id: Mapping[int, Mapping[str, Any]],
    kind: RowKind,
    num_items: int | None = None,
) -> None:
    """Check every request against the training rows; raise one ``RequestError`` listing every problem.

    Args:
        requests: The requests, e.g. from ``load_requests`` (whose unparseable lines are reported here too).
        rows_by_id: Training rows by id (``RecDataModule.row_by_id()``).
        kind: The rows' kind, ``sequential`` or ``binary``.
        num_items: Catalogue size, to range-check item ids (sequential); ``None`` checks only ``>= 0``.
    """
    problems = _collect_problems(requests, rows_by_id, kind, num_items)
    if not problems and len(requests) == 0:
        problems.append((0, "no requests: the request list (or file) is empty"))
    if problems:
        raise RequestError(problems, source=getattr(requests, "source", None))


def infer_kind(row: Mapping[str, Any]) -> RowKind:
    """``sequential`` for rows with a history, ``binary`` for rows with a label."""
    if "history" in row:
        return "sequential"
    if "label" in row:
        return "binary"
    raise ValueError(f"cannot tell the kind of row {dict(row)!r}: it has neither 'history' nor 'label'")


def _copy_row(row: Mapping[str, Any]) -> dict[str, Any]:
    return {key: list(value) if isinstance(value, (list, tuple)) else value for key, value in row.items()}


def _checked(requests: Sequence[UnlearningRequest], rows_by_id: Mapping[int, Mapping[str, Any]]) -> None:
    if len(requests) == 0 and not getattr(requests, "parse_errors", None):
        return
    kind = infer_kind(next(iter(rows_by_id.values()))) if rows_by_id else "sequential"
    problems = _collect_problems(requests, rows_by_id, kind, None)
    if problems:
        raise RequestError(problems, source=getattr(requests, "source", None))


# --------------------------------------------------------------------------------------------------- use
def build_pairs(
    requests: Sequence[UnlearningRequest], rows_by_id: Mapping[int, Mapping[str, Any]]
) -> list[tuple[dict[str, Any], dict[str, Any] | None]]:
    """Exact pairs ``(z, z')`` in request order: ``z'`` is a copy of ``z`` with only the edited fields replaced
    (candidates, user and everything else identical); ``None`` for IR. Validates the requests first."""
    _checked(requests, rows_by_id)
    pairs: list[tuple[dict[str, Any], dict[str, Any] | None]] = []
    for request in requests:
        original = _copy_row(rows_by_id[request.id])
        if request.task == "IR":
            pairs.append((original, None))
            continue
        edited = _copy_row(original)
        for name, value in request.edit.items():
            edited[name] = list(value) if isinstance(value, list) else value
        pairs.append((original, edited))
    return pairs


def apply_requests(
    rows: Iterable[Mapping[str, Any]], requests: Sequence[UnlearningRequest]
) -> list[dict[str, Any]]:
    """The edited training set that retraining trains on: IR rows dropped, QM/RC rows replaced by their edited
    copies, order otherwise kept. ``rows`` is not modified. Validates the requests first."""
    rows = [_copy_row(row) for row in rows]
    rows_by_id: dict[int, dict[str, Any]] = {}
    for row in rows:
        if row["id"] in rows_by_id:
            raise ValueError(f"training rows must have unique ids; {row['id']} appears twice")
        rows_by_id[row["id"]] = row
    edits = {z["id"]: z_prime for z, z_prime in build_pairs(requests, rows_by_id)}
    result = []
    for row in rows:
        if row["id"] not in edits:
            result.append(row)
        elif edits[row["id"]] is not None:
            result.append(edits[row["id"]])
    return result


def summarize_task(requests: Iterable[UnlearningRequest]) -> Task | Literal["mixed"]:
    """The ``task`` of a request set for ``report.json``: its one task, or ``mixed``."""
    tasks = {request.task for request in requests}
    if not tasks:
        raise ValueError("no requests to summarize")
    return tasks.pop() if len(tasks) == 1 else "mixed"  # type: ignore[return-value]
