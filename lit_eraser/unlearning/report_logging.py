"""Where an experiment's results go besides ``report.json``: the console summary, the W&B run (or a CSV file)
inside the experiment directory, and ``lit-eraser-summary`` for reading a finished run.

- :class:`ReportSink` is what ``unlearn.py`` hands the experiment as its logger. Nothing is created before the
  experiment directory exists: :func:`log_report` runs after ``output_dir`` has been renamed into place and
  puts the W&B run in ``<output_dir>/wandb/`` (``wandb sync <output_dir>/wandb/offline-run-*`` uploads it).
- The W&B run holds the resolved command-line config, the method table (metrics, fidelity vs each reference,
  seconds, ratio to training, peak memory, cached or not), the per-method training curves and the solver's
  residual curve where the report carries them, every figure of the report in the run summary, and each
  ``adapters/<method>/`` directory as an artifact of type ``adapter`` (referenced in place, not copied).
- :func:`method_table` / :func:`format_summary` are the one layout of those figures, for the console, W&B and
  CSV alike.
- :class:`CurveLogger` is an in-memory Lightning logger for inner fits whose curves should reach the report
  (``{"train/loss": [[step, value], ...]}``).

Curves are read from the report: ``methods.<name>.curves`` (``{metric: [[step, value], ...]}``),
``solver.curves`` (same shape) and ``solver.residual_history`` (one relative residual per iteration).
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers.logger import Logger

#: Fidelity entries of report.json, as (column, key prefix): ``pearson_vs_<method>`` etc.
FIDELITY = (("pearson", "pearson_vs_"), ("spearman", "spearman_vs_"), ("cosine", "cosine_delta_vs_"))
#: The suffix of the paired fidelity entries (warm retraining minus its control, see experiment.py).
PAIRED = "_paired"


# ------------------------------------------------------------------------------------------ stage lines
def stage(text: str) -> None:
    """One line on stderr when an experiment enters a stage ("training original", "unlearning", ...)."""
    print(f"[lit-eraser] {text}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------ the method table
from lit_eraser.curves import CurveLogger, finite_number  # noqa: E402,F401 - CurveLogger re-exported


_number = finite_number


def ordered_methods(report: Mapping[str, Any]) -> list[str]:
    """The report's methods, ``original`` and ``llmeraser`` first (report.json stores them sorted by name)."""
    names = list((report.get("methods") or {}))
    first = [n for n in ("original", "llmeraser") if n in names]
    return first + [n for n in names if n not in first]


def metric_names(report: Mapping[str, Any]) -> list[str]:
    return sorted({k for entry in report.get("methods", {}).values() for k in (entry.get("metrics") or {})})


def fidelity_references(report: Mapping[str, Any]) -> list[str]:
    """Methods (and ``<method>_paired``) that report.json has fidelity entries for, in method order."""
    fidelity = report.get("fidelity") or {}
    found = {key[len(prefix):] for key in fidelity for _, prefix in FIDELITY if key.startswith(prefix)}
    order = ordered_methods(report) + [f"{n}{PAIRED}" for n in ordered_methods(report)]
    return [name for name in order if name in found] + sorted(found - set(order))


def method_table(report: Mapping[str, Any]) -> tuple[list[str], list[list[Any]]]:
    """(columns, rows): one row per method, plus one per paired fidelity reference.

    Columns: ``method``, ``cached``, the metrics, ``seconds``, ``x_train`` (seconds over the original's
    training seconds), ``peak_memory_mib``, ``peak_memory_delta_mib`` and the fidelity of LLMEraser against
    the row's method (``pearson``/``spearman`` of the per-request loss changes, ``cosine`` of Δ with
    θ_method − θ̂). Missing or non-finite values are ``None``.
    """
    methods: Mapping[str, Any] = report.get("methods", {})
    fidelity: Mapping[str, Any] = report.get("fidelity") or {}
    metrics = metric_names(report)
    train_seconds = _number((methods.get("original") or {}).get("seconds"))
    columns = ["method", "cached", *metrics, "seconds", "x_train", "peak_memory_mib", "peak_memory_delta_mib"]
    columns += [column for column, _ in FIDELITY]
    rows: list[list[Any]] = []

    def fidelity_cells(reference: str) -> list[float | None]:
        return [_number(fidelity.get(f"{prefix}{reference}")) for _, prefix in FIDELITY]

    for name in ordered_methods(report):
        entry = methods[name]
        seconds = _number(entry.get("seconds"))
        ratio = seconds / train_seconds if seconds is not None and train_seconds else None
        cached = entry.get("cached")
        rows.append(
            [name, bool(cached) if cached is not None else None]
            + [_number((entry.get("metrics") or {}).get(m)) for m in metrics]
            + [seconds, ratio, _number(entry.get("peak_memory_mib")), _number(entry.get("peak_memory_delta_mib"))]
            + fidelity_cells(name)
        )
    for reference in fidelity_references(report):
        if reference.endswith(PAIRED) and reference[: -len(PAIRED)] in methods:
            rows.append([reference, None] + [None] * (len(metrics) + 4) + fidelity_cells(reference))
    return columns, rows


