"""unlearn.py end to end on a tiny synthetic adapter: the report/adapter/ledger contract, and bad input that
must fail before any work with the original adapter left byte-identical."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest

from lit_eraser.cli.train_cli import main as train_main
from lit_eraser.cli.unlearn_cli import build_experiment, main as unlearn_main
from lit_eraser.data.synthetic import SyntheticDataModule
from lit_eraser.io import directory_checksums, sha256_file
from lit_eraser.models.base import RecommenderModule

REPO = Path(__file__).resolve().parents[1]
CONFIG = str(REPO / "configs/synthetic_train.yaml")
TINY = [
    "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "4", "--trainer.limit_val_batches", "1",
    "--trainer.limit_test_batches", "1", "--trainer.enable_progress_bar", "false", "--wandb_mode", "disabled",
    "--model.init_args.tiny.hidden_size", "32", "--model.init_args.tiny.num_layers", "1",
    "--model.init_args.vocab_size", "384", "--model.init_args.generation", "off",
]
CG = [
    "--unlearn.solver", "CGSettings", "--unlearn.solver.max_iter", "4", "--unlearn.solver.num_batches", "2",
    "--unlearn.damping", "10.0", "--unlearn.residual_rows", "16",
]


def snapshot(directory: Path) -> dict[str, str]:
    return directory_checksums(directory)


@pytest.fixture(scope="module")
def adapter_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("trained") / "run"
    train_main(["--config", CONFIG, "--output_dir", str(out), *TINY])
    return out


@pytest.fixture(scope="module")
def train_rows() -> dict[int, dict]:
    dm = SyntheticDataModule(kind="sequential", n_train=1024)  # as configs/synthetic_train.yaml
    dm.setup()
    return dm.row_by_id()


def write_requests(path: Path, rows: dict[int, dict]) -> list[dict]:
    """One IR, one QM (last history item replaced) and one RC (another candidate) request."""
    ids = sorted(rows)
    qm_row, rc_row = rows[ids[1]], rows[ids[2]]
    used = set(qm_row["history"]) | set(qm_row["candidates"])
    replacement = next(i for i in range(96) if i not in used)
    lines = [
        {"task": "IR", "id": ids[0]},
        {"task": "QM", "id": ids[1], "history": qm_row["history"][:-1] + [replacement]},
        {"task": "RC", "id": ids[2], "target": next(c for c in rc_row["candidates"] if c != rc_row["target"])},
    ]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return lines


def unlearn_args(adapter: Path, requests: Path, out: Path, *extra: str) -> list[str]:
    return [
        "--config", CONFIG, "--adapter", str(adapter), "--requests", str(requests), "--output_dir", str(out),
        "--wandb_mode", "disabled", "--trainer.enable_progress_bar", "false", *CG, *extra,
    ]


def test_unlearn_writes_report_adapters_and_ledger(adapter_run: Path, train_rows: dict, tmp_path: Path) -> None:
    requests = tmp_path / "requests.jsonl"
    lines = write_requests(requests, train_rows)
    before = snapshot(adapter_run)
    out = tmp_path / "exp"
    report = unlearn_main(unlearn_args(adapter_run, requests, out))

    assert snapshot(adapter_run) == before, "the original adapter must never be modified"
    saved = json.loads((out / "report.json").read_text())
    assert saved["task"] == "mixed" and saved["n_requests"] == 3 and saved["n_train"] == len(train_rows)
    assert set(saved["methods"]) == {"original", "llmeraser"}
    for entry in saved["methods"].values():
        assert {"metrics", "seconds", "peak_memory_mib"} <= set(entry)
        assert 0.0 <= entry["metrics"]["test/hr1_rank"] <= 1.0
    assert saved["solver"]["name"] == "cg" and saved["solver"]["hvp_calls"] > 0
    assert saved["solver"]["damping"] == pytest.approx(10.0)
    assert math.isfinite(saved["solver"]["relative_residual"]) and saved["solver"]["relative_residual"] > 0
    assert saved == json.loads(json.dumps(report))

    eraser = out / "adapters" / "llmeraser"
    ledger = [json.loads(line) for line in (eraser / "ledger.jsonl").read_text().splitlines()]
    assert [entry["id"] for entry in ledger if entry["type"] == "request"] == [line["id"] for line in lines]
    update = ledger[-1]
    assert update["type"] == "update" and update["solver"]["name"] == "cg"
    for name, digest in update["checksums"].items():
        assert sha256_file(eraser / name) == digest
    original = RecommenderModule.load(out / "adapters" / "original").adapter_state()
    unlearned = RecommenderModule.load(eraser).adapter_state()
    assert any((original[k] != unlearned[k]).any() for k in original)


def test_malformed_requests_fail_before_work(adapter_run: Path, train_rows: dict, tmp_path: Path, capsys) -> None:
    requests = tmp_path / "bad.jsonl"
    first = min(train_rows)
    requests.write_text(
        json.dumps({"task": "IR", "id": first}) + "\n"
        + "{not json\n"
        + json.dumps({"task": "QM", "id": 10**9, "history": [1, 2]}) + "\n"
        + json.dumps({"task": "RC", "id": first + 1, "target": train_rows[first + 1]["target"]}) + "\n"
    )
    before = snapshot(adapter_run)
    with pytest.raises(SystemExit) as exit_info:
        unlearn_main(unlearn_args(adapter_run, requests, tmp_path / "exp"))
    assert exit_info.value.code != 0
    err = capsys.readouterr().err
    assert "line 2" in err and "line 3" in err and "line 4" in err and "line 1" not in err
    assert not (tmp_path / "exp").exists()
    assert snapshot(adapter_run) == before


def test_corrupt_adapter_is_refused(adapter_run: Path, train_rows: dict, tmp_path: Path, capsys) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(adapter_run, broken)
    weights = broken / "adapter" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    requests = tmp_path / "requests.jsonl"
    write_requests(requests, train_rows)
    with pytest.raises(SystemExit) as exit_info:
        unlearn_main(unlearn_args(broken, requests, tmp_path / "exp"))
    assert exit_info.value.code != 0
    assert "adapter_model.safetensors" in capsys.readouterr().err
    assert not (tmp_path / "exp").exists()


def test_mismatched_tokenizer_is_refused(adapter_run: Path, train_rows: dict, tmp_path: Path, capsys) -> None:
    other = tmp_path / "other"
    train_main(["--config", CONFIG, "--output_dir", str(other), *TINY, "--model.init_args.vocab_size", "400"])
    mixed = tmp_path / "mixed"
    shutil.copytree(adapter_run, mixed)
    shutil.rmtree(mixed / "tokenizer")
    shutil.copytree(other / "tokenizer", mixed / "tokenizer")
    requests = tmp_path / "requests.jsonl"
    write_requests(requests, train_rows)
    with pytest.raises(SystemExit) as exit_info:
        unlearn_main(unlearn_args(mixed, requests, tmp_path / "exp"))
    assert exit_info.value.code != 0
    assert "tokenizer" in capsys.readouterr().err.lower()
    assert not (tmp_path / "exp").exists()


def test_existing_output_dir_is_refused(adapter_run: Path, train_rows: dict, tmp_path: Path, capsys) -> None:
    requests = tmp_path / "requests.jsonl"
    write_requests(requests, train_rows)
    out = tmp_path / "exp"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(SystemExit) as exit_info:
        unlearn_main(unlearn_args(adapter_run, requests, out))
    assert exit_info.value.code != 0
    assert "already exists" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_sisa_and_warm_retrain_in_report(adapter_run: Path, train_rows: dict, tmp_path: Path) -> None:
    requests = tmp_path / "requests.jsonl"
    write_requests(requests, train_rows)
    out = tmp_path / "exp"
    quick = ["--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "1"]
    report = unlearn_main(
        unlearn_args(adapter_run, requests, out, "--baselines", "[sisa, warm_retrain]", "--sisa_shards", "3", "--warm_epochs", "1", "--warm_lr", "0.001", *quick)
    )
    fidelity = report["fidelity"]
    for key in ("pearson_vs_warm_retrain", "pearson_vs_warm_retrain_paired", "cosine_delta_vs_warm_retrain_paired"):
        assert -1.0 <= fidelity[key] <= 1.0
    assert fidelity["warm_control_seconds"] > 0
    assert "sisa" not in {k.split("_vs_")[-1] for k in fidelity}  # an ensemble has no single θ to compare

    # Rescoring with the run's own settings against its saved references reproduces its LLMEraser figures.
    args = unlearn_args(adapter_run, requests, tmp_path / "unused", "--warm_epochs", "1", *quick)
    again = build_experiment(args).rescore(out)
    assert again["llmeraser"]["metrics"] == pytest.approx(report["methods"]["llmeraser"]["metrics"], abs=1e-6)
    for key in ("pearson_vs_warm_retrain", "pearson_vs_warm_retrain_paired"):
        assert again["fidelity"][key] == pytest.approx(fidelity[key], abs=1e-6)
    assert not (tmp_path / "unused").exists()
    entry = report["methods"]["sisa"]
    assert entry["shards"] == 3 and 1 <= len(entry["retrained_shards"]) <= 3  # three requests touch ≤ 3 shards
    assert 0.0 <= entry["metrics"]["test/hr1_rank"] <= 1.0 and entry["seconds"] > 0
    saved = json.loads((out / "adapters" / "sisa" / "sisa.json").read_text())
    assert saved["members"] == ["shard_00", "shard_01", "shard_02"]
    assert all((out / "adapters" / "sisa" / name / "adapter" / "adapter_model.safetensors").is_file() for name in saved["members"])


def test_too_many_sisa_shards_fail_before_work(adapter_run: Path, train_rows: dict, tmp_path: Path, capsys) -> None:
    requests = tmp_path / "requests.jsonl"
    write_requests(requests, train_rows)
    with pytest.raises(SystemExit) as exit_info:
        unlearn_main(unlearn_args(adapter_run, requests, tmp_path / "exp", "--baselines", "[sisa]", "--sisa_shards", "100000"))
    assert exit_info.value.code != 0
    assert "100000 SISA shards need at least 100000 users" in capsys.readouterr().err
    assert not (tmp_path / "exp").exists()
