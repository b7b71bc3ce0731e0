"""SISA (Bourtoule et al. 2021): one adapter per disjoint shard of the training data, predictions averaged;
a request retrains only the shards that hold its items.

Decisions:

* Shards are drawn **by user** (a seeded permutation of the training users dealt round-robin into ``shards``
  groups), so removing a user touches one shard. Rows without a ``user`` would fall back to ``user = id``.
* SISA's *slicing* (checkpoints inside a shard so retraining can resume mid-shard) is not implemented: a
  touched shard is retrained from scratch on its edited rows, with θ̂'s initialisation and schedule.
* Every shard adapter shares θ̂'s frozen parts (tokenizer, tiny base, item encoder), as ``retrain`` does.
* Aggregation: LLaRA-style -- the mean over shards of each shard's softmax over the 20 candidates'
  log-likelihoods, ranked (``hr1_rank``); TALLRec-style -- the mean P(Yes) (``auc``, ``accuracy``). Greedy
  generation metrics and the loss are not defined for an ensemble and are not reported.
* Cost: ``seconds`` is what honouring the requests costs (fitting the touched shards);
  ``untouched_shard_seconds`` is the one-off cost of the other shards, which an existing SISA deployment
  would already have paid.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torchmetrics.functional.classification import binary_accuracy, binary_auroc

from lit_eraser.baselines.training import fit_on_rows
from lit_eraser.io import write_json
from lit_eraser.metrics import HitRatioAt1
from lit_eraser.models.base import RecommenderModule
from lit_eraser.profiling import PhaseCost

Row = Mapping[str, Any]
SISA_FILE = "sisa.json"


def shard_of_users(rows: Sequence[Row], shards: int, seed: int) -> dict[int, int]:
    """``user -> shard``: a seeded permutation of the sorted distinct users, dealt round-robin."""
    if shards < 1:
        raise ValueError(f"SISA needs at least one shard, got {shards}")
    users = sorted({user_of(row) for row in rows})
    if len(users) < shards:
        raise ValueError(f"{shards} SISA shards need at least {shards} users; the training rows have {len(users)}")
    order = np.random.default_rng([int(seed), 0x5154]).permutation(len(users))
    return {users[int(position)]: rank % shards for rank, position in enumerate(order)}


def split_rows(rows: Sequence[Row], assignment: Mapping[int, int], shards: int) -> list[list[Row]]:
    """``rows`` grouped by their user's shard (order inside a shard kept)."""
    out: list[list[Row]] = [[] for _ in range(shards)]
    for row in rows:
        out[assignment[user_of(row)]].append(row)
    return out


def user_of(row: Row) -> int:
    return int(row.get("user", row["id"]))


def touched_shards(request_ids: Iterable[int], rows: Sequence[Row], assignment: Mapping[int, int]) -> list[int]:
    """Shards holding the requested rows: the only ones whose training data the requests change."""
    users = {int(row["id"]): user_of(row) for row in rows}
    return sorted({assignment[users[int(i)]] for i in request_ids})


class ShardEnsemble:
    """The SISA model: shard adapters whose predictions are averaged.

    Args:
        members: One trained recommender per shard (all of one kind).
        info: What ``sisa.json`` records (shards, seed, which shards were retrained).
    """

    def __init__(self, members: Sequence[RecommenderModule], info: Mapping[str, Any] | None = None) -> None:
        if not members:
            raise ValueError("a SISA ensemble needs at least one member")
        kinds = {member.kind for member in members}
        if len(kinds) != 1:
            raise ValueError(f"SISA members must be of one kind, got {sorted(kinds)}")
        self.members = list(members)
        self.kind = members[0].kind
        self.info = dict(info or {})

    @torch.no_grad()
    def scores(self, rows: Sequence[Row]) -> torch.Tensor:
        """Averaged prediction: ``[B, C]`` candidate probabilities (sequential) or ``[B]`` P(Yes) (binary)."""
        total = None
        for member in self.members:
            member.eval()
            if self.kind == "sequential":
                part = torch.softmax(member.candidate_scores(rows).float(), dim=-1)
            else:
                part = member.yes_probability(rows).float()
            total = part.cpu() if total is None else total + part.cpu()
        return total / len(self.members)

    def evaluate(self, datamodule: Any, split: Literal["val", "test"] = "test", batch_size: int = 32) -> dict[str, float]:
        """The ensemble's metrics on ``split`` with the keys :func:`~lit_eraser.unlearning.evaluate.evaluate` uses."""
        datamodule.setup("test" if split == "test" else "validate")
        rows = list(datamodule.test_rows if split == "test" else datamodule.val_rows)
        batches = [rows[i : i + batch_size] for i in range(0, len(rows), batch_size)]
        if self.kind == "sequential":
            metric = HitRatioAt1()
            for batch in batches:
                targets = torch.as_tensor([list(r["candidates"]).index(int(r["target"])) for r in batch])
                metric.update(self.scores(batch), targets)
            return {f"{split}/hr1_rank": float(metric.compute())}
        probabilities = torch.cat([self.scores(batch) for batch in batches])
        labels = torch.as_tensor([int(r["label"]) for r in rows])
        return {
            f"{split}/auc": float(binary_auroc(probabilities, labels)),
            f"{split}/accuracy": float(binary_accuracy(probabilities, labels)),
        }

    def save_run(self, directory: str | Path) -> Path:
        """``<directory>/shard_<k>/`` run directories (the usual adapter format) and ``sisa.json``."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        for k, member in enumerate(self.members):
            member.save_run(directory / f"shard_{k:02d}")
        write_json(directory / SISA_FILE, {**self.info, "members": [f"shard_{k:02d}" for k in range(len(self.members))]})
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> ShardEnsemble:
        directory = Path(directory)
        path = directory / SISA_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{directory} is not a SISA ensemble (no {SISA_FILE})")
        info = json.loads(path.read_text())
        members = [RecommenderModule.load(directory / name) for name in info.pop("members")]
        return cls(members, info)


def sisa(context: Any) -> tuple[ShardEnsemble, PhaseCost]:
    """Fit one adapter per user shard: touched shards on their edited rows (the unlearning cost), the others on
    their unchanged rows (one-off cost, reported separately)."""
    seed = int(context.sisa_seed)
    assignment = shard_of_users(context.train_rows, context.sisa_shards, seed)
    edited = split_rows(context.clean_rows, assignment, context.sisa_shards)
    touched = set(touched_shards((r.id for r in context.requests), context.train_rows, assignment))
    members: list[RecommenderModule] = []
    unlearn, once = PhaseCost(), PhaseCost()
    for k, rows in enumerate(edited):
        if not rows:
            raise ValueError(f"SISA shard {k} has no rows left after the requests; use fewer shards")
        member = context.fresh_module()
        cost = fit_on_rows(member, context.datamodule, rows, context.trainer_kwargs)
        if k in touched:
            unlearn = unlearn.plus(cost)
        else:
            once = once.plus(cost)
        members.append(member)
    info = {"shards": context.sisa_shards, "seed": seed, "retrained_shards": sorted(touched),
            "untouched_shard_seconds": once.seconds}
    return ShardEnsemble(members, info), unlearn
