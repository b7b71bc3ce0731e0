"""``UnlearnCallback``: unlearn requests from the recommender a Trainer just fitted (or one loaded by unlearn.py).

Attach it to the recommender's Trainer. At fit end (``on_fit_end=True``), or when ``unlearn(...)`` is called,
it validates the requests against the training rows, builds b from exact z/z′ pairs, solves H_λ Δ = b with
the configured solver (the QP runs as an optimisation epoch in its own Trainer), applies θ̂ + Δ, evaluates,
and writes the new adapter atomically into a new directory with a ledger. The source adapter is never touched.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import lightning as L
from lightning.pytorch.callbacks import Callback

from lit_eraser.io import atomic_directory, check_disjoint, check_replaceable, directory_checksums
from lit_eraser.unlearning.eraser import UnlearnSettings, UnlearnUpdate, apply_delta, compute_update
from lit_eraser.unlearning.evaluate import evaluate
from lit_eraser.unlearning.requests import UnlearningRequest, read_requests, validate_requests

LEDGER = "ledger.jsonl"


@dataclass
class UnlearnOutcome:
    """What one unlearning call produced."""

    update: UnlearnUpdate
    metrics: dict[str, float] = field(default_factory=dict)
    output_dir: Path | None = None


def write_ledger(path: Path, requests: list[UnlearningRequest], update: UnlearnUpdate, checksums: dict[str, str], source: str | None) -> None:
    """One JSON line per applied request, then one line describing the update (solver, residual, checksums)."""
    lines = [json.dumps({"type": "request", **request.to_json()}, sort_keys=True) for request in requests]
    lines.append(
        json.dumps(
            {
                "type": "update",
                "method": "llmeraser",
                "n_train": update.n_train,
                "n_requests": update.n_requests,
                "solver": update.solver_block(),
                "seconds": update.cost.seconds,
                "source_adapter": source,
                "checksums": checksums,
            },
            sort_keys=True,
            default=str,
        )
    )
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


class UnlearnCallback(Callback):
    """Unlearn IR / QM / RC requests from the fitted adapter with LLMEraser.

    Args:
        requests: JSONL request file (see README); validated as a whole before any work.
        output_dir: New directory for the unlearned run (adapter, tokenizer, base, ledger); must not exist
            unless ``overwrite``.
        settings: Solver and damping (:class:`lit_eraser.unlearning.eraser.UnlearnSettings`).
        on_fit_end: Unlearn automatically when ``trainer.fit`` ends.
        evaluate_split: Split to evaluate the unlearned adapter on (``None``: skip).
        overwrite: Replace an existing ``output_dir`` (atomically).
        source_adapter: Where θ̂ came from, recorded in the ledger.
    """

    def __init__(
        self,
        requests: str | None = None,
        output_dir: str | None = None,
        settings: UnlearnSettings | None = None,
        on_fit_end: bool = True,
        evaluate_split: Literal["val", "test"] | None = "test",
        overwrite: bool = False,
        source_adapter: str | None = None,
    ) -> None:
        super().__init__()
        self.requests = requests
        self.output_dir = Path(output_dir) if output_dir else None
        self.settings = settings or UnlearnSettings()
        self.run_on_fit_end = on_fit_end
        self.evaluate_split = evaluate_split
        self.overwrite = overwrite
        self.source_adapter = source_adapter
        self.outcome: UnlearnOutcome | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Fail before training if the requests or the output directory are bad."""
        if self.output_dir is not None and self.output_dir.exists() and not self.overwrite:
            raise FileExistsError(f"{self.output_dir} already exists; choose another output_dir or set overwrite")
        if self.requests is not None and stage == "fit" and trainer.datamodule is not None:
            self._load_requests(trainer.datamodule)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.run_on_fit_end and self.requests is not None and trainer.is_global_zero:
            self.outcome = self.unlearn(pl_module, trainer.datamodule)

    def _load_requests(self, datamodule: Any) -> list[UnlearningRequest]:
        if self.requests is None:
            raise ValueError("UnlearnCallback has no requests: pass requests=<file.jsonl>")
        return read_requests(
            self.requests, datamodule.row_by_id(), datamodule.kind, getattr(datamodule, "num_items", None) or None
        )

    def unlearn(
        self,
        module: L.LightningModule,
        datamodule: Any,
        requests: list[UnlearningRequest] | None = None,
        output_dir: str | Path | None = None,
    ) -> UnlearnOutcome:
        """Validate, solve, apply θ̂ + Δ to ``module`` in place, evaluate, and save (when an output dir is set)."""
        if requests is None:
            requests = self._load_requests(datamodule)
        else:
            validate_requests(requests, datamodule.row_by_id(), datamodule.kind, getattr(datamodule, "num_items", None) or None)
        target = Path(output_dir) if output_dir is not None else self.output_dir
        if target is not None:
            check_disjoint(target, {"source adapter": self.source_adapter})
            check_replaceable(target, self.overwrite)
        update = compute_update(module, list(datamodule.train_rows), requests, self.settings)
        apply_delta(module, update.delta)
        module.eval()
        metrics = evaluate(module, datamodule, self.evaluate_split) if self.evaluate_split else {}
        if target is not None:
            with atomic_directory(target, overwrite=self.overwrite, marked=True) as tmp:
                module.save_run(tmp)
                write_ledger(tmp / LEDGER, list(requests), update, directory_checksums(tmp), self.source_adapter)
        return UnlearnOutcome(update=update, metrics=metrics, output_dir=target)
