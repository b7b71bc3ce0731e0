"""Results a user can find and load (issue 12, item 8): the W&B run inside --output_dir with config, method table,
curves and adapter artifacts; the console summary; lit-eraser-summary on a folder; short solver names; compact
argument errors; quiet logs."""

from __future__ import annotations

import json
import logging
import struct
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import pytest

from lit_eraser.cli.common import (
    LightningChatterFilter,
    expand_solver_names,
    make_cli,
    one_model_summary,
    quiet_lightning,
)
from lit_eraser.cli.loggers import build_logger
from lit_eraser.cli.train_cli import TrainCLI
from lit_eraser.cli.unlearn_cli import UnlearnCLI
from lit_eraser.cli.unlearn_cli import main as unlearn_main
from lit_eraser.influence import SOLVERS
from lit_eraser.unlearning.report_logging import (
    CurveLogger,
    ReportSink,
    format_summary,
    log_report,
    method_table,
    stage,
    summary_main,
)

REPO = Path(__file__).resolve().parents[1]
QM = str(REPO / "configs/synthetic_qm.yaml")
TRAIN = str(REPO / "configs/synthetic_train.yaml")


# ------------------------------------------------------------------------------------------ offline W&B files
def wandb_records(run_dir: Path) -> list[Any]:
    """The records of an offline run's ``run-*.wandb`` file (W&B's LevelDB-style log of protobuf records)."""
    from wandb.proto import wandb_internal_pb2 as pb

    (path,) = run_dir.glob("run-*.wandb")
    data = path.read_bytes()
    ident, magic, _version = struct.unpack("<4sHB", data[:7])
    assert ident == b":W&B" and magic == 0xBEE1
    out, pos, block, pending = [], 7, 32768, b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # block trailer
            pos += left
            continue
        _checksum, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if length == 0 and kind == 0:
            break
        chunk, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind == 1:  # full
            payload = chunk
        elif kind == 2:  # first
            pending = chunk
            continue
        elif kind == 3:  # middle
            pending += chunk
            continue
        else:  # last
            payload, pending = pending + chunk, b""
        record = pb.Record()
        record.ParseFromString(payload)
        out.append(record)
    return out


