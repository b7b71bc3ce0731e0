"""The one way lit-eraser builds a LightningCLI: subclass mode for model and data, nothing run automatically."""

from __future__ import annotations

from typing import TypeVar

from lightning.pytorch.cli import LightningCLI

import lit_eraser.data  # noqa: F401 - registers the datamodules for short class names
import lit_eraser.models  # noqa: F401 - registers the recommenders
from lit_eraser.data.base import RecDataModule
from lit_eraser.models.base import RecommenderModule

CLI = TypeVar("CLI", bound=LightningCLI)


def make_cli(cli_class: type[CLI], args: list[str] | None, description: str = "") -> CLI:
    """Parse ``args`` (``None``: ``sys.argv``) and instantiate model, datamodule and trainer (no fit/test)."""
    return cli_class(
        RecommenderModule,
        RecDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        run=False,
        save_config_callback=None,
        auto_configure_optimizers=False,
        args=args,
        parser_kwargs={"description": description} if description else {},
    )
