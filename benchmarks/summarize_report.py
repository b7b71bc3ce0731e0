"""Print the figures of an unlearn.py report side by side: metrics per method, cost ratios, solver, fidelity.

    python benchmarks/summarize_report.py runs/lastfm_qm/report.json
"""

from __future__ import annotations

import json
import sys


def main(path: str) -> None:
    report = json.loads(open(path, encoding="utf-8").read())
    print(f"{report['dataset']} {report['task']}: n_train={report['n_train']} n_requests={report['n_requests']}")
    metrics = sorted({k for m in report["methods"].values() for k in m["metrics"]})
    print(f"{'method':>14} " + " ".join(f"{m.split('/')[-1]:>13}" for m in metrics) + f" {'seconds':>9} {'peak MiB':>9}")
    for name, entry in report["methods"].items():
        values = " ".join(f"{entry['metrics'].get(m, float('nan')):13.4f}" for m in metrics)
        print(f"{name:>14} {values} {entry.get('seconds', float('nan')):9.1f} {entry.get('peak_memory_mib', float('nan')):9.0f}")
    solver = report["solver"]
    print(f"solver {solver['name']}: residual {solver['relative_residual']:.3g}, {solver['hvp_calls']} HVPs, damping {solver['damping']}")
    for key, value in report.get("cost", {}).items():
        print(f"cost {key}: {value:.4f}")
    for key, value in report.get("fidelity", {}).items():
        print(f"fidelity {key}: {value:.4f}")


if __name__ == "__main__":
    main(sys.argv[1])
