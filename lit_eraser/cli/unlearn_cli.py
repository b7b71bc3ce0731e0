"""``unlearn.py``: one unlearning experiment end to end on LightningCLI (see lit_eraser.unlearning.experiment)."""

from __future__ import annotations

import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.cli import LightningArgumentParser

import lit_eraser.data  # noqa: F401 - registers the datamodules for short class names
import lit_eraser.models  # noqa: F401 - registers the recommenders
from lit_eraser.cli.common import EraserCLI, make_cli, one_model_summary
from lit_eraser.cli.errors import exit_on_user_error
from lit_eraser.cli.loggers import LoggerMode
from lit_eraser.models.converge import ConvergeSettings
from lit_eraser.unlearning.corruption import CorruptionSpec
from lit_eraser.unlearning.eraser import UnlearnSettings, solver_name
from lit_eraser.unlearning.experiment import ExperimentPlan, UnlearningExperiment
from lit_eraser.unlearning.report_logging import ReportSink, format_summary

SOLVER_HINT = "solvers: cg, exact, qp, lissa, datainf (or CGSettings, ...); `{prog} --unlearn.solver.help cg` lists one's settings"


class UnlearnCLI(EraserCLI):
    """``--model``/``--data``/``--trainer`` configure the original adapter (trained here unless ``--adapter``);
    ``--unlearn`` configures LLMEraser; the rest picks requests, baselines and outputs."""

    error_hints = {"unlearn.solver": SOLVER_HINT, "unlearn": SOLVER_HINT}

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
        parser.add_argument(
            "--unlearn", type=UnlearnSettings, default=UnlearnSettings(),
            help="LLMEraser settings. --unlearn.solver takes a short name (cg, exact, qp, lissa, datainf; any case) "
            "or a settings class (CGSettings, lit_eraser.influence.solvers.CGSettings).",
        )
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
        parser.add_argument(
            "--wandb_mode", type=LoggerMode, default="offline",
            help="offline (default: a W&B run in <output_dir>/wandb, upload later with `wandb sync`), online, "
            "disabled, or csv (<output_dir>/methods.csv).",
        )
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
        seed=config.get("seed_everything"),
    )
    output_dir = plan.output_dir
    # Nothing is created before the experiment directory exists: the W&B run goes into <output_dir>/wandb when
    # the experiment logs its report, after output_dir has been renamed into place.
    logger = ReportSink(
        mode=config["wandb_mode"], project=config["wandb_project"], name=output_dir.name,
        config=resolved_config(config, init["unlearn"]),
    )
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
    with one_model_summary():
        report = experiment.run()
    print(format_summary(report, output_dir / "report.json"), flush=True)
    sink = experiment.logger
    hint = sink.hint() if isinstance(sink, ReportSink) else None
    if hint:
        print(hint)
    command = "lit-eraser-summary" if shutil.which("lit-eraser-summary") else "python -m lit_eraser.unlearning.report_logging"
    print(f"summary again: {command} {output_dir}")
    return report


def resolved_config(config: Any, unlearn: UnlearnSettings) -> dict[str, Any]:
    """The parsed command line as plain data, with the solver named (jsonargparse keeps only the settings of a
    union of dataclasses, not which class they belong to)."""
    plain = dict(_as_plain(config))
    solver = unlearn.solver
    plain["unlearn"] = {
        **dict(plain.get("unlearn") or {}),
        "solver": {
            "name": solver_name(solver),
            "class_path": f"{type(solver).__module__}.{type(solver).__qualname__}",
            "init_args": asdict(solver),
        },
    }
    return plain


def _as_plain(namespace: Any) -> Any:
    """A jsonargparse Namespace as plain dicts (for hashing the original adapter's config)."""
    if hasattr(namespace, "as_dict"):
        return namespace.as_dict()
    return namespace
