"""LLaRA-style next-item recommender (Liao et al., SIGIR 2024): items are written ``title [HistoryEmb]`` /
``title [CansEmb]`` and each slot's input embedding is the projected SASRec embedding of that item.

θ = LoRA + projector. The SASRec item encoder is frozen (trained once on the training rows, cached).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch

from lit_eraser.metrics import HitRatioAt1, ValidRatio
from lit_eraser.models.backbone import fork_seed, run_decoder
from lit_eraser.models.base import RecommenderModule
from lit_eraser.models.persistence import RunDirectoryError
from lit_eraser.models.projector import Projector
from lit_eraser.models.prompts import (
    DEFAULT_INTERACTION_VERB,
    clean_title,
    llara_prompt,
    llara_response,
    llara_template_texts,
)
from lit_eraser.models.sasrec import (
    SASRec,
    SasrecSettings,
    cached_sasrec,
    load_sasrec,
    save_sasrec,
)
from lit_eraser.models.tokenizer import CANDIDATE_SLOT, HISTORY_SLOT

Generation = Literal["off", "test", "val_and_test"]
DEFAULT_SASREC = SasrecSettings()
ITEM_ENCODER_FILE = "item_encoder.safetensors"
PROJECTOR_FILE = "projector.safetensors"


def parse_choice(text: str, candidate_titles: Sequence[str]) -> int:
    """Index of the one candidate a generated answer names, or -1 (none, or more than one).

    An answer equal to a candidate title (after trimming) names that candidate; otherwise it names every
    candidate whose title occurs in it, and is valid only if that is exactly one.
    """
    answer = " ".join(text.split())
    for index, title in enumerate(candidate_titles):
        if title and answer == title:
            return index
    named = [index for index, title in enumerate(candidate_titles) if title and title in answer]
    return named[0] if len(named) == 1 else -1


class LlaraRecommender(RecommenderModule):
    """LLaRA-style recommender: choose the next item among the candidates; θ = LoRA + MLP projector.

    Args:
        sasrec: Settings of the SASRec item encoder (trained on the training rows, cached on disk).
        projector_hidden: Hidden width of the projector MLP; ``None`` means the LLM's hidden size.
        max_history: Most recent history items written into the prompt.
        interaction_verb: Prompt wording ("This user has <verb> ..."); ``None`` takes the datamodule's
            ``interaction_verb`` attribute if it has one, else "interacted with".
        generation: Where greedy generation is evaluated (ValidRatio, HitRatio@1): ``off``, ``test`` or
            ``val_and_test``. Candidate-likelihood ranking (``hr1_rank``) is always evaluated.
        max_generation_rows: Generate for at most this many rows per evaluation epoch (``None``: all).
        **kwargs: :class:`~lit_eraser.models.base.RecommenderModule` arguments (backbone, lora, lr, ...).
    """

    kind: ClassVar[str] = "sequential"
    registry_name: ClassVar[str] = "llara"
    settings_types: ClassVar[dict[str, type]] = {**RecommenderModule.settings_types, "sasrec": SasrecSettings}

    def __init__(
        self,
        sasrec: SasrecSettings = DEFAULT_SASREC,
        projector_hidden: int | None = None,
        max_history: int = 10,
        interaction_verb: str | None = None,
        generation: Generation = "test",
        max_generation_rows: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.sasrec_settings = sasrec if isinstance(sasrec, SasrecSettings) else SasrecSettings(**(sasrec or {}))
        if max_history < 1:
            raise ValueError(f"max_history must be >= 1, got {max_history}")
        if generation not in ("off", "test", "val_and_test"):
            raise ValueError(f"generation must be off, test or val_and_test, got {generation!r}")
        if max_generation_rows is not None and max_generation_rows < 0:
            raise ValueError(f"max_generation_rows must be >= 0, got {max_generation_rows}")
        self.projector_hidden = projector_hidden
        self.max_history = max_history
        self.interaction_verb = interaction_verb
        self.generation = generation
        self.max_generation_rows = max_generation_rows
        self._record_init_args(
            sasrec=self.sasrec_settings,
            projector_hidden=projector_hidden,
            max_history=max_history,
            interaction_verb=interaction_verb,
            generation=generation,
            max_generation_rows=max_generation_rows,
        )
        self.item_encoder: SASRec | None = None
        self.projector: Projector | None = None
        self.item_titles: list[str] = []
        self.verb = interaction_verb or DEFAULT_INTERACTION_VERB
        self.n_candidates = 20
        self._title_ids: list[list[int]] = []
        self._generated_rows = {"val": 0, "test": 0}
        self.eval_metrics = torch.nn.ModuleDict(
            {
                f"{split}_{name}": metric()
                for split in ("val", "test")
                for name, metric in (
                    ("hr1_rank", HitRatioAt1),
                    ("valid_ratio", ValidRatio),
                    ("hr1_gen_valid", lambda: HitRatioAt1(denominator="valid")),
                    ("hr1_gen_total", HitRatioAt1),
                )
            }
        )

    # ----------------------------------------------------------------------------------------- building
    def template_texts(self) -> list[str]:
        return llara_template_texts(self.verb)

    def _corpus(self, datamodule: Any) -> list[str]:
        # Titles appear after a space in prompts and responses: train BPE on that form.
        return [llara_response(clean_title(text)) for text in datamodule.text_corpus()]

    def _prepare_data_state(self, datamodule: Any) -> None:
        titles = list(getattr(datamodule, "item_titles", []) or [])
        if not titles:
            raise ValueError(f"{type(datamodule).__name__} has no item_titles; LLaRA needs a title per item id")
        self.item_titles = [clean_title(t) for t in titles]
        self.verb = self.interaction_verb or getattr(datamodule, "interaction_verb", None) or DEFAULT_INTERACTION_VERB
        if len(datamodule.train_rows):
            self.n_candidates = len(datamodule.train_rows[0]["candidates"])

    def catalogue_fingerprint(self) -> str:
        return hashlib.sha256("\n".join(self.item_titles).encode("utf-8")).hexdigest()

    def pretraining_rows(self, rng: np.random.Generator, n: int) -> list[dict[str, Any]]:
        """Random histories and candidate lists (2 to ``n_candidates`` long) of catalogue items; the answer is a
        uniformly random candidate, so the base learns the format and to copy a title, never a preference."""
        rows = []
        n_items = len(self.item_titles)
        most = min(self.n_candidates, n_items - 1)
        for i in range(n):
            k = int(rng.integers(2, most + 1))
            h = int(rng.integers(1, min(self.max_history, n_items - k) + 1))
            items = rng.choice(n_items, size=k + h, replace=False).tolist()
            candidates = items[:k]
            rows.append(
                {"id": -1 - i, "user": -1, "history": items[k:], "candidates": candidates, "target": candidates[int(rng.integers(k))]}
            )
        return rows

    def _build_frozen_parts(self, datamodule: Any, reuse: Path | None) -> None:
        if reuse is not None:
            self.item_encoder = load_sasrec(reuse / "adapter" / ITEM_ENCODER_FILE)
            if self.item_encoder.num_items != len(self.item_titles):
                raise RunDirectoryError(
                    f"the item encoder in {reuse} covers {self.item_encoder.num_items} items, the data {len(self.item_titles)}"
                )
            return
        full_split = self.sasrec_settings.rows == "full_split"
        if full_split and not hasattr(datamodule, "item_encoder_rows"):
            raise ValueError(f"{type(datamodule).__name__} cannot give its full training split (sasrec.rows=full_split)")
        rows = datamodule.item_encoder_rows() if full_split else datamodule.train_rows
        self.item_encoder = cached_sasrec(
            rows, len(self.item_titles), self.sasrec_settings, self.seed, self.resolved_cache_dir(),
            log=self._log_info,
        )

    def _build_adapter_modules(self) -> None:
        hidden = self.base_model.get_input_embeddings().embedding_dim
        with fork_seed(self.seed + 2):
            self.projector = Projector(self.item_encoder.settings.hidden_size, hidden, self.projector_hidden)
        # Start the projected item embeddings at the scale of the LLM's token embeddings (a loaded run
        # overwrites these weights; this only shapes the initialisation).
        self.projector.calibrate(self.item_encoder.item_table, self.base_model.get_input_embeddings().weight)

    def extra_adapter_modules(self) -> tuple[str, ...]:
        return ("projector",)

    def _finish_build(self) -> None:
        super()._finish_build()
        # Only SASRec's embedding table is used (no dropout path); keep its mode in step with the module's
        # so Lightning does not warn about sub-modules left in eval mode.
        self.item_encoder.train(self.training)

    def _setup_encoding(self) -> None:
        self._history_slot = int(self.tokenizer.convert_tokens_to_ids(HISTORY_SLOT))
        self._candidate_slot = int(self.tokenizer.convert_tokens_to_ids(CANDIDATE_SLOT))
        self._title_ids = self._text_ids([llara_response(t) for t in self.item_titles])
        if any(not ids for ids in self._title_ids):
            empty = next(i for i, ids in enumerate(self._title_ids) if not ids)
            raise ValueError(f"item {empty} has an empty title")
        self._max_title_tokens = max(len(ids) for ids in self._title_ids)

    # ----------------------------------------------------------------------------------------- persistence
    def extra_state(self) -> dict[str, Any]:
        return {"item_titles": self.item_titles, "interaction_verb": self.verb, "n_candidates": self.n_candidates}

    def load_extra_state(self, state: Mapping[str, Any]) -> None:
        self.item_titles = list(state["item_titles"])
        self.verb = state.get("interaction_verb") or DEFAULT_INTERACTION_VERB
        self.n_candidates = int(state.get("n_candidates", 20))

    def save_adapter_extras(self, directory: Path) -> list[str]:
        from lit_eraser.models.persistence import write_safetensors

        write_safetensors(self.projector.state_dict(), directory / PROJECTOR_FILE)
        save_sasrec(self.item_encoder, directory / ITEM_ENCODER_FILE)
        return [PROJECTOR_FILE, ITEM_ENCODER_FILE]

    def _load_frozen_extras(self, adapter_dir: Path) -> None:
        self.item_encoder = load_sasrec(adapter_dir / ITEM_ENCODER_FILE)

    def load_adapter_extras(self, directory: Path) -> None:
        from lit_eraser.models.persistence import read_safetensors

        path = directory / PROJECTOR_FILE
        state = read_safetensors(path)
        try:
            self.projector.load_state_dict(state, strict=True)
        except RuntimeError as error:
            raise RunDirectoryError(f"{path} does not fit the projector: {error}") from None

    # ----------------------------------------------------------------------------------------- encoding
    def _prompts(self, rows: Sequence[Mapping[str, Any]]) -> tuple[list[list[int]], list[list[int]]]:
        """Token ids and slot item ids of each row's prompt (oldest history items dropped to fit)."""
        budget = self.max_length - len(self.bos_ids) - (self._max_title_tokens + 1)
        histories = [list(row["history"])[-self.max_history :] for row in rows]
        candidates = [list(row["candidates"]) for row in rows]
        for row in rows:
            if int(row["target"]) not in row["candidates"]:
                raise ValueError(f"row {row.get('id')}: the target {row['target']} is not among its candidates")
        ids: list[list[int] | None] = [None] * len(rows)
        pending = list(range(len(rows)))
        while pending:
            texts = [
                llara_prompt([self.item_titles[h] for h in histories[i]], [self.item_titles[c] for c in candidates[i]], self.verb)
                for i in pending
            ]
            still = []
            for i, tokens in zip(pending, self._text_ids(texts)):
                if len(tokens) <= budget:
                    ids[i] = tokens
                elif histories[i]:
                    histories[i] = histories[i][1:]
                    still.append(i)
                else:
                    raise ValueError(
                        f"row {rows[i].get('id')}: the candidate list alone needs {len(tokens)} tokens, more than "
                        f"max_length={self.max_length} allows; raise max_length"
                    )
            pending = still
        slots = []
        for i, tokens in enumerate(ids):
            history, cands = iter(histories[i]), iter(candidates[i])
            row_slots = []
            for token in tokens:
                if token == self._history_slot:
                    row_slots.append(int(next(history, -2)))
                elif token == self._candidate_slot:
                    row_slots.append(int(next(cands, -2)))
                else:
                    row_slots.append(-1)
            if -2 in row_slots or next(history, None) is not None or next(cands, None) is not None:
                raise ValueError(f"row {rows[i].get('id')}: slot tokens do not line up with its items")
            slots.append(row_slots)
        return ids, slots

    def response_ids(self, item: int) -> list[int]:
        """Token ids of the response naming ``item``: its title tokens and eos."""
        return self._title_ids[int(item)] + [self.eos_id]

    def encode(self, rows: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        """Rows -> ``input_ids``, ``attention_mask``, ``labels``, ``response_index``, ``slot_item_ids``."""
        self._require_tokenizer()
        prompts, slots = self._prompts(rows)
        responses = [self.response_ids(row["target"]) for row in rows]
        return self._collate(prompts, responses, slots)

    def encode_prompts(self, rows: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        """Prompt-only batch (``input_ids``, ``attention_mask``, ``slot_item_ids``, ``lengths``) for evaluation."""
        self._require_tokenizer()
        prompts, slots = self._prompts(rows)
        return self._collate_prompts(prompts, slots)

    # ----------------------------------------------------------------------------------------- model
    def input_embeddings(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Token embeddings, with ``projector(sasrec_item_embedding[item])`` at every slot position."""
        embeddings = self.base_model.get_input_embeddings()(batch["input_ids"])
        slots = batch["slot_item_ids"]
        projected = self.projector(self.item_encoder.item_table[slots.clamp(min=0)]).to(embeddings.dtype)
        return torch.where((slots >= 0).unsqueeze(-1), projected, embeddings)

    def _device_batch(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: v.to(self.device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}

    def _prefill(self, rows: Sequence[Mapping[str, Any]]) -> tuple[dict[str, torch.Tensor], torch.Tensor, Any]:
        prompts = self._device_batch(self.encode_prompts(rows))
        hidden, cache = run_decoder(
            self.decoder, inputs_embeds=self.input_embeddings(prompts), attention_mask=prompts["attention_mask"], use_cache=True
        )
        last = hidden[torch.arange(hidden.shape[0], device=hidden.device), prompts["lengths"] - 1]
        return prompts, last, cache

    @torch.no_grad()
    def candidate_scores(self, rows: Sequence[Mapping[str, Any]], chunk: int = 256) -> torch.Tensor:
        """``[B, C]`` log-likelihood of each candidate's full response (title + eos) given the prompt.

        The prompt is run once per row; its KV cache is repeated for the candidates, whose responses are
        then scored in one batched pass.
        """
        self._require_built()
        prompts, last, cache = self._prefill(rows)
        first = torch.log_softmax(self.lm_logits(last), dim=-1)  # [B, V]
        n_cands = len(rows[0]["candidates"])
        if any(len(row["candidates"]) != n_cands for row in rows):
            raise ValueError("every row in a batch must have the same number of candidates")
        responses = [self.response_ids(c) for row in rows for c in row["candidates"]]
        device = last.device
        first_tokens = torch.as_tensor([r[0] for r in responses], device=device).view(len(rows), n_cands)
        scores = first.gather(1, first_tokens)
        width = max(len(r) for r in responses) - 1
        if width == 0:
            return scores
        inputs = torch.full((len(responses), width), self.pad_id, dtype=torch.long)
        targets = torch.full((len(responses), width), -100, dtype=torch.long)
        mask = torch.zeros((len(responses), width), dtype=torch.long)
        for i, response in enumerate(responses):
            n = len(response) - 1
            inputs[i, :n] = torch.as_tensor(response[:-1])
            targets[i, :n] = torch.as_tensor(response[1:])
            mask[i, :n] = 1
        inputs, targets, mask = inputs.to(device), targets.to(device), mask.to(device)
        cache.batch_repeat_interleave(n_cands)
        lengths = prompts["lengths"].repeat_interleave(n_cands)
        full_mask = torch.cat([prompts["attention_mask"].repeat_interleave(n_cands, 0), mask], dim=1)
        positions = lengths.unsqueeze(1) + torch.arange(width, device=device)
        hidden, _ = run_decoder(
            self.decoder, input_ids=inputs, attention_mask=full_mask, position_ids=positions, cache=cache, use_cache=True
        )
        rest = torch.zeros(len(responses), device=device)
        for begin in range(0, len(responses), chunk):
            part = slice(begin, begin + chunk)
            logp = torch.log_softmax(self.lm_logits(hidden[part]), dim=-1)
            picked = logp.gather(2, targets[part].clamp(min=0).unsqueeze(-1)).squeeze(-1)
            rest[part] = (picked * (targets[part] != -100)).sum(1)
        return scores + rest.view(len(rows), n_cands)

    @torch.no_grad()
    def generate(self, rows: Sequence[Mapping[str, Any]], max_new_tokens: int | None = None) -> list[str]:
        """Greedy answers (text up to eos) for each row's prompt."""
        self._require_built()
        max_new_tokens = max_new_tokens or self._max_title_tokens + 2
        prompts, last, cache = self._prefill(rows)
        device = last.device
        mask = prompts["attention_mask"]
        positions = prompts["lengths"].clone()
        token = self.lm_logits(last).argmax(-1)
        outputs = [[] for _ in rows]
        done = torch.zeros(len(rows), dtype=torch.bool, device=device)
        for step in range(max_new_tokens):
            for i in (~done).nonzero().flatten().tolist():
                outputs[i].append(int(token[i]))
            done |= token == self.eos_id
            if bool(done.all()) or step == max_new_tokens - 1:
                break
            mask = torch.cat([mask, torch.ones((len(rows), 1), dtype=mask.dtype, device=device)], dim=1)
            hidden, cache = run_decoder(
                self.decoder, input_ids=token.unsqueeze(1), attention_mask=mask, position_ids=positions.unsqueeze(1),
                cache=cache, use_cache=True,
            )
            positions = positions + 1
            token = self.lm_logits(hidden[:, -1]).argmax(-1)
        texts = []
        for ids in outputs:
            if ids and ids[-1] == self.eos_id:
                ids = ids[:-1]
            texts.append(self.tokenizer.decode(ids, skip_special_tokens=True).strip())
        return texts

    # ----------------------------------------------------------------------------------------- evaluation
    def _evaluate(self, batch: Mapping[str, Any], split: str) -> None:
        rows = batch["rows"]
        size = len(rows)
        loss = self(batch).mean()
        self.log(f"{split}/loss", loss, batch_size=size, sync_dist=True)
        targets = torch.as_tensor([list(r["candidates"]).index(int(r["target"])) for r in rows], device=self.device)
        rank = self.eval_metrics[f"{split}_hr1_rank"]
        rank.update(self.candidate_scores(rows).argmax(1), targets)
        self.log(f"{split}/hr1_rank", rank, batch_size=size, prog_bar=split == "val")
        if self.generation == "off" or (split == "val" and self.generation != "val_and_test"):
            return
        budget = size if self.max_generation_rows is None else max(0, self.max_generation_rows - self._generated_rows[split])
        if budget == 0:
            return
        chosen = rows[:budget]
        self._generated_rows[split] += len(chosen)
        choices = torch.as_tensor(
            [parse_choice(text, [self.item_titles[c] for c in row["candidates"]]) for text, row in zip(self.generate(chosen), chosen)],
            device=self.device,
        )
        for name in ("valid_ratio", "hr1_gen_valid", "hr1_gen_total"):
            metric = self.eval_metrics[f"{split}_{name}"]
            if name == "valid_ratio":
                metric.update(choices)
            else:
                metric.update(choices, targets[: len(chosen)])
            self.log(f"{split}/{name}", metric, batch_size=len(chosen))

    def on_validation_epoch_start(self) -> None:
        self._generated_rows["val"] = 0

    def on_test_epoch_start(self) -> None:
        self._generated_rows["test"] = 0

    def validation_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def test_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        self._evaluate(batch, "test")
