"""Unlearning requests (JSONL files, validation, exact z/z' pairs, the edited training set) and the seeded
corruption generators that set up the paper's experiments."""

from lit_eraser.unlearning.corruption import (
    CORRUPTIONS,
    Corruption,
    CorruptionSpec,
    affected_count,
    corrupt_qm_sequential,
    corrupt_rc_binary,
    corrupt_rc_sequential,
    make_corruption,
    remove_users,
)
from lit_eraser.unlearning.requests import (
    EDIT_FIELDS,
    TASKS,
    RequestError,
    RequestList,
    UnlearningRequest,
    apply_requests,
    build_pairs,
    dump_requests,
    infer_kind,
    load_requests,
    read_requests,
    summarize_task,
    validate_requests,
)

__all__ = [
    "CORRUPTIONS",
    "EDIT_FIELDS",
    "TASKS",
    "Corruption",
    "CorruptionSpec",
    "RequestError",
    "RequestList",
    "UnlearningRequest",
    "affected_count",
    "apply_requests",
    "build_pairs",
    "corrupt_qm_sequential",
    "corrupt_rc_binary",
    "corrupt_rc_sequential",
    "dump_requests",
    "infer_kind",
    "load_requests",
    "make_corruption",
    "read_requests",
    "remove_users",
    "summarize_task",
    "validate_requests",
]