def _cell(value: Any, digits: int) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def format_summary(report: Mapping[str, Any], report_path: str | os.PathLike[str] | None = None) -> str:
    """The report as a console table (ASCII only): metrics, cost (seconds, ratio to training, peak MiB) and
    LLMEraser's fidelity against each reference, then the solver's figures."""
    columns, rows = method_table(report)
    metrics = metric_names(report)
    head = f"{report.get('dataset', '?')} {report.get('task', '?')}: n_train={report.get('n_train')} " \
           f"n_requests={report.get('n_requests')}"
    lines = [head + (f"  ({report_path})" if report_path else "")]
    labels = []
    for row in rows:
        label = row[0] + (" (cached)" if row[1] else "")
        labels.append(label if not row[0].endswith(PAIRED) else f"  {row[0][: -len(PAIRED)]} paired")
    width = max([len("method"), *map(len, labels)]) + 1
    shown = [m.split("/")[-1] for m in metrics]
    metric_w = [max(9, len(s) + 1) for s in shown]
    header = f"{'method':<{width}}" + "".join(f"{s:>{w}}" for s, w in zip(shown, metric_w))
    header += f"{'seconds':>9}{'x train':>8}{'peak MiB':>10}{'pearson':>9}{'spearman':>9}{'cosine':>8}"
    lines.append(header)
    index = {name: i for i, name in enumerate(columns)}
    for label, row in zip(labels, rows):
        line = f"{label:<{width}}" + "".join(f"{_cell(row[index[m]], 4):>{w}}" for m, w in zip(metrics, metric_w))
        line += f"{_cell(row[index['seconds']], 1):>9}{_cell(row[index['x_train']], 2):>8}"
        line += f"{_cell(row[index['peak_memory_mib']], 0):>10}"
        line += f"{_cell(row[index['pearson']], 3):>9}{_cell(row[index['spearman']], 3):>9}{_cell(row[index['cosine']], 3):>8}"
        lines.append(line)
    if any(row[index["pearson"]] is not None or row[index["cosine"]] is not None for row in rows):
        lines.append("fidelity = LLMEraser vs that method: pearson/spearman of the per-request loss changes, "
                     "cosine of the weight updates")
    original = (report.get("methods") or {}).get("original") or {}
    if original.get("cached"):
        lines.append(f"original: reused from the cache ({original.get('source')}); its seconds are those of the run "
                     "that trained it")
    solver = report.get("solver") or {}
    if solver:
        residual = _number(solver.get("relative_residual"))
        lines.append(
            f"solver {solver.get('name')}: relative residual {residual:.3g}" if residual is not None
            else f"solver {solver.get('name')}: relative residual -"
        )
        lines[-1] += f", {solver.get('hvp_calls')} HVPs, damping {solver.get('damping')}"
    return "\n".join(lines)


def load_report(path: str | os.PathLike[str]) -> tuple[dict[str, Any], Path]:
    """report.json from a path to it or to a run folder (``unlearn.py --output_dir``)."""
    path = Path(path)
    if path.is_dir():
        candidate = path / "report.json"
        if not candidate.is_file():
            raise FileNotFoundError(
                f"{path} is a folder without report.json; give an unlearn.py --output_dir or a report.json path"
            )
        path = candidate
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; give an unlearn.py --output_dir or a report.json path")
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path} is not a JSON report: {error}") from None
    if not isinstance(report, dict) or not isinstance(report.get("methods"), dict):
        raise ValueError(f"{path} is not an unlearn.py report (no 'methods' object)")
    return report, path


