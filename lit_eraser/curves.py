"""In-memory training curves of inner fits and solves (Lightning logger), so they can reach report.json and W&B."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from lightning.pytorch.loggers import Logger


def finite_number(value: Any) -> float | None:
    """A finite float, or ``None`` (missing, null, NaN, a bool, not a number)."""
    if isinstance(value, bool) or value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


class CurveLogger(Logger):
    """A Lightning logger that keeps every logged scalar in memory: ``curves[name] = [[step, value], ...]``.

    For an inner fit (``fit_on_rows(..., logger=CurveLogger())``) whose training curve should go into the report.
    """

    def __init__(self) -> None:
        super().__init__()
        self.curves: dict[str, list[list[float]]] = {}

    @property
    def name(self) -> str:
        return "curves"

    @property
    def version(self) -> int:
        return 0

    @property
    def experiment(self) -> dict[str, list[list[float]]]:
        return self.curves

    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        pass

    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        for key, value in metrics.items():
            number = finite_number(value.item() if hasattr(value, "item") else value)
            if key == "epoch" or number is None:
                continue
            self.curves.setdefault(key, []).append([int(step or 0), number])
