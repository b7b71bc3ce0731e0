"""What the influence engine and the unlearning core need from a model and from a datamodule, as code.

Anything that satisfies these protocols can be unlearned from (kronfluence's ``Task`` idea): a recommender, the
vision-language module, or a toy module in a test. They are ``runtime_checkable`` so a wrong object fails at the
door with a clear message (:func:`require`), not deep inside a solve.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

Row = Mapping[str, Any]
Batch = Mapping[str, torch.Tensor]


@runtime_checkable
class UnlearnableModel(Protocol):
    """A module whose trainable adapter θ the engine differentiates.

    ``module(batch)`` returns the 1-D per-item losses ℓ(z_i, θ) (same reduction as training) of an encoded batch.
    """

    def __call__(self, batch: Batch) -> torch.Tensor: ...

    def encode(self, rows: Sequence[Row]) -> dict[str, torch.Tensor]:
        """Rows → one model-ready batch (tensors)."""
        ...

    def adapter_parameters(self) -> dict[str, nn.Parameter]:
        """θ: every trainable adapter tensor, by name, in a fixed order."""
        ...


@runtime_checkable
class GaussNewtonModel(UnlearnableModel, Protocol):
    """A model that also offers the Gauss–Newton curvature: response logits and what turns them into ℓ."""

    def gauss_newton_outputs(self, batch: Batch) -> tuple[torch.Tensor, Any]: ...


@runtime_checkable
class TrainingData(Protocol):
    """The training rows an adapter was fitted on, as the unlearning core reads and edits them."""

    kind: str

    @property
    def train_rows(self) -> Sequence[Row]: ...

    def set_train_rows(self, rows: Sequence[Row]) -> None: ...

    def row_by_id(self) -> dict[int, dict[str, Any]]: ...


def require(obj: Any, contract: type, role: str) -> None:
    """Raise a clear ``TypeError`` when ``obj`` does not satisfy ``contract`` (a runtime-checkable protocol)."""
    if not isinstance(obj, contract):
        missing = [name for name in getattr(contract, "__protocol_attrs__", ()) if not hasattr(obj, name)]
        raise TypeError(f"{role} {type(obj).__name__} does not satisfy {contract.__name__}" + (f" (missing: {', '.join(sorted(missing))})" if missing else ""))