def summary_main(argv: Sequence[str] | None = None) -> int:
    """``lit-eraser-summary RUN_DIR_OR_REPORT_JSON [...]``: print each report's summary table."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="lit-eraser-summary",
        description="Print the figures of unlearn.py runs: metrics, fidelity and cost per method, and the solver.",
    )
    parser.add_argument("paths", nargs="+", help="an unlearn.py --output_dir, or its report.json")
    parser.add_argument("--json", action="store_true", help="print the method table as JSON rows instead")
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    status = 0
    for i, given in enumerate(args.paths):
        try:
            report, path = load_report(given)
        except (OSError, ValueError) as error:
            print(f"error: {error}", file=sys.stderr)
            status = 2
            continue
        if args.json:
            columns, rows = method_table(report)
            print(json.dumps({"report": str(path), "rows": [dict(zip(columns, row)) for row in rows]}))
        else:
            print(("\n" if i else "") + format_summary(report, path))
            for key, value in (report.get("cost") or {}).items():
                print(f"cost {key}: {_cell(_number(value), 4)}")
    return status


# ------------------------------------------------------------------------------------------ curves
def report_curves(report: Mapping[str, Any]) -> dict[str, dict[str, list[list[float]]]]:
    """``{owner: {metric: [[step, value], ...]}}`` for every method and the solver that carries curves."""
    out: dict[str, dict[str, list[list[float]]]] = {}

    def points(series: Any) -> list[list[float]]:
        good = []
        for i, point in enumerate(series or []):
            step, value = (point[0], point[1]) if isinstance(point, (list, tuple)) and len(point) == 2 else (i, point)
            if _number(step) is not None and _number(value) is not None:
                good.append([int(step), float(value)])
        return good

    for name, entry in (report.get("methods") or {}).items():
        curves = {k: points(v) for k, v in (entry.get("curves") or {}).items()}
        if any(curves.values()):
            out[name] = {k: v for k, v in curves.items() if v}
    solver = report.get("solver") or {}
    curves = {k: points(v) for k, v in (solver.get("curves") or {}).items()}
    if solver.get("residual_history"):
        curves["relative_residual"] = points(solver["residual_history"])
    if any(curves.values()):
        out["solver"] = {k: v for k, v in curves.items() if v}
    return out


def flat_figures(report: Mapping[str, Any]) -> dict[str, float | str | bool]:
    """Every scalar of the report as ``<method>/<metric>``, ``<method>/seconds``, ``solver/...``, ``fidelity/...``,
    ``cost/...`` (the W&B run summary)."""
    flat: dict[str, float | str | bool] = {}
    for method, entry in (report.get("methods") or {}).items():
        for key, value in (entry.get("metrics") or {}).items():
            if _number(value) is not None:
                flat[f"{method}/{key}"] = float(value)
        for key, value in entry.items():
            if key in ("metrics", "curves", "converge"):
                continue
            if isinstance(value, (bool, str)) or _number(value) is not None:
                flat[f"{method}/{key}"] = value if isinstance(value, (bool, str)) else float(value)
    for block in ("solver", "fidelity", "cost"):
        for key, value in (report.get(block) or {}).items():
            if isinstance(value, (bool, str)) or _number(value) is not None:
                flat[f"{block}/{key}"] = value if isinstance(value, (bool, str)) else float(value)
    return flat


# ------------------------------------------------------------------------------------------ sinks
@dataclass
class ReportSink:
    """Where :func:`log_report` sends a finished experiment (``unlearn.py --wandb_mode``).

    Args:
        mode: ``offline`` (a W&B run in ``<output_dir>/wandb``, upload later with ``wandb sync``), ``online``,
            ``csv`` (``<output_dir>/methods.csv``) or ``disabled``.
        project: W&B project.
        name: W&B run name (default: the output directory's name).
        config: The resolved command-line config (logged as the run's config).
    """

    mode: str = "offline"
    project: str = "lit-eraser"
    name: str | None = None
    config: Mapping[str, Any] = field(default_factory=dict)
    #: Set by :func:`log_report`: the W&B run directory (for ``wandb sync``) or the CSV file, and the run URL.
    location: Path | None = None
    url: str | None = None

    def __bool__(self) -> bool:
        return self.mode != "disabled"

    def hint(self) -> str | None:
        """Where the results were logged, and how to upload an offline run."""
        if self.location is None:
            return None
        if self.mode == "csv":
            return f"method table: {self.location}"
        if self.mode == "offline":
            return f"W&B offline run: {self.location}\n  upload it with: wandb sync {self.location}"
        return f"W&B run: {self.url or self.location}"


def log_report(logger: Any, report: Mapping[str, Any], output_dir: str | os.PathLike[str]) -> None:
    """Send a finished experiment to ``logger``: a :class:`ReportSink`, a Lightning logger, or nothing.

    Call it after ``output_dir`` exists (the W&B run and the adapters it references live inside it).
    """
    if not logger:
        return
    output_dir = Path(output_dir)
    if isinstance(logger, ReportSink):
        if logger.mode == "csv":
            logger.location = write_csv(report, output_dir / "methods.csv")
        elif logger.mode in ("offline", "online"):
            log_wandb(logger, report, output_dir)
        return
    _log_lightning(logger, report)


def write_csv(report: Mapping[str, Any], path: Path) -> Path:
    columns, rows = method_table(report)
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        writer.writerows([["" if v is None else v for v in row] for row in rows])
    return path


def _artifact_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-.") or "run"


def _plain(value: Any) -> Any:
    """JSON-safe (paths and other objects as strings) for the W&B config."""
    return json.loads(json.dumps(value, default=str))


def log_wandb(sink: ReportSink, report: Mapping[str, Any], output_dir: Path) -> None:
    """One W&B run in ``<output_dir>/wandb``: config, method table, curves, summary figures, adapter artifacts."""
    import wandb

    output_dir = output_dir.resolve()  # artifacts reference their files by absolute path
    name = sink.name or output_dir.name
    from lit_eraser.cli.loggers import wandb_settings

    settings = wandb_settings(console="off")  # the run starts after the work: nothing to capture
    init: dict[str, Any] = dict(
        project=sink.project, name=name, dir=str(output_dir), mode=sink.mode, config=_plain(dict(sink.config)),
        job_type="unlearn", settings=settings,
    )
    try:
        run = wandb.init(**init, reinit="create_new")
    except (TypeError, ValueError):  # wandb < 0.19.10: no "create_new"
        run = wandb.init(**init)
    try:
        run_dir = Path(run.dir).parent  # <output_dir>/wandb/offline-run-<time>-<id>
        sink.location = run_dir
        columns, rows = method_table(report)
        run.log({"methods": wandb.Table(columns=columns, data=rows)})
        for owner, curves in report_curves(report).items():
            step_metric = f"{owner}/step"
            run.define_metric(step_metric)
            for metric in curves:
                run.define_metric(f"{owner}/{metric}", step_metric=step_metric)
            steps = sorted({step for points in curves.values() for step, _ in points})
            by_step: dict[int, dict[str, float]] = {step: {} for step in steps}
            for metric, points in curves.items():
                for step, value in points:
                    by_step[int(step)][f"{owner}/{metric}"] = value
            for step in steps:
                run.log({step_metric: step, **by_step[step]})
        run.summary.update(flat_figures(report))
        report_file = output_dir / "report.json"
        if report_file.is_file():
            artifact = wandb.Artifact(f"{_artifact_name(name)}-report", type="report")
            _add_file(artifact, report_file, "report.json")
            run.log_artifact(artifact)
        adapters = output_dir / "adapters"
        methods = report.get("methods") or {}
        for method_dir in sorted(p for p in adapters.iterdir() if p.is_dir()) if adapters.is_dir() else []:
            entry = methods.get(method_dir.name) or {}
            metadata = {
                "method": method_dir.name,
                "output_dir": str(output_dir),
                "metrics": {k: v for k, v in (entry.get("metrics") or {}).items() if _number(v) is not None},
                **({"cached": bool(entry["cached"])} if "cached" in entry else {}),
            }
            artifact = wandb.Artifact(f"{_artifact_name(name)}-{_artifact_name(method_dir.name)}", type="adapter",
                                      metadata=metadata)
            for path in sorted(p for p in method_dir.rglob("*") if p.is_file()):
                _add_file(artifact, path, path.relative_to(method_dir).as_posix())
            run.log_artifact(artifact)
        if sink.mode == "online":
            sink.url = getattr(run, "url", None)
    finally:
        run.finish()


def _add_file(artifact: Any, path: Path, name: str) -> None:
    """Reference the file in place (``immutable``: no copy into W&B's staging area) where wandb allows it."""
    try:
        artifact.add_file(str(path), name=name, policy="immutable")
    except TypeError:  # older wandb: no policy argument
        artifact.add_file(str(path), name=name)


def _log_lightning(logger: Any, report: Mapping[str, Any]) -> None:
    """A Lightning logger given by a caller: the figures as one metrics step and the method table."""
    logger.log_metrics({k: v for k, v in flat_figures(report).items() if isinstance(v, float)})
    table_logger = getattr(logger, "log_table", None)
    if callable(table_logger):
        columns, rows = method_table(report)
        table_logger(key="methods", columns=columns, data=rows)
    logger.finalize("success")


if __name__ == "__main__":
    raise SystemExit(summary_main())
