"""The command lines: every shipped config parses, bad configs fail clearly, train.py writes a run directory."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from lit_eraser.cli.common import make_cli
from lit_eraser.cli.train_cli import TrainCLI
from lit_eraser.cli.train_cli import main as train_main
from lit_eraser.cli.unlearn_cli import UnlearnCLI
from lit_eraser.data.base import RecDataModule
from lit_eraser.unlearning.eraser import UnlearnSettings
from lit_eraser.models.base import RecommenderModule

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO / "configs").glob("*.yaml"))
TRAIN_CONFIGS = [c for c in CONFIGS if "_train" in c.name]
UNLEARN_CONFIGS = [c for c in CONFIGS if "_train" not in c.name]


def run_script(script: str, *args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(REPO / script), *args], cwd=cwd, capture_output=True, text=True, timeout=300
    )


def test_every_config_is_a_train_or_unlearn_recipe() -> None:
    assert len(TRAIN_CONFIGS) >= 9 and len(UNLEARN_CONFIGS) >= 8


# GPU recipes (LLaMA2-7B, bf16-mixed) are instantiated with the accelerator switched to this machine's CPU.
CPU = ["--trainer.accelerator", "cpu", "--trainer.precision", "32-true"]


@pytest.mark.parametrize("config", TRAIN_CONFIGS, ids=lambda p: p.name)
def test_train_config_instantiates(config: Path, tmp_path: Path) -> None:
    cli = make_cli(
        TrainCLI, ["--config", str(config), "--output_dir", str(tmp_path / "run"), "--wandb_mode", "disabled", *CPU]
    )
    assert isinstance(cli.model, RecommenderModule) and isinstance(cli.datamodule, RecDataModule)
    assert cli.model.kind == cli.datamodule.kind
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("config", UNLEARN_CONFIGS, ids=lambda p: p.name)
def test_unlearn_config_instantiates(config: Path, tmp_path: Path) -> None:
    cli = make_cli(UnlearnCLI, ["--config", str(config), "--output_dir", str(tmp_path / "run")])
    assert cli.model.kind == cli.datamodule.kind
    assert isinstance(cli.config_init["unlearn"], UnlearnSettings)
    assert cli.config_init["corruption"] is not None or cli.config["requests"] is not None


def test_cli_help_documents_the_options() -> None:
    result = run_script("unlearn.py", "--help")
    assert result.returncode == 0
    for option in ("--unlearn.solver", "--unlearn.damping", "--corruption", "--baselines", "--adapter", "--requests"):
        assert option in result.stdout, option


def test_unknown_dataset_is_a_clear_error(tmp_path: Path) -> None:
    result = run_script(
        "train.py", "--config", str(REPO / "configs/synthetic_train.yaml"), "--data", "NoSuchDataModule",
        "--output_dir", str(tmp_path / "run"),
    )
    assert result.returncode != 0
    assert "NoSuchDataModule" in result.stderr
    assert not (tmp_path / "run").exists()


def test_unknown_solver_is_a_clear_error(tmp_path: Path) -> None:
    result = run_script(
        "unlearn.py", "--config", str(REPO / "configs/synthetic_qm.yaml"), "--unlearn.solver", "NoSuchSolver",
        "--output_dir", str(tmp_path / "run"),
    )
    assert result.returncode != 0
    assert "NoSuchSolver" in result.stderr
    assert not (tmp_path / "run").exists()


TINY = [
    "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "3", "--trainer.limit_val_batches", "1",
    "--trainer.limit_test_batches", "1", "--trainer.enable_progress_bar", "false", "--wandb_mode", "disabled",
    "--model.init_args.tiny.hidden_size", "32", "--model.init_args.tiny.num_layers", "1",
    "--model.init_args.vocab_size", "384", "--model.init_args.generation", "off",
]


def test_train_writes_run_directory_and_refuses_to_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = ["--config", str(REPO / "configs/synthetic_train.yaml"), "--output_dir", str(out), *TINY]
    metrics = train_main(args)
    for name in (
        "adapter/adapter_config.json", "adapter/adapter_model.safetensors", "adapter/projector.safetensors",
        "adapter/recommender.json", "tokenizer/tokenizer.json", "base_model/config.json", "config.yaml",
        "metrics.json",
    ):
        assert (out / name).is_file(), name
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["test/hr1_rank"] == pytest.approx(metrics["test/hr1_rank"])
    assert 0.0 <= saved["test/hr1_rank"] <= 1.0
    assert RecommenderModule.load(out).kind == "sequential"
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    result = run_script("train.py", *args)
    assert result.returncode != 0 and "already exists" in result.stderr
    assert before == {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert not [p for p in tmp_path.iterdir() if p.name != "run" and p.name != "logs"]


def test_missing_data_root_is_a_clear_error(tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        train_main([
            "--config", str(REPO / "configs/lastfm_train.yaml"), "--data.init_args.data_dir", str(tmp_path / "nowhere"),
            "--output_dir", str(tmp_path / "run"), "--wandb_mode", "disabled",
        ])
    assert exit_info.value.code != 0
    err = capsys.readouterr().err
    assert "nowhere" in err and "train_data.df" in err
    assert not (tmp_path / "run").exists()


def test_malicious_dataframe_pickle_is_a_clear_error(tmp_path: Path, capsys) -> None:
    import os
    import pickle

    class Exploit:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    data = tmp_path / "lastfm"
    data.mkdir()
    for name in ("train_data.df", "Val_data.df", "Test_data.df"):
        (data / name).write_bytes(pickle.dumps(Exploit()))
    (data / "id2name.txt").write_text("0::a\n1::b\n", encoding="utf-8")
    with pytest.raises(SystemExit) as exit_info:
        train_main([
            "--config", str(REPO / "configs/lastfm_train.yaml"), "--data.init_args.data_dir", str(data),
            "--data.init_args.verify_checksums", "false", "--output_dir", str(tmp_path / "run"), "--wandb_mode", "disabled",
        ])
    assert exit_info.value.code != 0
    assert "system" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
