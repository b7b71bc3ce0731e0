"""``train.py``: fit a recommender's LoRA adapter, test it, and write the run directory atomically."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.cli import LightningArgumentParser

from lit_eraser.cli.common import EraserCLI, make_cli
from lit_eraser.cli.errors import exit_on_user_error
from lit_eraser.cli.loggers import LoggerMode, build_logger, logger_hint
import lit_eraser.data  # noqa: F401 - registers the datamodules for short class names
import lit_eraser.models  # noqa: F401 - registers the recommenders
from lit_eraser.io import atomic_directory, write_json


class TrainCLI(EraserCLI):
    """LightningCLI with the run-directory contract of docs/ARCHITECTURE.md §4."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument("--output_dir", type=str, default="runs/train", help="Run directory to create.")
        parser.add_argument(
            "--overwrite", type=bool, default=False, help="Replace an existing run directory (atomically)."
        )
        parser.add_argument(
            "--wandb_mode",
            type=LoggerMode,
            default="offline",
            help="offline (default; `wandb sync` later), online, disabled, or csv (a CSVLogger).",
        )
        parser.add_argument("--wandb_project", type=str, default="lit-eraser", help="W&B project name.")
        parser.add_argument("--run_test", type=bool, default=True, help="Evaluate on the test split after fit.")

    def before_instantiate_classes(self) -> None:
        """Refuse an existing run directory before any work is done."""
        output_dir = Path(self.config["output_dir"])
        if output_dir.exists() and not self.config["overwrite"]:
            raise SystemExit(
                f"error: run directory {output_dir} already exists; choose another --output_dir "
                "or pass --overwrite true"
            )

    def instantiate_trainer(self, **kwargs: Any):  # noqa: ANN201 - Trainer
        if self.config_init["trainer"].get("logger") is None:
            output_dir = Path(self.config["output_dir"])
            kwargs["logger"] = build_logger(
                self.config["wandb_mode"],
                save_dir=output_dir.parent / "logs",
                project=self.config["wandb_project"],
                name=output_dir.name,
            )
        return super().instantiate_trainer(**kwargs)


def run_training(cli: TrainCLI) -> dict[str, float]:
    """Fit, test, and save adapter + tokenizer + config + metrics into ``--output_dir``."""
    config = cli.config
    trainer, model, datamodule = cli.trainer, cli.model, cli.datamodule
    started = time.perf_counter()
    trainer.fit(model, datamodule=datamodule)
    fit_seconds = time.perf_counter() - started
    metrics: dict[str, float] = {}
    if config["run_test"]:
        for results in trainer.test(model, datamodule=datamodule):
            metrics.update({key: float(value) for key, value in results.items()})
    metrics["fit_seconds"] = fit_seconds
    if trainer.is_global_zero:
        with atomic_directory(config["output_dir"], overwrite=config["overwrite"], marked=True) as tmp:
            model.save_run(tmp)
            (tmp / "config.yaml").write_text(cli.parser.dump(config, skip_none=False), encoding="utf-8")
            write_json(tmp / "metrics.json", metrics)
        print(f"wrote {config['output_dir']}: " + ", ".join(f"{k}={v:.4f}" for k, v in sorted(metrics.items())))
        hint = logger_hint(trainer.logger)
        if hint:
            print(hint)
    return metrics


@exit_on_user_error
def main(args: list[str] | None = None) -> dict[str, float]:
    """Parse the command line (``args`` or ``sys.argv``) and run one training job."""
    torch.set_float32_matmul_precision("high")
    cli = make_cli(TrainCLI, args, "Train a LoRA adapter for an LLM recommender.")
    return run_training(cli)