def wandb_content(run_dir: Path) -> dict[str, Any]:
    """config, history rows, summary and artifacts of an offline run."""
    config: dict[str, Any] = {}
    history: list[dict[str, Any]] = []
    summary: dict[str, Any] = {}
    artifacts: list[dict[str, Any]] = []
    for record in wandb_records(run_dir):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            config.update({u.key: json.loads(u.value_json) for u in record.run.config.update})
        elif kind == "config":
            config.update({u.key: json.loads(u.value_json) for u in record.config.update})
        elif kind == "history":
            history.append({(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in record.history.item})
        elif kind == "summary":
            summary.update({(u.key or "/".join(u.nested_key)): json.loads(u.value_json) for u in record.summary.update})
        elif kind == "artifact":
            a = record.artifact
            artifacts.append({
                "name": a.name, "type": a.type, "metadata": json.loads(a.metadata or "{}"),
                "files": sorted(c.path for c in a.manifest.contents),
                "local": sorted(c.local_path for c in a.manifest.contents),
            })
    return {"config": config, "history": history, "summary": summary, "artifacts": artifacts}


def fake_report(cached: bool = True) -> dict[str, Any]:
    return {
        "dataset": "synthetic", "task": "QM", "n_train": 32, "n_requests": 3,
        "methods": {
            "llmeraser": {"metrics": {"test/hr1_rank": 0.25, "test/loss": 5.5}, "seconds": 2.0, "peak_memory_mib": 510.0,
                          "peak_memory_delta_mib": 10.0},
            "original": {"metrics": {"test/hr1_rank": 0.125, "test/loss": 5.6}, "seconds": 4.0, "peak_memory_mib": 500.0,
                         "source": "/somewhere/cache/original-abc", "cached": cached},
            "warm_retrain": {"metrics": {"test/hr1_rank": 0.5, "test/loss": None}, "seconds": 1.0,
                             "peak_memory_mib": 520.0},
        },
        "solver": {"name": "cg", "relative_residual": 0.01, "hvp_calls": 12, "damping": 0.5},
        "fidelity": {"pearson_vs_warm_retrain": 0.9, "spearman_vs_warm_retrain": 0.8,
                     "cosine_delta_vs_warm_retrain": 0.7, "pearson_vs_warm_retrain_paired": 0.95,
                     "spearman_vs_warm_retrain_paired": None, "cosine_delta_vs_warm_retrain_paired": 0.6},
        "cost": {"unlearn_over_train_seconds": 0.5},
    }


# ------------------------------------------------------------------------------------------ summary
def test_method_table_has_metrics_fidelity_and_cost() -> None:
    columns, rows = method_table(fake_report())
    table = {row[0]: dict(zip(columns, row)) for row in rows}
    assert list(table) == ["original", "llmeraser", "warm_retrain", "warm_retrain_paired"]
    assert table["llmeraser"]["x_train"] == pytest.approx(0.5) and table["original"]["x_train"] == pytest.approx(1.0)
    assert table["original"]["cached"] is True and table["llmeraser"]["cached"] is None
    assert table["warm_retrain"]["pearson"] == 0.9 and table["warm_retrain"]["cosine"] == 0.7
    assert table["warm_retrain"]["test/loss"] is None  # null in report.json (non-finite)
    assert table["warm_retrain_paired"]["pearson"] == 0.95 and table["warm_retrain_paired"]["spearman"] is None
    assert {"seconds", "peak_memory_mib", "test/hr1_rank", "spearman"} <= set(columns)


def test_console_summary_marks_cached_original_and_shows_fidelity() -> None:
    text = format_summary(fake_report())
    lines = text.splitlines()
    header = next(line for line in lines if line.startswith("method"))
    for column in ("hr1_rank", "seconds", "x train", "peak MiB", "pearson", "spearman", "cosine"):
        assert column in header
    assert any(line.startswith("original (cached)") for line in lines)
    assert "reused from the cache (/somewhere/cache/original-abc)" in text
    assert "0.900" in next(line for line in lines if line.startswith("warm_retrain "))
    assert "solver cg: relative residual 0.01, 12 HVPs" in text
    text.encode("ascii")  # a console with any encoding can print it
    assert "(cached)" not in format_summary(fake_report(cached=False))


def test_summary_accepts_a_run_folder_or_its_report(tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "report.json").write_text(json.dumps(fake_report()))
    assert summary_main([str(run)]) == 0
    from_folder = capsys.readouterr().out
    assert summary_main([str(run / "report.json")]) == 0
    from_file = capsys.readouterr().out
    assert "original (cached)" in from_folder and from_folder == from_file

    assert summary_main([str(tmp_path)]) == 2  # a folder without report.json: a clear error, no traceback
    assert "without report.json" in capsys.readouterr().err

    script = subprocess.run(
        [sys.executable, str(REPO / "benchmarks/summarize_report.py"), str(run)],
        capture_output=True, text=True, timeout=120,
    )
    assert script.returncode == 0, script.stderr
    assert "original (cached)" in script.stdout and "IsADirectoryError" not in script.stderr
    module = subprocess.run(
        [sys.executable, "-m", "lit_eraser.unlearning.report_logging", "--json", str(run)],
        capture_output=True, text=True, timeout=120,
    )
    assert module.returncode == 0, module.stderr
    assert json.loads(module.stdout)["rows"][0]["method"] == "original"


# ------------------------------------------------------------------------------------------ W&B
def test_log_report_puts_table_curves_config_and_artifacts_in_output_dir(tmp_path: Path) -> None:
    out = tmp_path / "exp"
    for method in ("original", "llmeraser"):
        (out / "adapters" / method / "adapter").mkdir(parents=True)
        (out / "adapters" / method / "adapter" / "adapter_model.safetensors").write_bytes(method.encode())
    report = fake_report()
    report["methods"]["original"]["curves"] = {"train/loss": [[0, 3.0], [4, 2.5], [8, 2.0]]}
    report["solver"]["residual_history"] = [1.0, 0.1, 0.01]
    (out / "report.json").write_text(json.dumps(report))
    sink = ReportSink(mode="offline", project="lit-eraser-test", config={"unlearn": {"damping": 0.5}, "path": out})
    log_report(sink, report, out)

    assert sink.location is not None and sink.location.parent == (out / "wandb").resolve()
    assert f"wandb sync {sink.location}" in sink.hint()
    content = wandb_content(sink.location)
    assert content["config"]["unlearn"] == {"damping": 0.5} and content["config"]["path"] == str(out)
    losses = [row["original/train/loss"] for row in content["history"] if "original/train/loss" in row]
    assert losses == [3.0, 2.5, 2.0]
    residuals = [row["solver/relative_residual"] for row in content["history"] if "solver/relative_residual" in row]
    assert residuals == [1.0, 0.1, 0.01]
    assert content["summary"]["llmeraser/test/hr1_rank"] == 0.25
    assert content["summary"]["fidelity/pearson_vs_warm_retrain"] == 0.9
    adapters = {a["name"]: a for a in content["artifacts"] if a["type"] == "adapter"}
    assert set(adapters) == {"exp-original", "exp-llmeraser"}
    assert adapters["exp-original"]["files"] == ["adapter/adapter_model.safetensors"]
    assert adapters["exp-original"]["metadata"]["cached"] is True
    (table_file,) = (sink.location / "files" / "media" / "table").glob("methods_*.table.json")
    table = json.loads(table_file.read_text())
    assert {"method", "seconds", "peak_memory_mib", "pearson", "spearman", "cosine"} <= set(table["columns"])


def test_csv_and_disabled_sinks(tmp_path: Path) -> None:
    sink = ReportSink(mode="csv")
    log_report(sink, fake_report(), tmp_path)
    assert sink.location == tmp_path / "methods.csv"
    assert sink.location.read_text().splitlines()[0].startswith("method,cached,test/hr1_rank")
    log_report(ReportSink(mode="disabled"), fake_report(), tmp_path / "nowhere")
    assert not (tmp_path / "nowhere").exists()


def test_train_logger_has_no_anonymous_setting_and_leaves_wandb_silent_alone(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("WANDB_SILENT", raising=False)
    logger = build_logger("offline", tmp_path / "logs", "lit-eraser-test", "run")
    assert "anonymous" not in logger._wandb_init
    assert "WANDB_SILENT" not in __import__("os").environ


def test_curve_logger_records_a_training_curve() -> None:
    import lightning as L
    import torch

    class Tiny(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(2))

        def training_step(self, batch: torch.Tensor, _index: int) -> torch.Tensor:
            loss = ((batch * self.w).sum(-1) ** 2).mean()
            self.log("train/loss", loss)
            return loss

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=0.01)

    curves = CurveLogger()
    trainer = L.Trainer(
        accelerator="cpu", max_epochs=2, logger=curves, log_every_n_steps=1, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False,
    )
    trainer.fit(Tiny(), train_dataloaders=torch.utils.data.DataLoader(torch.ones(8, 2), batch_size=2))
    points = curves.curves["train/loss"]
    assert len(points) == 8 and [step for step, _ in points] == sorted(step for step, _ in points)
    assert points[-1][1] < points[0][1]


# ------------------------------------------------------------------------------------------ short solver names
@pytest.mark.parametrize(
    ("given", "expected"),
    [("cg", "CGSettings"), ("CG", "CGSettings"), ("exact", "ExactSettings"), ("qp", "QPSettings"),
     ("Lissa", "LissaSettings"), ("DATAINF", "DataInfSettings"), ("CGSettings", "CGSettings"),
     ("lit_eraser.influence.solvers.CGSettings", "CGSettings")],
)
def test_short_solver_names_parse(given: str, expected: str, tmp_path: Path) -> None:
    cli = make_cli(UnlearnCLI, ["--config", QM, "--output_dir", str(tmp_path / "run"), "--unlearn.solver", given])
    assert type(cli.config_init["unlearn"].solver).__name__ == expected


def test_short_solver_name_with_equals_and_settings() -> None:
    args = expand_solver_names(["--unlearn.solver=cg", "--unlearn.solver.max_iter", "3", "--other", "cg"])
    assert args == ["--unlearn.solver=lit_eraser.influence.solvers.CGSettings", "--unlearn.solver.max_iter", "3",
                    "--other", "cg"]
    assert set(expand_solver_names(["--unlearn.solver", name])[1] for name in SOLVERS) == {
        f"{s.settings_class.__module__}.{s.settings_class.__name__}" for s in SOLVERS.values()
    }
    assert expand_solver_names(["--unlearn.solver", "NoSuchSolver"]) == ["--unlearn.solver", "NoSuchSolver"]


def test_solver_settings_stay_with_the_chosen_solver(tmp_path: Path) -> None:
    """jsonargparse alone turned ``--unlearn.solver cg --unlearn.solver.tol 1e-4`` into QPSettings (the first class
    with a ``tol``), silently, and did the same to a config file's CGSettings."""
    def solver(config: str, *args: str) -> Any:
        cli = make_cli(UnlearnCLI, ["--config", config, "--output_dir", str(tmp_path / "run"), *args])
        return cli.config_init["unlearn"].solver

    chosen = solver(QM, "--unlearn.solver", "cg", "--unlearn.solver.tol", "1e-4", "--unlearn.solver.max_iter=7")
    assert type(chosen).__name__ == "CGSettings" and chosen.tol == pytest.approx(1e-4) and chosen.max_iter == 7
    chosen = solver(QM, "--unlearn.solver", "lit_eraser.influence.solvers.LissaSettings", "--unlearn.solver.seed", "3")
    assert type(chosen).__name__ == "LissaSettings" and chosen.seed == 3
    kept = solver(QM, "--unlearn.solver.tol", "1e-4")  # the config's QPSettings, its other values kept
    assert type(kept).__name__ == "QPSettings" and kept.tol == pytest.approx(1e-4) and kept.lr == pytest.approx(0.02)

    import yaml

    config = yaml.safe_load(Path(QM).read_text())
    config["unlearn"]["solver"] = {"class_path": "CGSettings", "init_args": {"tol": 1e-3, "max_iter": 9}}
    cg_config = tmp_path / "cg.yaml"
    cg_config.write_text(yaml.safe_dump(config))
    kept = solver(str(cg_config), "--unlearn.solver.tol", "1e-5")
    assert type(kept).__name__ == "CGSettings" and kept.tol == pytest.approx(1e-5) and kept.max_iter == 9


# ------------------------------------------------------------------------------------------ compact errors
@pytest.mark.parametrize(
    ("cli_class", "config", "args", "needles"),
    [
        (UnlearnCLI, QM, ["--unlearn.solver.maxiter", "5"], ["--unlearn.solver.maxiter", "max_iter"]),
        (UnlearnCLI, QM, ["--unlearn.solver", "cg", "--unlearn.solver.maxiter", "5"], ["did you mean --unlearn.solver.max_iter"]),
        (UnlearnCLI, QM, ["--unlearn.solver", "NoSuchSolver"], ["NoSuchSolver", "cg, exact"]),
        (UnlearnCLI, QM, ["--no_such_option", "1"], ["--no_such_option"]),
        (TrainCLI, TRAIN, ["--trainer.maxepochs", "3"], ["--trainer.maxepochs", "did you mean --trainer.max_epochs"]),
        (TrainCLI, TRAIN, ["--data", "NoSuchDataModule"], ["NoSuchDataModule"]),
    ],
)
def test_argument_errors_are_two_lines_and_exit_2(cli_class, config, args, needles, tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        make_cli(cli_class, ["--config", config, "--output_dir", str(tmp_path / "run"), *args])
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert len(err) == 2 and err[0].startswith("error: ") and err[1].startswith("hint: ") and "--help" in err[1]
    assert "usage:" not in captured.err + captured.out
    for needle in needles:
        assert needle in captured.err


def test_typo_from_the_command_line_is_short() -> None:
    result = subprocess.run(
        [sys.executable, str(REPO / "unlearn.py"), "--config", QM, "--unlearn.solver.maxiter", "5"],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        # the config's solver is QPSettings: the setting of that name belongs to CG
        "error: --unlearn.solver.maxiter is not an option (did you mean --unlearn.solver cg --unlearn.solver.max_iter?)",
        "hint: unlearn.py --help lists every option; solvers: cg, exact, qp, lissa, datainf (or CGSettings, ...); "
        "`unlearn.py --unlearn.solver.help cg` lists one's settings",
    ]


# ------------------------------------------------------------------------------------------ quiet logs
def test_stage_lines_go_to_stderr(capsys) -> None:
    stage("training original")
    captured = capsys.readouterr()
    assert captured.err == "[lit-eraser] training original\n" and captured.out == ""


def test_chatter_filter_drops_the_tip_and_repeats_only() -> None:
    chatter = LightningChatterFilter()

    def shown(message: str, level: int = logging.INFO) -> bool:
        return chatter.filter(logging.LogRecord("lightning", level, __file__, 1, message, None, None))

    assert shown("GPU available: False, used: False") and not shown("GPU available: False, used: False")
    assert shown("TPU available: False, using: 0 TPU cores") and not shown("TPU available: False, using: 0 TPU cores")
    assert not shown("💡 Tip: For seamless cloud logging ... try installing [litlogger](https://...)")
    assert shown("`Trainer.fit` stopped: `max_epochs=2` reached.") and shown("`Trainer.fit` stopped: `max_epochs=2` reached.")
    assert shown("GPU available: False, used: False", logging.WARNING)  # warnings and errors always pass


def test_known_noise_warnings_are_ignored_others_are_not() -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet_lightning()
        warnings.warn("`isinstance(treespec, LeafSpec)` is deprecated, use ...", FutureWarning)
        warnings.warn("Starting from v1.9.0, `tensorboardX` has been removed as a dependency", UserWarning)
        warnings.warn("something else is wrong", UserWarning)
    assert [str(w.message) for w in caught] == ["something else is wrong"]


def test_one_model_summary_per_block(monkeypatch) -> None:
    import lightning as L
    import torch
    from lightning.pytorch.callbacks import ModelSummary, RichModelSummary

    calls: list[str] = []
    for cls in (ModelSummary, RichModelSummary):
        monkeypatch.setattr(cls, "summarize", staticmethod(lambda *a, **k: calls.append("summary")))

    class Tiny(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(1))

        def training_step(self, batch: torch.Tensor, _index: int) -> torch.Tensor:
            return (batch * self.w).sum()

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=0.01)

    def fit() -> None:
        trainer = L.Trainer(accelerator="cpu", max_steps=1, logger=False, enable_checkpointing=False,
                            enable_progress_bar=False, enable_model_summary=True)
        trainer.fit(Tiny(), train_dataloaders=torch.utils.data.DataLoader(torch.ones(2, 1)))

    with one_model_summary():
        fit()
        fit()
        fit()
    assert calls == ["summary"]
    fit()  # outside the block: Lightning's behaviour again
    assert calls == ["summary", "summary"]


# ------------------------------------------------------------------------------------------ unlearn.py end to end
def quick_unlearn(out: Path, cache: Path) -> list[str]:
    return [
        "--config", QM, "--output_dir", str(out), "--cache_dir", str(cache), "--wandb_mode", "offline",
        "--trainer.max_epochs", "2", "--unlearn.solver", "cg", "--unlearn.solver.max_iter", "40", "--unlearn.solver.tol", "1e-4", "--unlearn.damping", "5",
        "--baselines", "[warm_retrain]", "--warm_epochs", "1",
    ]


@pytest.fixture(scope="module")
def first_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("ux")
    out = root / "exp"
    result = subprocess.run(
        [sys.executable, str(REPO / "unlearn.py"), *quick_unlearn(out, root / "cache")],
        capture_output=True, text=True, timeout=600, cwd=root,
        env={**__import__("os").environ, "WANDB_MODE": "offline"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return {"root": root, "out": out, "stdout": result.stdout, "stderr": result.stderr}


def test_unlearn_wandb_run_lives_in_output_dir(first_run: dict[str, Any]) -> None:
    out: Path = first_run["out"]
    (run_dir,) = (out / "wandb").glob("offline-run-*")
    assert not (first_run["root"] / "logs").exists(), "nothing outside --output_dir"
    assert f"W&B offline run: {run_dir}" in first_run["stdout"]
    assert f"wandb sync {run_dir}" in first_run["stdout"]
    content = wandb_content(run_dir)
    config = content["config"]
    assert config["unlearn"]["solver"]["class_path"].endswith("CGSettings")
    assert config["unlearn"]["solver"]["init_args"]["max_iter"] == 40
    assert config["output_dir"] == str(out) and config["baselines"] == ["warm_retrain"]
    adapters = {a["metadata"]["method"] for a in content["artifacts"] if a["type"] == "adapter"}
    assert adapters == {p.name for p in (out / "adapters").iterdir()} >= {"original", "llmeraser", "warm_retrain"}
    (table_file,) = (run_dir / "files" / "media" / "table").glob("methods_*.table.json")
    table = json.loads(table_file.read_text())
    rows = {row[0]: dict(zip(table["columns"], row)) for row in table["data"]}
    assert {"original", "llmeraser", "warm_retrain"} <= set(rows)
    assert rows["warm_retrain"]["pearson"] is not None and rows["llmeraser"]["seconds"] > 0
    assert rows["original"]["cached"] is False and rows["llmeraser"]["peak_memory_mib"] > 0
    report = json.loads((out / "report.json").read_text())
    assert content["summary"]["llmeraser/test/hr1_rank"] == pytest.approx(report["methods"]["llmeraser"]["metrics"]["test/hr1_rank"])
    if report["solver"].get("residual_history"):  # once experiment.py records the CG residual curve
        assert any("solver/relative_residual" in row for row in content["history"])


def test_unlearn_console_is_quiet_and_summarised(first_run: dict[str, Any]) -> None:
    stdout, stderr = first_run["stdout"], first_run["stderr"]
    both = stdout + stderr
    assert both.count("Trainable params") == 1, "one model summary per run"
    assert both.count("GPU available") <= 1 and both.count("TPU available") <= 1
    for noise in ("litlogger", "LeafSpec", "tensorboardX", "anonymous setting"):
        assert noise not in both, noise
    header = next(line for line in stdout.splitlines() if line.startswith("method"))
    for column in ("hr1_rank", "seconds", "x train", "peak MiB", "pearson", "spearman", "cosine"):
        assert column in header
    assert "solver cg: relative residual" in stdout


def test_reused_original_is_marked_cached(first_run: dict[str, Any], capsys) -> None:
    out = first_run["root"] / "again"
    report = unlearn_main([*quick_unlearn(out, first_run["root"] / "cache"), "--wandb_mode", "disabled"])
    original = report["methods"]["original"]
    assert original["cached"] is True
    assert Path(original["source"]).parent == first_run["root"] / "cache"
    stdout = capsys.readouterr().out
    assert any(line.startswith("original (cached)") for line in stdout.splitlines())
    assert not (out / "wandb").exists()
