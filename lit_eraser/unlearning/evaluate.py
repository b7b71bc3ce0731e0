"""Evaluate a recommender on a datamodule split with a throw-away Trainer (no logger, no checkpoints)."""

from __future__ import annotations

from typing import Any, Literal

import lightning as L


def evaluate(
    module: L.LightningModule,
    datamodule: L.LightningDataModule,
    split: Literal["val", "test"] = "test",
    accelerator: str = "auto",
    precision: Any = "32-true",
    progress_bar: bool = False,
) -> dict[str, float]:
    """The module's logged metrics on ``split`` (``test/...`` or ``val/...`` keys), as floats."""
    trainer = L.Trainer(
        accelerator=accelerator,
        devices=1,
        precision=precision,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=progress_bar,
        enable_model_summary=False,
    )
    run = trainer.test if split == "test" else trainer.validate
    results = run(module, datamodule=datamodule, verbose=False)
    return {key: float(value) for key, value in results[0].items()}
