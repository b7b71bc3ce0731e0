"""Print the figures of unlearn.py runs side by side: metrics, cost and fidelity per method, and the solver.

    python benchmarks/summarize_report.py runs/lastfm_qm            # a run folder (unlearn.py --output_dir)
    python benchmarks/summarize_report.py runs/lastfm_qm/report.json  # or its report.json

The same as the ``lit-eraser-summary`` command (:func:`lit_eraser.unlearning.report_logging.summary_main`).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from lit_eraser.unlearning.report_logging import summary_main


def main(*paths: str | os.PathLike[str] | Sequence[str]) -> int:
    """``main("runs/x")``, ``main("runs/x/report.json", "runs/y")`` or ``main(["runs/x"])``; 0 when all were read."""
    flat = [os.fspath(p) for item in paths for p in ([item] if isinstance(item, (str, os.PathLike)) else list(item))]
    return summary_main(flat)


if __name__ == "__main__":
    raise SystemExit(summary_main(sys.argv[1:]))
