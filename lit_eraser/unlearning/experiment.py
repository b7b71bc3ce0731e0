"""One unlearning experiment end to end (``unlearn.py``): requests → original adapter → LLMEraser → baselines →
fidelity → ``report.json`` (DESIGN.md contract) and adapters under ``adapters/<method>/``.

Everything is written into a temporary sibling of ``output_dir`` and renamed into place at the end, so a
failed run leaves nothing behind. Bad requests, a bad adapter or an existing ``output_dir`` fail before any
training or solving.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_warn

from callbacks.unlearn import LEDGER, write_ledger
from lit_eraser.baselines import BASELINES, BaselineContext, ShardEnsemble, fit_on_rows
from lit_eraser.baselines.sisa import shard_of_users
from lit_eraser.influence import cosine
from lit_eraser.influence._utils import tadd
from lit_eraser.io import (
    atomic_directory,
    check_disjoint,
    check_replaceable,
    directory_checksums,
    output_lock,
    strict_json,
    write_json,
)
from lit_eraser.models.base import RecommenderModule
from lit_eraser.models.converge import ConvergeSettings, converge
from lit_eraser.profiling import PhaseMeter
from lit_eraser.unlearning.corruption import CorruptionSpec
from lit_eraser.unlearning.eraser import UnlearnSettings, apply_delta, chunk, compute_update, solver_name
from lit_eraser.unlearning.report_logging import stage
from lit_eraser.unlearning.evaluate import evaluate
from lit_eraser.unlearning.requests import (
    UnlearningRequest,
    apply_requests,
    build_pairs,
    read_requests,
    summarize_task,
    validate_requests,
)
from lit_eraser.models.prompts import edit_prompt_check
from lit_eraser.models.run_checks import check_adapter_matches_data

Row = Mapping[str, Any]
#: Adapter directory of the paired fidelity reference (θ̂ warm-trained on its own rows); not a method.
WARM_CONTROL = "warm_retrain_control"


@dataclass
class ExperimentPlan:
    """The experiment's inputs besides model, data and trainer (``unlearn.py`` top-level options)."""

    output_dir: Path
    adapter: Path | None = None
    requests: Path | None = None
    corruption: CorruptionSpec | None = None
    unlearn: UnlearnSettings = field(default_factory=UnlearnSettings)
    baselines: tuple[str, ...] = ()
    warm_epochs: int = 2
    warm_lr: float | None = None
    sisa_shards: int = 4
    paired_fidelity: bool = True
    cache_dir: Path = Path("runs/cache")
    overwrite: bool = False
    eval_split: str = "test"
    converge: ConvergeSettings | None = None
    seed: int | bool | None = None

    def __post_init__(self) -> None:
        unknown = [name for name in self.baselines if name not in BASELINES]
        if unknown:
            raise ValueError(f"unknown baseline(s) {unknown}; known: {', '.join(sorted(BASELINES))}")
        if "sisa" in self.baselines and self.sisa_shards < 1:
            raise ValueError(f"sisa_shards must be >= 1, got {self.sisa_shards}")
        if (self.requests is None) == (self.corruption is None):
            raise ValueError("give exactly one of --requests (a JSONL file) or --corruption (a seeded experiment)")
        check_disjoint(self.output_dir, {"adapter run directory (--adapter)": self.adapter, "cache (--cache_dir)": self.cache_dir})
        check_replaceable(self.output_dir, self.overwrite)
        if self.converge is not None and self.adapter is not None:
            raise ValueError(
                "--converge finishes the adapter this run trains; a given --adapter is unlearned as it is (drop one)"
            )
        if self.converge is not None and self.converge.l2 != self.unlearn.damping:
            rank_zero_warn(
                f"converge.l2 = {self.converge.l2} but unlearn.damping = {self.unlearn.damping}: the solve is the "
                "Newton step of the L2-regularised objective θ̂ minimises only when they are equal"
            )


# ------------------------------------------------------------------------------------------------ helpers
def software_versions() -> dict[str, str]:
    """Versions that change what training produces (part of the cache key of trained originals)."""
    import lightning
    import peft
    import transformers

    from lit_eraser import __version__

    return {"lit_eraser": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "peft": peft.__version__, "lightning": lightning.__version__}


