"""TALLRec-style Yes/No recommender (Bao et al., RecSys 2023): an alpaca-style instruction prompt, the response
``Yes.`` or ``No.``; AUC from the softmax over the Yes/No logits at the first response token. θ = LoRA.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
import torch
from torchmetrics.classification import BinaryAccuracy, BinaryAUROC

from lit_eraser.models.base import RecommenderModule
from lit_eraser.models.prompts import (
    clean_title,
    tallrec_prompt,
    tallrec_response,
    tallrec_template_texts,
)
from lit_eraser.models.tokenizer import TokenizerError


class TallrecRecommender(RecommenderModule):
    """TALLRec-style recommender: will the user like the target item? ``Yes.`` / ``No.``; θ = LoRA.

    Args:
        **kwargs: :class:`~lit_eraser.models.base.RecommenderModule` arguments (backbone, lora, lr, ...).
    """

    kind: ClassVar[str] = "binary"
    registry_name: ClassVar[str] = "tallrec"

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._record_init_args()
        self.item_names: list[str] = []
        self.eval_metrics = torch.nn.ModuleDict(
            {f"{split}_{name}": metric() for split in ("val", "test") for name, metric in (("auc", BinaryAUROC), ("accuracy", BinaryAccuracy))}
        )

    def template_texts(self) -> list[str]:
        return tallrec_template_texts()

    def _prepare_data_state(self, datamodule: Any) -> None:
        self.item_names = list(dict.fromkeys(clean_title(name) for name in datamodule.text_corpus()))

    def catalogue_fingerprint(self) -> str:
        return hashlib.sha256("\n".join(self.item_names).encode("utf-8")).hexdigest()

    def pretraining_rows(self, rng: np.random.Generator, n: int) -> list[dict[str, Any]]:
        """Random liked/disliked names; the target repeats one of them and the answer says which list it came
        from (Yes = liked): the format and a look-up, never a user's preference."""
        names, rows = self.item_names, []
        if len(names) < 3:
            raise ValueError("base pretraining needs at least 3 distinct item names")
        for i in range(n):
            size = int(rng.integers(2, min(10, len(names)) + 1))
            picked = [names[j] for j in rng.choice(len(names), size=size, replace=False)]
            split = int(rng.integers(1, size))
            liked, disliked = picked[:split], picked[split:]
            label = int(rng.integers(2))
            pool = liked if label else disliked
            rows.append({"id": -1 - i, "user": -1, "liked": liked, "disliked": disliked, "target": pool[int(rng.integers(len(pool)))], "label": label})
        return rows

    def _setup_encoding(self) -> None:
        self._responses = {label: self._text_ids([tallrec_response(label)])[0] + [self.eos_id] for label in (0, 1)}
        self.yes_id, self.no_id = self._responses[1][0], self._responses[0][0]
        if self.yes_id == self.no_id:
            raise TokenizerError("'Yes.' and 'No.' start with the same token; TALLRec needs distinct first tokens")

    # ----------------------------------------------------------------------------------------- encoding
    def _prompts(self, rows: Sequence[Mapping[str, Any]]) -> list[list[int]]:
        budget = self.max_length - len(self.bos_ids) - max(len(r) for r in self._responses.values())
        liked = [[clean_title(x) for x in row["liked"]] for row in rows]
        disliked = [[clean_title(x) for x in row["disliked"]] for row in rows]
        ids: list[list[int] | None] = [None] * len(rows)
        pending = list(range(len(rows)))
        while pending:
            texts = [tallrec_prompt(liked[i], disliked[i], clean_title(rows[i]["target"])) for i in pending]
            still = []
            for i, tokens in zip(pending, self._text_ids(texts)):
                if len(tokens) <= budget:
                    ids[i] = tokens
                elif liked[i] or disliked[i]:  # drop the oldest item of the longer list
                    if len(liked[i]) >= len(disliked[i]):
                        liked[i] = liked[i][1:]
                    else:
                        disliked[i] = disliked[i][1:]
                    still.append(i)
                else:
                    raise ValueError(f"row {rows[i].get('id')}: the prompt needs {len(tokens)} tokens; raise max_length")
            pending = still
        return ids

    def encode(self, rows: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        """Rows -> ``input_ids``, ``attention_mask``, ``labels`` (on ``Yes.``/``No.`` + eos), ``response_index``."""
        self._require_tokenizer()
        responses = []
        for row in rows:
            label = int(row["label"])
            if label not in (0, 1):
                raise ValueError(f"row {row.get('id')}: label must be 0 or 1, got {row['label']!r}")
            responses.append(self._responses[label])
        return self._collate(self._prompts(rows), responses)

    # ----------------------------------------------------------------------------------------- scoring
    def yes_probability_from_hidden(self, hidden: torch.Tensor, first_positions: torch.Tensor) -> torch.Tensor:
        """P(Yes) = softmax([logit_Yes, logit_No])[0] at the positions predicting the first response token."""
        last = hidden[torch.arange(hidden.shape[0], device=hidden.device), first_positions]
        logits = self.lm_logits(last)[:, [self.yes_id, self.no_id]]
        return torch.softmax(logits, dim=-1)[:, 0]

    @torch.no_grad()
    def yes_probability(self, rows: Sequence[Mapping[str, Any]]) -> torch.Tensor:
        """``[B]`` P(Yes) for each row (the label is not used)."""
        self._require_built()
        batch = self._collate_prompts(self._prompts(rows))
        batch = {k: v.to(self.device) for k, v in batch.items()}
        hidden = self.hidden_states(batch)
        return self.yes_probability_from_hidden(hidden, batch["lengths"] - 1)

    def _evaluate(self, batch: Mapping[str, Any], split: str) -> None:
        size = batch["input_ids"].shape[0]
        hidden = self.hidden_states(batch)
        logits, targets = self._gather_response(hidden, batch)
        self.log(f"{split}/loss", self.per_item_nll(logits, targets).mean(), batch_size=size, sync_dist=True)
        probability = self.yes_probability_from_hidden(hidden, batch["response_index"][:, 0])
        labels = (targets[:, 0] == self.yes_id).long()
        for name in ("auc", "accuracy"):
            metric = self.eval_metrics[f"{split}_{name}"]
            metric.update(probability, labels)
            self.log(f"{split}/{name}", metric, batch_size=size, prog_bar=split == "val" and name == "auc")

    def validation_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def test_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        self._evaluate(batch, "test")
