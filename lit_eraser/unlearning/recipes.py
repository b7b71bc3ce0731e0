"""Build an experiment's pieces straight from a shipped YAML recipe, without the CLI (benchmarks, tests).

``load_recipe("configs/synthetic_qm.yaml")`` gives the datamodule (with the corruption applied), the requests,
the recommender (unbuilt), the trainer arguments and the unlearning settings — the same objects unlearn.py
would build, so a benchmark measures exactly what a user runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lit_eraser.cli.common import make_cli
from lit_eraser.cli.unlearn_cli import UnlearnCLI
from lit_eraser.data.base import RecDataModule
from lit_eraser.models.base import RecommenderModule
from lit_eraser.unlearning.corruption import Corruption
from lit_eraser.unlearning.eraser import UnlearnSettings


@dataclass
class Recipe:
    model: RecommenderModule
    datamodule: RecDataModule
    trainer_kwargs: dict[str, Any]
    unlearn: UnlearnSettings
    corruption: Corruption | None
    config: Any


def load_recipe(path: str | Path, *overrides: str) -> Recipe:
    """Instantiate an unlearn.py recipe (plus command-line style ``overrides``) and apply its corruption."""
    cli = make_cli(UnlearnCLI, ["--config", str(path), "--wandb_mode", "disabled", *overrides])
    init = cli.config_init
    dm = cli.datamodule
    dm.prepare_data()
    dm.setup("fit")
    corruption = None
    if init["corruption"] is not None:
        corruption = init["corruption"].apply(list(dm.train_rows), dm.kind, dm.num_items or None)
        dm.set_train_rows(list(corruption.rows))
    trainer_kwargs = {k: v for k, v in init["trainer"].items() if k not in ("logger", "callbacks")}
    return Recipe(cli.model, dm, trainer_kwargs, init["unlearn"], corruption, cli.config)
