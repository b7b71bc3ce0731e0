"""``unlearn.py``: one unlearning experiment end to end on LightningCLI (see lit_eraser.unlearning.experiment)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

import lit_eraser.data  # noqa: F401 - registers the datamodules for short class names
import lit_eraser.models  # noqa: F401 - registers the recommenders
from lit_eraser.cli.common import make_cli
from lit_eraser.cli.errors import exit_on_user_error
from lit_eraser.cli.loggers import LoggerMode, build_logger
from lit_eraser.models.converge import ConvergeSettings
from lit_eraser.unlearning.corruption import CorruptionSpec
from lit_eraser.unlearning.eraser import UnlearnSettings
from lit_eraser.unlearning.experiment import ExperimentPlan, UnlearningExperiment


class UnlearnCLI(LightningCLI):
    """``--model``/``--data``/``--trainer`` configure the original adapter (trained here unless ``--adapter``);
    ``--unlearn`` configures LLMEraser; the rest picks requests, baselines and outputs."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument("--output_dir", type=str, default="runs/unlearn", help="Experiment directory to create.")
        parser.add_argument("--overwrite", type=bool, default=False, help="Replace an existing output_dir.")
        parser.add_argument(
            "--adapter", type=str | None, default=None,
            help="Run directory of a trained adapter (train.py --output_dir). Default: train one here, cached.",
        )
        parser.add_argument("--requests", type=str | None, default=None, help="JSONL request file.")
        parser.add_argument(
            "--corruption", type=CorruptionSpec | None, default=None,
            help="Seeded experiment instead of a request file: corrupt the training data, train on it, unlearn.",
        )
        parser.add_argument("--unlearn", type=UnlearnSettings, default=UnlearnSettings(), help="LLMEraser settings.")
        parser.add_argument(
            "--baselines", type=list[str], default=[],
            help="Methods to compare with: retrain, warm_retrain, sisa, gradient_ascent, npo.",
        )
        parser.add_argument("--warm_epochs", type=int, default=2, help="Epochs of warm retraining.")
        parser.add_argument(
            "--warm_lr", type=float | None, default=None, help="Peak learning rate of warm retraining (default: the model's)."
        )
        parser.add_argument(
            "--paired_fidelity", type=bool, default=True,
            help="With warm_retrain: also warm-train θ̂ on its own rows (same seed) and report *_paired fidelity.",
        )
        parser.add_argument(
            "--converge", type=ConvergeSettings | None, default=None,
            help="Finish θ̂ (and retrain) by full-batch L-BFGS to a stationary point of mean loss + l2/2‖θ‖²; "
            "warm_retrain then continues that L-BFGS on the edited rows. Set unlearn.damping = converge.l2.",
        )
        parser.add_argument("--sisa_shards", type=int, default=4, help="Shards (user groups) of the sisa baseline.")
        parser.add_argument("--cache_dir", type=str, default="runs/cache", help="Cache of trained original adapters.")
        parser.add_argument("--eval_split", type=str, default="test", help="Split the methods are evaluated on.")
        parser.add_argument("--wandb_mode", type=LoggerMode, default="offline", help="offline, online, disabled or csv.")
        parser.add_argument("--wandb_project", type=str, default="lit-eraser", help="W&B project name.")


def build_experiment(args: list[str] | None = None) -> UnlearningExperiment:
    """Parse the command line (``args`` or ``sys.argv``) and validate everything into an experiment."""
    torch.set_float32_matmul_precision("high")
    cli = make_cli(UnlearnCLI, args, "Unlearn IR / QM / RC requests from a LoRA adapter with LLMEraser.")
    config, init = cli.config, cli.config_init
    plan = ExperimentPlan(
        output_dir=Path(config["output_dir"]),
        adapter=Path(config["adapter"]) if config["adapter"] else None,
        requests=Path(config["requests"]) if config["requests"] else None,
        corruption=init["corruption"],
        unlearn=init["unlearn"],
        baselines=tuple(config["baselines"]),
        warm_epochs=config["warm_epochs"],
        warm_lr=config["warm_lr"],
        sisa_shards=config["sisa_shards"],
        paired_fidelity=config["paired_fidelity"],
        cache_dir=Path(config["cache_dir"]),
        overwrite=config["overwrite"],
        eval_split=config["eval_split"],
        converge=init["converge"],
    )
    output_dir = plan.output_dir
    logger = build_logger(config["wandb_mode"], output_dir.parent / "logs", config["wandb_project"], output_dir.name)
    trainer_kwargs = {k: v for k, v in init["trainer"].items() if k not in ("logger", "callbacks")}
    return UnlearningExperiment(
        plan,
        cli.model,
        cli.datamodule,
        trainer_kwargs,
        model_config=_as_plain(config["model"]),
        data_config=_as_plain(config["data"]),
        logger=logger,
    )


@exit_on_user_error
def main(args: list[str] | None = None) -> dict[str, Any]:
    """Parse the command line (``args`` or ``sys.argv``), validate everything, and run the experiment."""
    experiment = build_experiment(args)
    output_dir = experiment.plan.output_dir
    report = experiment.run()
    methods = report["methods"]
    print(f"wrote {output_dir}/report.json")
    for name, entry in methods.items():
        shown = ", ".join(f"{k}={v:.4f}" for k, v in sorted(entry["metrics"].items()))
        print(f"  {name:>14}: {shown}  ({entry['seconds']:.1f}s)")
    solver = report["solver"]
    print(f"  solver {solver['name']}: relative residual {solver['relative_residual']:.3g}, {solver['hvp_calls']} HVPs")
    return report


def _as_plain(namespace: Any) -> Any:
    """A jsonargparse Namespace as plain dicts (for hashing the original adapter's config)."""
    if hasattr(namespace, "as_dict"):
        return namespace.as_dict()
    return namespace