def read_cache_entry(run_dir: Path) -> dict[str, Any] | None:
    """The cost record of a usable cached original, or ``None`` (absent, or damaged: then removed with a warning
    so that it is rebuilt instead of blocking every later run)."""
    if not run_dir.exists():
        return None
    try:
        cost = json.loads((run_dir / "cost.json").read_text())
        if not isinstance(cost, dict):
            raise ValueError("cost.json is not an object")
        RecommenderModule.load(run_dir)  # validates files, checksums and tokenizer
        return cost
    except Exception as error:  # noqa: BLE001 - any damage means: rebuild
        rank_zero_warn(f"cached original {run_dir} is unusable ({type(error).__name__}: {error}); rebuilding it")
        shutil.rmtree(run_dir, ignore_errors=True)
        return None


def as_number(value: Any) -> float:
    """A report number: ``None`` (a non-finite value written as JSON null) reads back as NaN."""
    return float("nan") if value is None else float(value)


def config_hash(payload: Any) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def per_item_losses(module: RecommenderModule, rows: Sequence[Row], batch_size: int = 32) -> np.ndarray:
    """ℓ(z, θ) of each row at the module's current θ, in eval mode."""
    module.eval()
    device = next(module.parameters()).device
    out: list[torch.Tensor] = []
    with torch.no_grad():
        for batch in chunk(list(rows), batch_size):
            encoded = {k: v.to(device) for k, v in module.encode(batch).items()}
            out.append(module(encoded).float().cpu())
    return torch.cat(out).numpy() if out else np.zeros(0)


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    if len(x) < 2 or np.std(x) == 0 or np.std(y) == 0:
        return float("nan")
    return float(np.corrcoef(x, y)[0, 1])


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    rank = lambda a: np.argsort(np.argsort(a, kind="stable"), kind="stable").astype(float)  # noqa: E731
    return pearson(rank(x), rank(y))


def probe_rows(pairs: Sequence[tuple[Row, Row | None]]) -> list[Row]:
    """The item whose loss a request should change: z′ for QM/RC (now fitted), z for IR (now forgotten)."""
    return [twin if twin is not None else original for original, twin in pairs]


