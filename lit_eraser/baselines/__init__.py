"""Baselines LLMEraser is compared with, registered by name (METHOD.md, "Baselines").

Each baseline takes a :class:`BaselineContext` and returns the adapted recommender (SISA: a
:class:`ShardEnsemble`) plus its cost. Names are
the report.json method names.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lightning.fabric.utilities.seed import seed_everything

from lit_eraser.baselines.ascent import ascend
from lit_eraser.baselines.sisa import ShardEnsemble, sisa
from lit_eraser.baselines.training import fit_on_rows, inner_trainer
from lit_eraser.models.base import RecommenderModule
from lit_eraser.models.converge import ConvergeSettings, converge
from lit_eraser.profiling import PhaseCost
from lit_eraser.unlearning.requests import UnlearningRequest

Row = Mapping[str, Any]


@dataclass
class BaselineContext:
    """What every baseline may use.

    Args:
        original_run: Run directory of θ̂ (its frozen parts — tokenizer, tiny base, item encoder — are shared).
        datamodule: The experiment's datamodule (its training rows are the rows θ̂ was fitted on).
        train_rows: The rows θ̂ was fitted on.
        clean_rows: The edited training set (IR rows dropped, QM/RC rows corrected): what retraining uses.
        requests: The validated requests.
        trainer_kwargs: The experiment's training Trainer arguments.
        warm_epochs: Epochs of continued training for ``warm_retrain``.
        warm_lr: Peak learning rate of ``warm_retrain`` (``None``: θ̂'s own). A smaller one keeps continued
            training near θ̂'s minimum instead of re-running θ̂'s warm-up to full learning rate.
        ascent_steps: Optimiser steps of ``gradient_ascent`` and ``npo``.
        sisa_shards: Number of SISA shards (users are split between them).
        sisa_seed: Seed of SISA's user-to-shard assignment.
        seed: Global seed set before ``warm_retrain`` fits, so two warm runs on different rows see the same
            shuffling and dropout draws wherever their rows agree (the paired fidelity reference).
        converge: θ̂ was finished by full-batch L-BFGS (:mod:`lit_eraser.models.converge`): ``retrain``
            finishes the same way, and ``warm_retrain`` *is* that L-BFGS from θ̂ on the edited rows (the
            minimiser the Newton step approximates) instead of ``warm_epochs`` of mini-batch training.
            SISA's shard adapters are not finished.
    """

    original_run: Path
    datamodule: Any
    train_rows: Sequence[Row]
    clean_rows: Sequence[Row]
    requests: Sequence[UnlearningRequest]
    trainer_kwargs: Mapping[str, Any]
    warm_epochs: int = 2
    warm_lr: float | None = None
    ascent_steps: int = 10
    sisa_shards: int = 4
    sisa_seed: int = 0
    seed: int = 0
    converge: ConvergeSettings | None = None

    def load_original(self) -> RecommenderModule:
        return RecommenderModule.load(self.original_run)

    def fresh_module(self) -> RecommenderModule:
        """A new adapter with θ̂'s initialisation and schedule, sharing θ̂'s frozen parts."""
        original = self.load_original()
        config = {**original.init_config(), "reuse_frozen_from": str(self.original_run)}
        return type(original).from_init_config(config)


def _finish(module: RecommenderModule, context: BaselineContext, cost: PhaseCost) -> PhaseCost:
    """θ̂'s own last training phase, when it had one: L-BFGS to a stationary point on the edited rows."""
    if context.converge is None:
        return cost
    # θ̂'s objective with the removed rows' terms deleted: same 1/n, same L2 weight (the objective b linearises)
    report = converge(module, context.clean_rows, context.converge, normalizer=len(context.train_rows))
    return cost.plus(report.cost)


def retrain(context: BaselineContext) -> tuple[RecommenderModule, PhaseCost]:
    """Retrain from scratch: same initialisation and schedule, on the edited data (the gold standard)."""
    module = context.fresh_module()
    cost = fit_on_rows(module, context.datamodule, context.clean_rows, context.trainer_kwargs)
    return module, _finish(module, context, cost)


def warm_retrain(context: BaselineContext) -> tuple[RecommenderModule, PhaseCost]:
    """Continue training θ̂ on the edited data: the solution the Newton step approximates."""
    module = context.load_original()
    if context.converge is not None:  # θ̂ is a stationary point: continue with the optimiser that found it
        return module, _finish(module, context, PhaseCost())
    if context.warm_lr is not None:
        module.lr = float(context.warm_lr)
    seed_everything(context.seed, verbose=False)
    cost = fit_on_rows(
        module, context.datamodule, context.clean_rows, context.trainer_kwargs, max_epochs=context.warm_epochs,
        max_steps=-1,
    )
    return module, cost


def gradient_ascent(context: BaselineContext) -> tuple[RecommenderModule, PhaseCost]:
    """Ascent on the request items (descent on their edited twins for QM/RC), from θ̂."""
    module = context.load_original()
    cost = ascend(module, context.train_rows, context.requests, "gradient_ascent", steps=context.ascent_steps)
    return module, cost


def npo(context: BaselineContext) -> tuple[RecommenderModule, PhaseCost]:
    """Negative preference optimisation on the request items (descent on edited twins for QM/RC), from θ̂."""
    module = context.load_original()
    cost = ascend(module, context.train_rows, context.requests, "npo", steps=context.ascent_steps)
    return module, cost


BASELINES: dict[str, Callable[[BaselineContext], tuple[RecommenderModule | ShardEnsemble, PhaseCost]]] = {
    "retrain": retrain,
    "sisa": sisa,
    "warm_retrain": warm_retrain,
    "gradient_ascent": gradient_ascent,
    "npo": npo,
}

__all__ = [
    "BASELINES", "BaselineContext", "ShardEnsemble", "ascend", "fit_on_rows", "gradient_ascent", "inner_trainer", "npo", "retrain",
    "sisa", "warm_retrain",
]
