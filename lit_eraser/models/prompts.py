"""Prompt templates: LLaRA-style next-item choice with embedding slots, TALLRec-style Yes/No.

A prompt and its response are tokenized separately and concatenated (``bos + prompt + response + eos``),
so a response always has the same token ids whatever the prompt, and a row and its edited twin differ only
where their text differs.

A prompt longer than the model's ``max_length`` allows loses its oldest items (history, liked/disliked) when it
is encoded. For training data that is the documented behaviour; for an *edited* row it would silently change
the requested edit, so :func:`prompt_truncation` / :func:`edit_prompt_check` tell whether a recommender encodes a
row's prompt whole, for ``lit_eraser.unlearning.requests.validate_requests(..., fits=...)``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from lit_eraser.models.tokenizer import (
    BOS_TOKEN,
    CANDIDATE_SLOT,
    EOS_TOKEN,
    HISTORY_SLOT,
    PAD_TOKEN,
)

DEFAULT_INTERACTION_VERB = "interacted with"
_RESERVED = (HISTORY_SLOT, CANDIDATE_SLOT, BOS_TOKEN, EOS_TOKEN, PAD_TOKEN)


def clean_title(title: str) -> str:
    """A title with any special-token text removed (it must never be read as a slot or eos)."""
    title = str(title)
    for token in _RESERVED:
        title = title.replace(token, "")
    return " ".join(title.split())


# ------------------------------------------------------------------------------------------ LLaRA
def llara_prompt(history: Sequence[str], candidates: Sequence[str], verb: str = DEFAULT_INTERACTION_VERB) -> str:
    """``This user has <verb> A [HistoryEmb], B [HistoryEmb]. Choose the next one from: X [CansEmb], ... Answer:``"""
    listed = ", ".join(f"{title} {HISTORY_SLOT}" for title in history)
    offered = ", ".join(f"{title} {CANDIDATE_SLOT}" for title in candidates)
    return f"This user has {verb} {listed}. Choose the next one from: {offered}. Answer:"


def llara_response(title: str) -> str:
    """The response text (eos is appended as a token): the title after one space, as in the prompt."""
    return f" {title}"


def llara_template_texts(verb: str = DEFAULT_INTERACTION_VERB) -> list[str]:
    return [f"This user has {verb} A, B. Choose the next one from: X, Y. Answer:"]


# ------------------------------------------------------------------------------------------ TALLRec
TALLREC_PREAMBLE = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request."
)
TALLREC_INSTRUCTION = (
    "Given the user's preference and unpreference, identify whether the user will like the target item "
    'by answering "Yes." or "No.".'
)


def _quoted(names: Sequence[str]) -> str:
    return ", ".join(f'"{name}"' for name in names) if names else "None"


def tallrec_prompt(liked: Sequence[str], disliked: Sequence[str], target: str) -> str:
    """TALLRec's alpaca-style instruction prompt, ending with ``### Response:`` and a newline."""
    return (
        f"{TALLREC_PREAMBLE}\n\n### Instruction:\n{TALLREC_INSTRUCTION}\n\n### Input:\n"
        f"User Preference: {_quoted(liked)}\n"
        f"User Unpreference: {_quoted(disliked)}\n"
        f'Whether the user will like the target item "{target}"?\n\n### Response:\n'
    )


def tallrec_response(label: int) -> str:
    """``Yes.`` for label 1, ``No.`` for label 0 (eos is appended as a token)."""
    if label not in (0, 1):
        raise ValueError(f"TALLRec labels must be 0 or 1, got {label!r}")
    return "Yes." if label == 1 else "No."


def tallrec_template_texts() -> list[str]:
    return [tallrec_prompt(["A"], ["B"], "C")]


# ------------------------------------------------------------------------------------------ truncation
def full_prompt_text(module: Any, row: Mapping[str, Any]) -> str:
    """The prompt text of ``row`` with nothing dropped (what ``module`` would encode with no length limit)."""
    if module.kind == "sequential":
        titles = module.item_titles
        return llara_prompt(
            [titles[int(h)] for h in row["history"]], [titles[int(c)] for c in row["candidates"]], module.verb
        )
    if module.kind == "binary":
        return tallrec_prompt(
            [clean_title(x) for x in row["liked"]], [clean_title(x) for x in row["disliked"]], clean_title(row["target"])
        )
    raise ValueError(f"no prompt template for {module.kind!r} rows")


def _encoded_prompt(module: Any, row: Mapping[str, Any]) -> list[int]:
    """The prompt token ids ``module.encode`` uses for ``row`` (after any dropping to fit ``max_length``)."""
    encoded = module._prompts([row])
    ids = encoded[0] if isinstance(encoded, tuple) else encoded
    return list(ids[0])


def prompt_truncation(module: Any, row: Mapping[str, Any]) -> str | None:
    """Why ``module`` would not encode ``row``'s prompt whole, or ``None`` if it would.

    ``module`` is a built LLaRA- or TALLRec-style recommender (its tokenizer set). The prompt is encoded whole
    iff the token ids ``module.encode`` uses equal the tokens of the full prompt text; otherwise items were
    dropped (LLaRA: history beyond ``max_history`` or over ``max_length``; TALLRec: the oldest liked/disliked
    items over ``max_length``). A prompt that cannot be encoded at all is a reason too.
    """
    module._require_tokenizer()
    try:
        full = module._text_ids([full_prompt_text(module, row)])[0]
        used = _encoded_prompt(module, row)
    except (ValueError, IndexError, KeyError) as err:
        return f"the edited prompt cannot be encoded: {err}"
    if used == full:
        return None
    limit = f"max_length={module.max_length} tokens"
    if module.kind == "sequential":
        slot = module.tokenizer.convert_tokens_to_ids(HISTORY_SLOT)
        kept = sum(1 for token in used if token == slot)
        n = len(row["history"])
        if n > module.max_history:
            limit = f"max_history={module.max_history} items"
        return (
            f"the edited prompt would keep only the last {kept} of its {n} history items ({limit}), so z' would not "
            "be the requested edit; shorten the history or use a model with a larger limit"
        )
    return (
        f"the edited prompt needs {len(full)} tokens, more than {limit} leaves for it: its oldest liked/disliked "
        "items would be dropped, so z' would not be the requested edit; shorten the names or lists, or use a "
        "model with a larger max_length"
    )


def edit_prompt_check(module: Any) -> Callable[[Mapping[str, Any]], str | None]:
    """The ``fits`` hook of :func:`lit_eraser.unlearning.requests.validate_requests` for a built recommender:
    ``check(z')`` is ``None`` when ``module`` encodes the edited row whole, else the reason it would not."""

    def check(row: Mapping[str, Any]) -> str | None:
        return prompt_truncation(module, row)

    return check
