"""Fitting an adapter on a given set of training rows: the shared core of the original adapter, Retrain and
Warm retrain. Timed and memory-metered so report.json can compare costs."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import lightning as L

from lit_eraser.curves import CurveLogger
from lit_eraser.profiling import PhaseCost, PhaseMeter

#: Trainer arguments that make no sense for the inner fits of an experiment (they log and checkpoint nothing).
_INNER_OVERRIDES = {"logger": False, "enable_checkpointing": False, "callbacks": None}


def inner_trainer(trainer_kwargs: Mapping[str, Any], **overrides: Any) -> L.Trainer:
    """A fresh Trainer from the experiment's trainer config, without loggers, checkpoints or callbacks."""
    kwargs = {**dict(trainer_kwargs), **_INNER_OVERRIDES, **overrides}
    kwargs.setdefault("enable_model_summary", False)
    return L.Trainer(**kwargs)


def fit_on_rows(
    module: L.LightningModule,
    datamodule: Any,
    rows: Sequence[Mapping[str, Any]] | None,
    trainer_kwargs: Mapping[str, Any],
    **overrides: Any,
) -> PhaseCost:
    """Fit ``module`` on ``rows`` (``None``: the datamodule's current training rows); restore those rows after.

    The logged training curves are kept in memory as ``module.training_curves`` (for report.json and W&B)."""
    previous = datamodule.train_rows
    if rows is not None:
        datamodule.set_train_rows(list(rows))
    recorder = CurveLogger()
    try:
        trainer = inner_trainer(trainer_kwargs, **{"logger": recorder, **overrides})
        module.train()  # Lightning keeps the modes it finds; a loaded adapter arrives in eval mode
        with PhaseMeter() as meter:
            trainer.fit(module, datamodule=datamodule)
    finally:
        if rows is not None:
            datamodule.set_train_rows(previous)
    module.eval()
    module.training_curves = recorder.curves
    return meter.cost
