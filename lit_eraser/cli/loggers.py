"""Experiment loggers of ``train.py``: W&B offline by default (no login, no hang), switchable to online, disabled
or CSV. (``unlearn.py`` logs its finished report instead: :mod:`lit_eraser.unlearning.report_logging`.)"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from lightning.pytorch.loggers import CSVLogger, Logger, WandbLogger

LoggerMode = Literal["offline", "online", "disabled", "csv"]


def wandb_settings(**overrides: Any) -> Any:
    """Quiet W&B (its banner and its end-of-run sparklines); the scripts print the run's path themselves.
    ``WANDB_SILENT=false`` brings W&B's own output back. The environment is left as it is."""
    import wandb

    silent = os.environ.get("WANDB_SILENT", "true").strip().lower() in ("1", "true", "yes")
    return wandb.Settings(silent=silent, **overrides)


def build_logger(mode: LoggerMode, save_dir: str | os.PathLike[str], project: str, name: str | None) -> Logger | bool:
    """A W&B logger in ``mode`` (``offline`` syncs later with ``wandb sync``), a CSV logger, or none."""
    if mode == "disabled":
        return False
    if mode not in ("offline", "online", "csv"):
        raise ValueError(f"unknown logger mode {mode!r}; choose offline, online, disabled or csv")
    save_dir = Path(save_dir)
    save_dir.mkdir(parents=True, exist_ok=True)
    if mode == "csv":
        return CSVLogger(save_dir=str(save_dir), name=name or project)
    logger = WandbLogger(
        project=project, name=name, save_dir=str(save_dir), offline=mode == "offline", settings=wandb_settings()
    )
    # Lightning passes anonymous=None, which recent wandb answers with "The anonymous setting has no effect".
    init = getattr(logger, "_wandb_init", None)
    if isinstance(init, dict) and init.get("anonymous") is None:
        init.pop("anonymous", None)
    return logger


def logger_hint(logger: Any) -> str | None:
    """Where ``logger`` wrote its run, and for an offline W&B run the ``wandb sync`` command that uploads it."""
    if isinstance(logger, WandbLogger):
        experiment = getattr(logger, "_experiment", None)
        run_dir = getattr(experiment, "dir", None)
        if not run_dir:
            return None
        path = Path(run_dir).parent
        if getattr(logger, "_offline", True):
            return f"W&B offline run: {path}\n  upload it with: wandb sync {path}"
        return f"W&B run: {getattr(experiment, 'url', None) or path}"
    if isinstance(logger, CSVLogger):
        return f"CSV log: {logger.log_dir}"
    return None
