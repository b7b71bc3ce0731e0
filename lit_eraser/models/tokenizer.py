"""An in-process byte-level BPE tokenizer, trained on the dataset's own text and saved with the run.

Byte-level BPE means no string is ever unknown. The slot tokens ``[HistoryEmb]``/``[CansEmb]`` are special
tokens (they absorb the space before them), and ``Yes``/``No`` are guaranteed single tokens so TALLRec's
AUC can read P(Yes) vs P(No) from one logit each.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

PAD_TOKEN = "<pad>"
BOS_TOKEN = "<s>"
EOS_TOKEN = "</s>"
HISTORY_SLOT = "[HistoryEmb]"
CANDIDATE_SLOT = "[CansEmb]"
SLOT_TOKENS = (HISTORY_SLOT, CANDIDATE_SLOT)
#: Words that must each be one token (TALLRec reads their logits at the first response position).
SINGLE_TOKEN_WORDS = ("Yes", "No")
#: How often each required word is repeated in the training corpus so BPE merges it into one token.
_REPEAT = 1000
_TEMPLATE_REPEAT = 100


class TokenizerError(ValueError):
    """A tokenizer that cannot serve the recommender (missing tokens, mismatch with an adapter)."""


def train_tokenizer(corpus: Iterable[str], vocab_size: int = 4096, extra_texts: Sequence[str] = ()):
    """Train a byte-level BPE tokenizer on ``corpus`` + ``extra_texts`` and wrap it for transformers.

    Args:
        corpus: The dataset's strings (titles, item names).
        vocab_size: Target BPE vocabulary size (the special tokens come on top).
        extra_texts: Prompt-template text, so template words become whole tokens.
    """
    from tokenizers import (
        AddedToken,
        Tokenizer,
        decoders,
        models,
        pre_tokenizers,
        trainers,
    )
    from transformers import PreTrainedTokenizerFast

    if vocab_size < 320:
        raise ValueError(f"vocab_size must be >= 320 (256 bytes + merges), got {vocab_size}")
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=1,
        special_tokens=[PAD_TOKEN, BOS_TOKEN, EOS_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )

    def texts() -> Iterable[str]:
        for text in corpus:
            if text:
                yield str(text)
        for _ in range(_TEMPLATE_REPEAT):  # template words become whole tokens
            yield from extra_texts
        for word in SINGLE_TOKEN_WORDS:
            for _ in range(_REPEAT):
                yield f"{word}."
                yield f" {word}"

    tokenizer.train_from_iterator(texts(), trainer)
    tokenizer.add_special_tokens([AddedToken(slot, lstrip=True, special=True) for slot in SLOT_TOKENS])
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        pad_token=PAD_TOKEN,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        additional_special_tokens=list(SLOT_TOKENS),
    )
    check_tokenizer(wrapped)
    return wrapped


def check_tokenizer(tokenizer: Any, require_single_words: bool = True) -> None:
    """Raise :class:`TokenizerError` unless pad/bos/eos, the slot tokens and (optionally) Yes/No are single tokens."""
    for name in ("pad_token_id", "bos_token_id", "eos_token_id"):
        if getattr(tokenizer, name, None) is None:
            raise TokenizerError(f"the tokenizer has no {name.removesuffix('_id')} token")
    vocab = tokenizer.get_vocab()
    for slot in SLOT_TOKENS:
        if slot not in vocab:
            raise TokenizerError(f"the tokenizer lacks the slot token {slot!r}")
    if require_single_words:
        for word in SINGLE_TOKEN_WORDS:
            ids = tokenizer(word, add_special_tokens=False)["input_ids"]
            if len(ids) != 1:
                raise TokenizerError(f"{word!r} must be a single token for TALLRec; it encodes as {ids}")


def single_token_id(tokenizer: Any, text: str) -> int:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) != 1:
        raise TokenizerError(f"{text!r} is not a single token (ids {ids})")
    return int(ids[0])


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """sha256 over what decides token ids: vocabulary, merges and added tokens (not formatting details)."""
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    model = spec.get("model", {})
    merges = [m.split(" ", 1) if isinstance(m, str) else list(m) for m in model.get("merges", [])]
    payload = {
        "type": model.get("type"),
        "vocab": sorted((model.get("vocab") or {}).items()),
        "merges": merges,
        "added": sorted((t["id"], t["content"], bool(t.get("special"))) for t in spec.get("added_tokens", [])),
    }
    return hashlib.sha256(json.dumps(payload, ensure_ascii=False).encode("utf-8")).hexdigest()


def load_tokenizer(directory: str | os.PathLike[str]):
    """Load a tokenizer saved with ``save_pretrained`` (``tokenizer.json``)."""
    from transformers import PreTrainedTokenizerFast

    directory = Path(directory)
    if not (directory / "tokenizer.json").is_file():
        raise TokenizerError(f"{directory / 'tokenizer.json'} is missing")
    try:
        return PreTrainedTokenizerFast.from_pretrained(str(directory))
    except Exception as error:
        raise TokenizerError(f"{directory / 'tokenizer.json'} cannot be read: {error}") from error


def cached_tokenizer(
    corpus: Iterable[str], vocab_size: int, extra_texts: Sequence[str], cache_dir: str | os.PathLike[str] | None
):
    """:func:`train_tokenizer`, memoised on disk by a hash of its inputs (so DDP ranks share one tokenizer)."""
    texts = list(corpus)
    digest = hashlib.sha256()
    digest.update(json.dumps({"v": 1, "vocab_size": vocab_size, "extra": list(extra_texts)}).encode())
    for text in texts:
        digest.update(str(text).encode("utf-8", "surrogatepass"))
        digest.update(b"\0")
    key = digest.hexdigest()[:24]
    if cache_dir is None:
        return train_tokenizer(texts, vocab_size, extra_texts)
    target = Path(cache_dir) / "tokenizers" / key
    if (target / "tokenizer.json").is_file():
        try:
            tokenizer = load_tokenizer(target)
            check_tokenizer(tokenizer)
            return tokenizer
        except TokenizerError:
            shutil.rmtree(target, ignore_errors=True)
    tokenizer = train_tokenizer(texts, vocab_size, extra_texts)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{key}.tmp-", dir=target.parent))
    try:
        tokenizer.save_pretrained(str(tmp))
        try:
            os.replace(tmp, target)
        except OSError:  # another process won the race; its copy is identical
            pass
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    # Always return the cached copy, so concurrent builders all end up with the same tokenizer.
    return load_tokenizer(target)
