"""Optional short *base pretraining* of the tiny LLaMA preset, cached on disk: a stand-in for a pretrained LLM.

Why: a real LLaRA/TALLRec backbone (LLaMA2-7B) already knows the catalogue's names and how to copy a name
from a list; LoRA then only has to learn *which* candidate the user wants. A random-init frozen base knows
neither, and a rank-8 LoRA cannot build a full-rank "copy" circuit on top of random weights.

What: before LoRA is attached, every weight of the tiny base is trained for ``steps`` optimiser steps on
prompts in the recommender's own template filled with **random** catalogue items (random histories, random
candidate lists of 2..20 items, a uniformly random candidate as the answer; slot positions get fresh random
vectors; TALLRec: random liked/disliked names and a target repeated from one of them, answered Yes if it
was liked). The prompts carry no user interaction data, so the base holds nothing that unlearning would
have to remove. The result is cached (keyed by sizes, tokenizer, catalogue, template, settings and seed)
and saved with every run under ``base_model/``, so reloading never re-runs it.

Measured (LastFM, hidden 128, 2 layers, 1 CPU thread, ~0.4 s/step): 1,500 steps (~10 min) teach the titles
(the tokens after a title's first one are then predicted with ~0.05 nats) but not yet to pick the *first*
token from the candidate list (~10% of the probability mass on the candidates' first tokens); it is off by
default (``steps=0``). With SASRec on the full split, ``configs/lastfm_train.yaml --model.init_args.pretrain.steps
2000 --trainer.max_epochs 2`` gave test loss 2.04 (6.89 without pretraining) but test ``hr1_rank`` only 0.082
(10 of 122; chance 0.05), in 947 s of fit (722 s of it pretraining); ``pretrain.loss response`` gave 0.057.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lit_eraser.models.backbone import (
    fork_seed,
    load_tiny_base,
    run_decoder,
    save_tiny_base,
)

SampleBatch = Callable[[np.random.Generator, int], Mapping[str, torch.Tensor]]


@dataclass(frozen=True)
class BasePretrainSettings:
    """Short cached pretraining of the tiny base on random catalogue prompts (no user data); tiny preset only.

    Args:
        steps: Optimiser steps; 0 turns it off (the base stays a seeded random init).
        batch_size: Prompts per step.
        lr: AdamW learning rate (cosine decay after warm-up).
        warmup_steps: Linear warm-up steps.
        loss: ``all`` (language-model loss on every token) or ``response`` (answer tokens only).
    """

    steps: int = 0
    batch_size: int = 16
    lr: float = 2e-3
    warmup_steps: int = 50
    loss: Literal["all", "response"] = "all"

    def __post_init__(self) -> None:
        if self.steps < 0 or self.batch_size < 1 or self.lr <= 0 or self.warmup_steps < 0:
            raise ValueError(f"invalid base pretraining settings: {self}")
        if self.loss not in ("all", "response"):
            raise ValueError(f"loss must be 'all' or 'response', got {self.loss!r}")


def _loss(base: nn.Module, batch: Mapping[str, torch.Tensor], kind: str) -> torch.Tensor:
    embedding = base.get_input_embeddings()
    inputs = embedding(batch["input_ids"])
    slots = batch.get("slot_item_ids")
    if slots is not None:
        # Slot positions will carry projected item embeddings the base has never seen: during pretraining they
        # carry fresh random vectors of the token-embedding scale, so the base learns to read the prompt's
        # structure from the text around them and never to depend on a slot token's own embedding.
        noise = torch.randn_like(inputs) * embedding.weight.detach().std()
        inputs = torch.where((slots >= 0).unsqueeze(-1), noise, inputs)
    hidden, _ = run_decoder(base.get_decoder(), inputs_embeds=inputs, attention_mask=batch["attention_mask"])
    head = base.get_output_embeddings()
    if kind == "all":
        targets = batch["input_ids"][:, 1:].masked_fill(batch["attention_mask"][:, 1:] == 0, -100)
    else:
        targets = batch["labels"][:, 1:]
    keep = targets != -100
    logits = head(hidden[:, :-1][keep]).float()
    return F.cross_entropy(logits, targets[keep])


def pretrain_base(base: nn.Module, sample_batch: SampleBatch, settings: BasePretrainSettings, seed: int, log: Any = None) -> nn.Module:
    """Train every weight of ``base`` in place on ``sample_batch`` prompts; returns it frozen, in eval mode."""
    for parameter in base.parameters():
        parameter.requires_grad_(True)
    optimizer = torch.optim.AdamW(base.parameters(), lr=settings.lr, weight_decay=0.0)
    warmup, total = settings.warmup_steps, settings.steps

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    rng = np.random.default_rng([int(seed), 0xBA5E])
    base.train()
    start, running = time.perf_counter(), None
    with fork_seed(seed + 3):
        for step in range(total):
            loss = _loss(base, sample_batch(rng, settings.batch_size), settings.loss)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(base.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            running = float(loss.detach()) if running is None else 0.98 * running + 0.02 * float(loss.detach())
            if log is not None and (step + 1) % 100 == 0:
                log(f"base pretraining step {step + 1}/{total}: loss {running:.3f} ({time.perf_counter() - start:.0f}s)")
    base.eval()
    for parameter in base.parameters():
        parameter.requires_grad_(False)
    return base


def pretrain_cache_key(payload: Mapping[str, Any], settings: BasePretrainSettings, seed: int) -> str:
    blob = json.dumps({"v": 2, "payload": payload, "settings": asdict(settings), "seed": seed}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def cached_pretrained_base(
    base: nn.Module,
    sample_batch: SampleBatch,
    settings: BasePretrainSettings,
    seed: int,
    cache_dir: str | os.PathLike[str] | None,
    key_payload: Mapping[str, Any],
    log: Any = None,
) -> nn.Module:
    """:func:`pretrain_base`, memoised as ``<cache_dir>/<key>/`` (``config.json`` + ``model.safetensors``)."""
    if settings.steps == 0:
        return base
    if cache_dir is None:
        return pretrain_base(base, sample_batch, settings, seed, log)
    target = Path(cache_dir) / pretrain_cache_key(key_payload, settings, seed)
    if (target / "model.safetensors").is_file():
        try:
            return load_tiny_base(target)
        except Exception:  # noqa: BLE001 - a damaged cache entry is rebuilt, never trusted
            shutil.rmtree(target, ignore_errors=True)
    pretrain_base(base, sample_batch, settings, seed, log)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        save_tiny_base(base, tmp)
        try:
            os.replace(tmp, target)
        except OSError:  # another process finished first; its copy is identical
            pass
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return load_tiny_base(target)
