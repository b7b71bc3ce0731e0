"""Run one unlearning experiment and print the issue's acceptance figures: fidelity of the predicted per-request
loss changes, HR@1 (or AUC) of the corrupted / unlearned / clean-trained adapters, and the cost ratios.

    python benchmarks/unlearning_acceptance.py --config configs/lastfm_qm.yaml --output_dir runs/lastfm_qm_bench
    python benchmarks/unlearning_acceptance.py --report runs/lastfm_qm_bench/report.json   # re-print a report
    python benchmarks/unlearning_acceptance.py --rescore runs/lastfm_qm_bench --config configs/lastfm_qm.yaml \
        --unlearn.damping 1.0                      # LLMEraser again with other settings, same references

Every other argument goes to ``unlearn.py``. ``--rescore`` reruns only LLMEraser against the adapters an earlier
run saved (original, warm_retrain, its paired control, retrain) and prints the same table. ``warm_retrain`` and ``retrain`` are added to the baselines (the
fidelity reference and the clean-trained adapter).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

PEARSON_BAR = 0.9
SECONDS_BAR = 0.10
MEMORY_BAR = 1.5


def _headline(metrics: dict[str, float]) -> tuple[str, float]:
    for key in ("test/hr1_rank", "test/auc", "val/hr1_rank", "val/auc"):
        if key in metrics:
            return key, metrics[key]
    return "?", float("nan")


def verdict(report: dict[str, Any]) -> list[str]:
    """Lines of the acceptance table (figures, bars, pass/fail)."""
    methods, fidelity, cost = report["methods"], report["fidelity"], report["cost"]
    lines = [f"{report['dataset']} {report['task']}: n_train={report['n_train']} n_requests={report['n_requests']}"]
    for name in ("original", "llmeraser", "retrain", "warm_retrain", "sisa", "gradient_ascent", "npo"):
        if name in methods:
            key, value = _headline(methods[name]["metrics"])
            lines.append(f"  {name:>15}: {key} = {value:.4f}   ({methods[name].get('seconds', float('nan')):.1f} s)")
    if {"original", "llmeraser", "retrain"} <= set(methods):
        key, corrupted = _headline(methods["original"]["metrics"])
        unlearned, clean = methods["llmeraser"]["metrics"][key], methods["retrain"]["metrics"][key]
        gap = clean - corrupted
        moved = (unlearned - corrupted) / gap if gap else float("nan")
        lines.append(f"  effect: unlearned covers {moved:.2f} of the corrupted→clean gap in {key} ({gap:+.4f})")
    for key in ("pearson_vs_warm_retrain", "pearson_vs_warm_retrain_paired", "spearman_vs_warm_retrain_paired",
                "cosine_delta_vs_warm_retrain", "pearson_vs_retrain"):
        if key in fidelity:
            bar = f"  (bar ≥ {PEARSON_BAR}: {'met' if fidelity[key] >= PEARSON_BAR else 'NOT met'})" if key.startswith("pearson_vs_warm") else ""
            lines.append(f"  fidelity {key} = {fidelity[key]:.4f}{bar}")
    seconds, memory = cost["unlearn_over_train_seconds"], cost["unlearn_over_train_peak_memory"]
    lines.append(f"  cost: unlearn/train seconds = {seconds:.4f} (bar ≤ {SECONDS_BAR}: {'met' if seconds <= SECONDS_BAR else 'NOT met'})")
    lines.append(f"  cost: unlearn/train peak memory = {memory:.4f} (bar ≤ {MEMORY_BAR}: {'met' if memory <= MEMORY_BAR else 'NOT met'})")
    for name in ("original", "warm_retrain", "retrain"):  # --converge: how stationary the references are
        finish = methods.get(name, {}).get("converge")
        if finish:
            lines.append(
                f"  converge {name}: ‖∇J‖ {finish['grad_norm_before']:.3g} → {finish['grad_norm_after']:.3g}, "
                f"J {finish['objective_before']:.4f} → {finish['objective_after']:.4f}, "
                f"{finish['evaluations']} evaluations, {finish['seconds']:.1f} s"
            )
    solver = report["solver"]
    lines.append(f"  solver {solver['name']}: relative residual {solver['relative_residual']:.4g}, {solver['hvp_calls']} HVP calls, damping {solver['damping']}")
    return lines


def rescore(experiment_dir: Path, argv: list[str]) -> dict[str, Any]:
    """The earlier report with its ``llmeraser`` entry, solver, fidelity and cost replaced by a fresh solve."""
    import tempfile

    from lit_eraser.cli.unlearn_cli import build_experiment

    with tempfile.TemporaryDirectory() as scratch:  # rescoring writes nothing; the plan just needs a free name
        experiment = build_experiment([*argv, "--output_dir", str(Path(scratch) / "unused"), "--wandb_mode", "disabled"])
        fresh = experiment.rescore(experiment_dir)
    report = json.loads((experiment_dir / "report.json").read_text())
    report["methods"]["llmeraser"] = fresh.pop("llmeraser")
    report.update(fresh)
    return report


def main(argv: list[str]) -> None:
    if argv[:1] == ["--report"]:
        report = json.loads(Path(argv[1]).read_text())
    elif argv[:1] == ["--rescore"]:
        report = rescore(Path(argv[1]), argv[2:])
    else:
        from lit_eraser.cli.unlearn_cli import main as unlearn_main

        if "--baselines" not in argv:
            argv = [*argv, "--baselines", "[warm_retrain, retrain]"]
        report = unlearn_main(argv)
    print("\n".join(verdict(report)))


if __name__ == "__main__":
    main(sys.argv[1:])
