"""Prompt templates: LLaRA-style next-item choice with embedding slots, TALLRec-style Yes/No.

A prompt and its response are tokenized separately and concatenated (``bos + prompt + response + eos``),
so a response always has the same token ids whatever the prompt, and a row and its edited twin differ only
where their text differs.
"""

from __future__ import annotations

from collections.abc import Sequence

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