# ------------------------------------------------------------------------------------------------ runner
class UnlearningExperiment:
    """Runs the plan on a recommender config and a datamodule; see :func:`run`."""

    def __init__(
        self,
        plan: ExperimentPlan,
        model: RecommenderModule,
        datamodule: Any,
        trainer_kwargs: Mapping[str, Any],
        model_config: Mapping[str, Any] | None = None,
        data_config: Mapping[str, Any] | None = None,
        logger: Any = None,
    ) -> None:
        self.plan = plan
        self.model = model
        self.datamodule = datamodule
        self.trainer_kwargs = dict(trainer_kwargs)
        self.model_config = dict(model_config or {})
        self.data_config = dict(data_config or {})
        self.logger = logger
        self.early_build_seconds = 0.0

    # -- inputs ---------------------------------------------------------------------------------------
    def prepare_requests(self) -> tuple[list[Row], list[UnlearningRequest], list[Row]]:
        """(rows θ̂ is fitted on, validated requests, edited rows); fails before any work on bad input."""
        dm = self.datamodule
        dm.prepare_data()
        dm.setup("fit")
        rows = list(dm.train_rows)
        num_items = dm.num_items or None
        if self.plan.corruption is not None:
            corruption = self.plan.corruption.apply(rows, dm.kind, num_items)
            dm.set_train_rows(list(corruption.rows))
            return list(corruption.rows), list(corruption.requests), list(corruption.clean_rows)
        rows_by_id = {int(r["id"]): r for r in rows}
        requests = read_requests(self.plan.requests, rows_by_id, dm.kind, num_items)  # cheap checks first
        # an edit the prompt limit would truncate is not the requested z′: refused here, before any training
        validate_requests(requests, rows_by_id, dm.kind, num_items, fits=edit_prompt_check(self.request_encoder()))
        return rows, list(requests), apply_requests(rows, requests)

    def request_encoder(self) -> RecommenderModule:
        """The recommender whose prompt encoding the edits must fit: the given adapter's, or the one built here
        (its build time is kept for the original's ``build_seconds``)."""
        if self.plan.adapter is not None:
            return RecommenderModule.load(self.plan.adapter)
        with PhaseMeter() as build:
            self.model.build(self.datamodule)
        self.early_build_seconds = build.cost.seconds
        return self.model

    def original_run(self, requests: Sequence[UnlearningRequest] = ()) -> tuple[Path, dict[str, Any]]:
        """The run directory of θ̂ and its training cost: the given adapter, or one trained here and cached."""
        if self.plan.adapter is not None:
            stage(f"original: the given adapter {self.plan.adapter}")
            # n_train, num_items, row ids and contents the adapter was trained on must be this data config's
            check_adapter_matches_data(self.plan.adapter, self.datamodule, requests=requests)
            module = RecommenderModule.load(self.plan.adapter)  # validates files, checksums and tokenizer
            if module.kind != self.datamodule.kind:
                raise ValueError(f"{self.plan.adapter} holds a {module.kind} recommender; the data is {self.datamodule.kind}")
            metrics_path = self.plan.adapter / "metrics.json"
            metrics = json.loads(metrics_path.read_text()) if metrics_path.is_file() else {}
            return self.plan.adapter, metrics
        key = config_hash(
            {
                "model": self.model_config,
                "data": self.data_config,
                "trainer": {k: v for k, v in self.trainer_kwargs.items() if isinstance(v, (int, float, str, bool, type(None)))},
                "corruption": asdict(self.plan.corruption) if self.plan.corruption else str(self.plan.requests),
                "seed_everything": self.plan.seed,
                "versions": software_versions(),
                **({"converge": asdict(self.plan.converge)} if self.plan.converge else {}),
            }
        )
        run_dir = self.plan.cache_dir / f"original-{key}"
        with output_lock(run_dir, wait=True):  # a concurrent run training the same original: wait, then reuse it
            cached = read_cache_entry(run_dir)
            if cached is not None:
                stage(f"original: reusing the cached adapter {run_dir}")
                return run_dir, {**cached, "cached": True}
            stage("training original")
            # Tokenizer, item encoder and tiny base are built (or read from their caches) outside the timed fit:
            # the training seconds that unlearning is compared with are the adapter's own.
            with PhaseMeter() as build:
                self.model.build(self.datamodule)  # a no-op when request validation already built it
            cost = fit_on_rows(self.model, self.datamodule, None, self.trainer_kwargs)
            extra: dict[str, Any] = {}
            if self.plan.converge is not None:  # the L-BFGS finish is part of training θ̂ and of its seconds
                stage("training original: L-BFGS finish")
                finish = converge(self.model, list(self.datamodule.train_rows), self.plan.converge)
                extra = {"minibatch_fit_seconds": cost.seconds, "converge": finish.as_dict()}
                cost = cost.plus(finish.cost)
            non_finite = [n for n, v in self.model.adapter_parameters().items() if not torch.isfinite(v).all()]
            if non_finite:
                raise ValueError(
                    f"training the original adapter diverged: non-finite values in {non_finite[0]} (and {len(non_finite) - 1} "
                    "more); lower --model.init_args.lr"
                )
            with atomic_directory(run_dir, overwrite=True, marked=True) as tmp:
                self.model.save_run(tmp)
                write_json(
                    tmp / "cost.json",
                    {
                        "fit_seconds": cost.seconds, "build_seconds": build.cost.seconds + self.early_build_seconds,
                        **cost.as_dict(), **extra, "curves": getattr(self.model, "training_curves", {}),
                    },
                )
            return run_dir, {**json.loads((run_dir / "cost.json").read_text()), "cached": False}

    # -- the experiment -------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        """The whole experiment, holding the lock of ``output_dir`` from the first step to the final rename: a
        second run aimed at the same directory fails at once instead of silently replacing this one's result."""
        with output_lock(self.plan.output_dir):
            check_replaceable(self.plan.output_dir, self.plan.overwrite)
            return self._run()

    def _run(self) -> dict[str, Any]:
        train_rows, requests, clean_rows = self.prepare_requests()
        if "sisa" in self.plan.baselines:  # too many shards for the users: fail before any training
            shard_of_users(train_rows, self.plan.sisa_shards, BaselineContext.sisa_seed)
        original_dir, original_cost = self.original_run(requests)
        split = self.plan.eval_split
        dm = self.datamodule
        with atomic_directory(self.plan.output_dir, overwrite=self.plan.overwrite, marked=True) as out:
            methods: dict[str, dict[str, Any]] = {}
            states: dict[str, dict[str, torch.Tensor]] = {}

            module = RecommenderModule.load(original_dir)
            theta_hat = module.adapter_state()
            methods["original"] = {
                "metrics": evaluate(module, dm, split),
                "seconds": as_number(original_cost.get("fit_seconds", original_cost.get("seconds"))),
                "peak_memory_mib": as_number(original_cost.get("peak_memory_mib")),
                "peak_memory_delta_mib": as_number(original_cost.get("peak_memory_delta_mib")),
                "build_seconds": as_number(original_cost.get("build_seconds")),
                "source": str(original_dir),
                "cached": bool(original_cost.get("cached", False)),
                "curves": original_cost.get("curves", {}),
                **({k: original_cost[k] for k in ("minibatch_fit_seconds", "converge") if k in original_cost}),
            }
            states["original"] = theta_hat
            module.save_run(out / "adapters" / "original")

            stage(f"unlearning: {solver_name(self.plan.unlearn.solver)} solve for {len(requests)} request(s)")
            update = compute_update(module, train_rows, requests, self.plan.unlearn)
            apply_delta(module, update.delta)
            methods["llmeraser"] = {
                "metrics": evaluate(module, dm, split),
                **update.cost.as_dict(),
                "train_seconds_ratio": update.cost.seconds / methods["original"]["seconds"],
                "within_residual_ceiling": update.converged,
            }
            states["llmeraser"] = module.adapter_state()
            eraser_dir = out / "adapters" / "llmeraser"
            module.save_run(eraser_dir)
            write_ledger(eraser_dir / LEDGER, requests, update, directory_checksums(eraser_dir), str(original_dir))

            context = BaselineContext(
                original_run=original_dir,
                datamodule=dm,
                train_rows=train_rows,
                clean_rows=clean_rows,
                requests=requests,
                trainer_kwargs=self.trainer_kwargs,
                warm_epochs=self.plan.warm_epochs,
                warm_lr=self.plan.warm_lr,
                sisa_shards=self.plan.sisa_shards,
                seed=int(getattr(self.model, "seed", 0)),
                converge=self.plan.converge,
            )
            for name in self.plan.baselines:
                stage({"retrain": "retraining from scratch", "warm_retrain": "warm retraining",
                       "sisa": "retraining SISA shards"}.get(name, f"baseline {name}"))
                baseline, cost = BASELINES[name](context)
                members = baseline.members if isinstance(baseline, ShardEnsemble) else [baseline]
                if not all(torch.isfinite(v).all() for m in members for v in m.adapter_state().values()):
                    # e.g. gradient ascent run away: reported as such, never written as an adapter
                    rank_zero_warn(f"baseline {name} produced non-finite adapter weights; it is reported, not saved")
                    methods[name] = {"metrics": {}, "non_finite_adapter": True, **cost.as_dict()}
                    continue
                if isinstance(baseline, ShardEnsemble):  # no single θ: no fidelity entry, its own evaluation
                    methods[name] = {"metrics": baseline.evaluate(dm, split), **cost.as_dict(), **baseline.info}
                else:
                    methods[name] = {
                        "metrics": evaluate(baseline, dm, split), **cost.as_dict(),
                        "curves": getattr(baseline, "training_curves", {}),
                    }
                    if baseline.converge_report is not None:
                        methods[name]["converge"] = baseline.converge_report
                    states[name] = baseline.adapter_state()
                baseline.save_run(out / "adapters" / name)

            control = None
            if self.plan.paired_fidelity and "warm_retrain" in states:
                # θ̂ continued on the rows it was fitted on, same seed: what warm retraining does besides the edits
                stage("warm retraining the paired control")
                twin, control_cost = BASELINES["warm_retrain"](replace(context, clean_rows=train_rows))
                control = twin.adapter_state()
                twin.save_run(out / "adapters" / WARM_CONTROL)
            fidelity = self.fidelity(module, states, requests, train_rows, control)
            if control is not None:
                fidelity["warm_control_seconds"] = control_cost.seconds
            report = {
                "dataset": getattr(dm, "name", type(dm).__name__),
                "task": summarize_task(requests),
                "n_train": len(train_rows),
                "n_requests": len(requests),
                "methods": methods,
                "solver": update.solver_block(),
                "fidelity": fidelity,
                "cost": {
                    "unlearn_over_train_seconds": methods["llmeraser"]["seconds"] / methods["original"]["seconds"],
                    "unlearn_over_train_peak_memory": methods["llmeraser"]["peak_memory_mib"]
                    / methods["original"]["peak_memory_mib"],
                },
                "original_adapter": str(original_dir),
            }
            report = strict_json(report)  # what is written is what is returned: null, not NaN
            write_json(out / "report.json", report)
        self.log(report)
        return report

    def rescore(self, experiment_dir: Path) -> dict[str, Any]:
        """LLMEraser again, with this plan's ``unlearn`` settings, against the references an earlier run of the
        same experiment saved in ``experiment_dir`` (no retraining): for choosing solver settings.

        Returns ``{"llmeraser": {...metrics, seconds...}, "solver": ..., "fidelity": ..., "cost": ...}``;
        writes nothing.
        """
        train_rows, requests, _ = self.prepare_requests()
        report = json.loads((experiment_dir / "report.json").read_text())
        adapters = experiment_dir / "adapters"
        module = RecommenderModule.load(adapters / "original")
        states = {"original": module.adapter_state()}
        for name in ("warm_retrain", "retrain"):
            if (adapters / name).is_dir():
                states[name] = RecommenderModule.load(adapters / name).adapter_state()
        control = RecommenderModule.load(adapters / WARM_CONTROL).adapter_state() if (adapters / WARM_CONTROL).is_dir() else None
        update = compute_update(module, train_rows, requests, self.plan.unlearn)
        apply_delta(module, update.delta)
        entry = {"metrics": evaluate(module, self.datamodule, self.plan.eval_split), **update.cost.as_dict()}
        states["llmeraser"] = module.adapter_state()
        original = report["methods"]["original"]
        return {
            "llmeraser": entry,
            "solver": update.solver_block(),
            "fidelity": self.fidelity(module, states, requests, train_rows, control),
            "cost": {
                "unlearn_over_train_seconds": entry["seconds"] / as_number(original["seconds"]),
                "unlearn_over_train_peak_memory": entry["peak_memory_mib"] / as_number(original["peak_memory_mib"]),
            },
        }

    def fidelity(
        self,
        module: RecommenderModule,
        states: Mapping[str, Mapping[str, torch.Tensor]],
        requests: Sequence[UnlearningRequest],
        train_rows: Sequence[Row],
        warm_control: Mapping[str, torch.Tensor] | None = None,
    ) -> dict[str, float]:
        """How well θ̂ + Δ predicts each reference's per-request loss changes (Pearson, Spearman) and Δ's
        direction (cosine with θ_ref − θ̂), for every retraining reference that was run.

        With ``warm_control`` (θ̂ warm-trained on its own rows with the warm run's seed) the ``_paired`` entries
        compare against warm(clean) − warm(original rows): the edits' effect without the drift that any
        further training of a not-quite-converged θ̂ adds."""
        pairs = build_pairs(requests, {int(r["id"]): r for r in train_rows})
        probes = probe_rows(pairs)
        losses: dict[str, np.ndarray] = {}
        for name, state in states.items():
            module.load_adapter_state(state)
            losses[name] = per_item_losses(module, probes)
        if warm_control is not None:
            module.load_adapter_state(warm_control)
            losses["warm_control"] = per_item_losses(module, probes)
        module.load_adapter_state(states["llmeraser"])
        predicted = losses["llmeraser"] - losses["original"]
        delta = tadd(states["llmeraser"], states["original"], -1.0)
        out: dict[str, float] = {"mean_predicted_loss_change": float(predicted.mean())}
        for reference in ("warm_retrain", "retrain"):
            if reference not in states:
                continue
            actual = losses[reference] - losses["original"]
            out[f"pearson_vs_{reference}"] = pearson(predicted, actual)
            out[f"spearman_vs_{reference}"] = spearman(predicted, actual)
            out[f"mean_loss_change_{reference}"] = float(actual.mean())
            out[f"cosine_delta_vs_{reference}"] = cosine(delta, tadd(states[reference], states["original"], -1.0))
        if warm_control is not None and "warm_retrain" in states:
            actual = losses["warm_retrain"] - losses["warm_control"]
            out["pearson_vs_warm_retrain_paired"] = pearson(predicted, actual)
            out["spearman_vs_warm_retrain_paired"] = spearman(predicted, actual)
            out["mean_loss_change_warm_retrain_paired"] = float(actual.mean())
            out["cosine_delta_vs_warm_retrain_paired"] = cosine(delta, tadd(states["warm_retrain"], warm_control, -1.0))
        return {k: (v if math.isfinite(v) else float("nan")) for k, v in out.items()}

    def log(self, report: Mapping[str, Any]) -> None:
        """The finished report to the experiment logger (a W&B run inside ``output_dir`` by default); called after
        ``output_dir`` has been renamed into place. See :mod:`lit_eraser.unlearning.report_logging`."""
        from lit_eraser.unlearning.report_logging import log_report

        log_report(self.logger, report, self.plan.output_dir)
