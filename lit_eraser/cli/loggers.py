"""Experiment loggers: W&B offline by default (no login, no hang), switchable to online, disabled or CSV."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from lightning.pytorch.loggers import CSVLogger, Logger, WandbLogger

LoggerMode = Literal["offline", "online", "disabled", "csv"]


def build_logger(mode: LoggerMode, save_dir: str | os.PathLike[str], project: str, name: str | None) -> Logger | bool:
    """A W&B logger in ``mode`` (``offline`` syncs later with ``wandb sync``), a CSV logger, or none."""
    save_dir = Path(save_dir)
    save_dir.mkdir(parents=True, exist_ok=True)
    if mode == "csv":
        return CSVLogger(save_dir=str(save_dir), name=name or project)
    if mode == "disabled":
        return False
    if mode not in ("offline", "online"):
        raise ValueError(f"unknown logger mode {mode!r}; choose offline, online, disabled or csv")
    os.environ.setdefault("WANDB_SILENT", "true")
    return WandbLogger(project=project, name=name, save_dir=str(save_dir), offline=mode == "offline")
