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

Every problem is reported at once, in one ``RequestError`` that lists each bad line with its reason (its
message shows the first :data:`MAX_SHOWN_PROBLEMS` and counts the rest; ``problems`` holds them all).

Limits (checked cheaply, before anything is tokenized): a request file may have at most
:data:`MAX_REQUEST_FILE_BYTES` (never more is read, so ``/dev/zero`` or an endless pipe is refused), a line may
nest JSON at most as deep as Python's recursion limit allows, an edited list at most :data:`MAX_EDIT_ITEMS`
items and an item name at most :data:`~lit_eraser.data.base.MAX_TITLE_CHARS` characters. With a model at hand,
``validate_requests(..., fits=...)`` also refuses an edit whose prompt the model would truncate to fit its
``max_length`` (z' would not be the requested edit); :func:`lit_eraser.models.prompts.edit_prompt_check` makes
that check for a built recommender.
"""

from __future__ import annotations

import json
import numbers
import os
import types
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from lit_eraser.data.base import MAX_TITLE_CHARS
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

MAX_REQUEST_FILE_BYTES = 64 * 2**20
"""Largest request file (bytes); about a million requests. Never more than this is read."""

MAX_EDIT_ITEMS = 1000
"""Most items an edited list (``history``, ``liked``, ``disliked``) may hold."""

MAX_SHOWN_PROBLEMS = 20
"""Problems a ``RequestError`` message lists; the rest are counted (all are in ``RequestError.problems``)."""

MAX_REASON_CHARS = 300
"""Longest reason shown for one problem in a ``RequestError`` message (longer ones are cut, marked with ...)."""

_BAD_ITEMS_SHOWN = 3

FitsCheck = Callable[[Mapping[str, Any]], "bool | str | None"]
"""``fits(z')``: whether the model encodes the edited row's prompt whole. ``True``/``None``: it does; ``False`` or a
reason (str): it would be truncated, so the request is refused; a ``ValueError`` it raises is a reason too."""

_TRUNCATED = (
    "the edited prompt does not fit the model's max_length: the model would truncate it, so z' would not be the "
    "requested edit; shorten the edit, or unlearn a model trained with a larger max_length"
)


class RequestFileError(ValueError):
    """The request file itself cannot be read as one: a directory, a device, too large."""

    hint = "--requests takes a JSONL file, one request per line (see lit_eraser/unlearning/requests.py)"


class RequestError(ValueError):
    """One or more bad unlearning requests; ``problems`` lists ``(line, reason)`` for every one of them.

    ``line`` is the 1-based line of the request file, or the 1-based position in the list for requests built
    in code.
    """

    hint = "fix the listed requests; every problem of the file is reported at once"

    def __init__(self, problems: Sequence[tuple[int, str]], source: str | None = None) -> None:
        self.problems = sorted(problems, key=lambda p: p[0])
        self.source = source
        where = f"{source}: " if source else ""
        label = "line" if source else "request"
        count = len(self.problems)
        shown = [
            f"  {label} {number}: {_clip(reason)}" if number > 0 else f"  {_clip(reason)}"
            for number, reason in self.problems[:MAX_SHOWN_PROBLEMS]
        ]
        if count > MAX_SHOWN_PROBLEMS:
            rest = count - MAX_SHOWN_PROBLEMS
            bad = len({number for number, _ in self.problems[MAX_SHOWN_PROBLEMS:]})
            shown.append(f"  ... and {rest:,} more problem{'s' if rest != 1 else ''} on {bad:,} more {label}s (not shown)")
        noun = "problem" if count == 1 else "problems"
        lines = "\n".join(shown)
        super().__init__(f"{where}{count:,} {noun} in the unlearning requests; nothing was done:\n{lines}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.problems, self.source))


def _clip(text: str, limit: int = MAX_REASON_CHARS) -> str:
    return text if len(text) <= limit else f"{text[: limit - 3]}..."


def _short(value: Any, limit: int = 60) -> str:
    """``repr(value)`` cut to ``limit`` characters (an edit value may be megabytes or nest deeply)."""
    try:
        text = repr(value)
    except RecursionError:
        text = f"<{type(value).__name__} nested too deeply>"
    return _clip(text, limit)


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
    obj = dict(pairs)
    if len(obj) != len(pairs):  # linear: an object of 100k keys must not take quadratic time
        duplicates = sorted(k for k, n in Counter(k for k, _ in pairs).items() if n > 1)
        shown = ", ".join(_short(k, 40) for k in duplicates[:5]) + (", ..." if len(duplicates) > 5 else "")
        raise ValueError(f"duplicate key(s) {shown} in one request")
    return obj


def _read_request_file(path: Path, max_bytes: int) -> bytes:
    """The bytes of a request file: never more than ``max_bytes + 1`` are read (devices, pipes)."""
    if path.is_dir():
        raise RequestFileError(f"{path} is a directory, not a request file")
    try:
        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            if size > max_bytes:
                raise RequestFileError(
                    f"{path}: the request file has {size:,} bytes, more than the {max_bytes:,} allowed"
                )
            data = fh.read(max_bytes + 1)
    except IsADirectoryError:
        raise RequestFileError(f"{path} is a directory, not a request file") from None
    if len(data) > max_bytes:
        raise RequestFileError(
            f"{path}: more than {max_bytes:,} bytes (the most a request file may have); is it a device or an "
            "endless stream?"
        )
    return data


def load_requests(path: str | os.PathLike[str], max_bytes: int | None = None) -> RequestList:
    """Parse a JSONL request file (parse only: run ``validate_requests`` before using the requests).

    Lines that are not a JSON object with a known ``task`` and an integer ``id`` become ``parse_errors`` of the
    returned list instead of requests; blank lines are skipped.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        RequestFileError: ``path`` is a directory, or holds more than ``max_bytes`` (default
            :data:`MAX_REQUEST_FILE_BYTES`; at most that many are read).
    """
    path = Path(path)
    data = _read_request_file(path, MAX_REQUEST_FILE_BYTES if max_bytes is None else int(max_bytes))
    requests: list[UnlearningRequest] = []
    problems: list[tuple[int, str]] = []
    for number, raw in enumerate(data.split(b"\n"), start=1):
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
        except RecursionError:
            problems.append((number, "malformed JSON: nested too deeply (a request is one flat object)"))
            continue
        except ValueError as err:  # duplicate keys, a number too long to convert
            problems.append((number, f"malformed JSON: {err}"))
            continue
        if not isinstance(obj, dict):
            problems.append((number, f"not a JSON object (got {type(obj).__name__})"))
            continue
        bad = []
        if "task" not in obj:
            bad.append("missing 'task'")
        elif obj["task"] not in TASKS:
            bad.append(f"unknown task {_short(obj['task'])} (expected {', '.join(TASKS)})")
        if "id" not in obj:
            bad.append("missing 'id'")
        elif not _is_int(obj["id"]):
            bad.append(f"'id' must be an integer, got {_short(obj['id'])}")
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
    *,
    fits: FitsCheck | None = None,
    max_bytes: int | None = None,
) -> RequestList:
    """``load_requests`` then ``validate_requests``: the requests of a file, or one error listing its problems."""
    requests = load_requests(path, max_bytes=max_bytes)
    validate_requests(requests, rows_by_id, kind, num_items, fits=fits)
    return requests


# --------------------------------------------------------------------------------------------------- validation
def _too_many(name: str, value: list[Any]) -> list[str]:
    if len(value) > MAX_EDIT_ITEMS:
        return [f"{name} has {len(value):,} items; an edited list may have at most {MAX_EDIT_ITEMS:,}"]
    return []


def _first_few(problems: list[str], name: str) -> list[str]:
    """The first few problems of one field and a count of the rest (a long bad list is one problem per item)."""
    if len(problems) <= _BAD_ITEMS_SHOWN:
        return problems
    rest = len(problems) - _BAD_ITEMS_SHOWN
    return problems[:_BAD_ITEMS_SHOWN] + [f"{name}: {rest} more bad item{'s' if rest != 1 else ''}"]


def _check_items(name: str, value: Any, num_items: int | None) -> list[str]:
    """Problems with a list of item ids (empty list: no problem here)."""
    if not isinstance(value, list):
        return [f"{name} must be a list of item ids, got {type(value).__name__}"]
    if _too_many(name, value):
        return _too_many(name, value)
    problems = []
    for item in value:
        if not _is_int(item):
            problems.append(f"{name} holds a non-integer item {_short(item)}")
        elif item < 0 or (num_items is not None and item >= num_items):
            problems.append(f"{name} item {item} is out of range [0, {num_items if num_items is not None else 'n'})")
    return _first_few(problems, name)


def _check_item(name: str, value: Any, num_items: int | None) -> list[str]:
    if not _is_int(value):
        return [f"{name} must be an integer item id, got {_short(value)}"]
    if value < 0 or (num_items is not None and value >= num_items):
        return [f"{name} {value} is out of range [0, {num_items if num_items is not None else 'n'})"]
    return []


def _check_names(name: str, value: Any) -> list[str]:
    if not isinstance(value, list):
        return [f"{name} must be a list of item names, got {type(value).__name__}"]
    if _too_many(name, value):
        return _too_many(name, value)
    problems = []
    for item in value:
        if not isinstance(item, str):
            problems.append(f"{name} holds a non-string item {_short(item)}")
        elif not item.strip():
            problems.append(f"{name} holds an empty item name")
        elif len(item) > MAX_TITLE_CHARS:
            problems.append(
                f"{name} holds an item name of {len(item):,} characters ({_short(item, 40)}); item names may have at "
                f"most {MAX_TITLE_CHARS:,}"
            )
    return _first_few(problems, name)


def _edited_row(row: Mapping[str, Any], edit: Mapping[str, Any]) -> dict[str, Any]:
    edited = _copy_row(row)
    for name, value in edit.items():
        edited[name] = list(value) if isinstance(value, list) else value
    return edited


def _fits_problem(fits: FitsCheck, edited: Mapping[str, Any]) -> str | None:
    """``None`` if the model encodes ``edited`` whole, else why not."""
    try:
        verdict = fits(edited)
    except ValueError as err:
        return f"the edited prompt cannot be encoded: {err}"
    if verdict is None or verdict is True:
        return None
    if verdict is False:
        return _TRUNCATED
    return str(verdict)


def _request_problems(
    request: UnlearningRequest,
    row: Mapping[str, Any] | None,
    kind: str,
    num_items: int | None,
    fits: FitsCheck | None = None,
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
        named = ", ".join(_short(k, 40) for k in extra[:5]) + (f" and {len(extra) - 5:,} more" if len(extra) > 5 else "")
        problems.append(f"field(s) {named} do not belong to a {kind} {request.task} request (it {takes})")
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
            field_problems.append(f'label must be 0, 1, "Yes." or "No.", got {_short(label)}')
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
        shown = ", ".join(f"{name}={_short(value)}" for name, value in edit.items())
        problems.append(f"no-op: the edit ({shown}) does not change row {request.id}")
    if fits is not None and not problems:
        reason = _fits_problem(fits, _edited_row(row, edit))
        if reason is not None:
            problems.append(reason)
    return problems


def _collect_problems(
    requests: Sequence[Any],
    rows_by_id: Mapping[int, Mapping[str, Any]],
    kind: str,
    num_items: int | None,
    fits: FitsCheck | None = None,
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
            problems.append((position, f"not an UnlearningRequest: {_short(request)}"))
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
        problems.extend((number, reason) for reason in _request_problems(request, row, kind, num_items, fits))
    return problems


def validate_requests(
    requests: Sequence[UnlearningRequest],
    rows_by_id: Mapping[int, Mapping[str, Any]],
    kind: RowKind,
    num_items: int | None = None,
    *,
    fits: FitsCheck | None = None,
) -> None:
    """Check every request against the training rows; raise one ``RequestError`` listing every problem.

    Args:
        requests: The requests, e.g. from ``load_requests`` (whose unparseable lines are reported here too).
        rows_by_id: Training rows by id (``RecDataModule.row_by_id()``).
        kind: The rows' kind, ``sequential`` or ``binary``.
        num_items: Catalogue size, to range-check item ids (sequential); ``None`` checks only ``>= 0``.
        fits: ``fits(z')`` says whether the model encodes an edited row's prompt whole (see :data:`FitsCheck`;
            :func:`lit_eraser.models.prompts.edit_prompt_check` builds one from a recommender). It is called
            once per QM/RC request that passed every other check; ``None`` skips this check.
    """
    problems = _collect_problems(requests, rows_by_id, kind, num_items, fits)
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
        pairs.append((original, _edited_row(original, request.edit)))
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
