"""Nothing lost, nothing broken written: output/adapter/cache overlap, marker-only overwrite, one winner per
output directory, stale temporaries, damaged cache entries, the cache key's seed, refusal of non-finite or
diverged updates, strict report JSON and the user's umask."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from lit_eraser.cli.unlearn_cli import main as unlearn_main
from lit_eraser.io import MARKER, OutputBusyError, atomic_directory, write_json
from lit_eraser.unlearning.corruption import CorruptionSpec
from lit_eraser.unlearning.experiment import ExperimentPlan
from test_unlearn_cli import CONFIG, TINY, adapter_run, snapshot, train_rows, unlearn_args, write_requests  # noqa: F401

REPO = Path(__file__).resolve().parents[1]
SYNTHETIC_QM = str(REPO / "configs/synthetic_qm.yaml")


def strict_load(path: Path) -> dict:
    def refuse(token: str) -> None:
        raise AssertionError(f"{path} holds a bare {token}: not valid JSON")

    return json.loads(path.read_text(), parse_constant=refuse)


# ----------------------------------------------------------------------------------------------- overlap
@pytest.mark.parametrize("where", ["adapter", "adapter/adapter/x", "parent"])
def test_output_dir_overlapping_the_adapter_is_refused(tmp_path: Path, where: str) -> None:
    adapter = tmp_path / "runs" / "qm"
    (adapter / "adapter").mkdir(parents=True)
    output = {"adapter": adapter, "adapter/adapter/x": adapter / "adapter" / "x", "parent": tmp_path / "runs"}[where]
    with pytest.raises(ValueError, match="could destroy it"):
        ExperimentPlan(output_dir=output, adapter=adapter, requests=tmp_path / "r.jsonl", overwrite=True,
                       cache_dir=tmp_path / "cache")


def test_output_dir_overlapping_the_cache_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"cache \(--cache_dir\)"):
        ExperimentPlan(output_dir=tmp_path, cache_dir=tmp_path / "cache", corruption=CorruptionSpec(), overwrite=True)


def test_adapter_is_output_dir_is_refused_end_to_end(adapter_run: Path, train_rows: dict, tmp_path: Path, capsys) -> None:
    requests = tmp_path / "requests.jsonl"
    write_requests(requests, train_rows)
    before = snapshot(adapter_run)
    with pytest.raises(SystemExit) as exit_info:
        unlearn_main(unlearn_args(adapter_run, requests, adapter_run, "--overwrite", "true"))
    assert exit_info.value.code == 2 and "could destroy it" in capsys.readouterr().err
    assert snapshot(adapter_run) == before


# ----------------------------------------------------------------------------------------------- overwrite
def test_overwrite_replaces_only_marked_directories(tmp_path: Path) -> None:
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("years of work")
    with pytest.raises(FileExistsError, match="not a lit-eraser output"):
        with atomic_directory(foreign, overwrite=True, marked=True) as tmp:
            (tmp / "x").write_text("new")
    assert (foreign / "thesis.tex").read_text() == "years of work"
    ours = tmp_path / "ours"
    with atomic_directory(ours, marked=True) as tmp:
        (tmp / "a").write_text("1")
    assert (ours / MARKER).is_file()
    with atomic_directory(ours, overwrite=True, marked=True) as tmp:
        (tmp / "a").write_text("2")
    assert (ours / "a").read_text() == "2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine", "ours"]  # no lock files or temporaries left


# ----------------------------------------------------------------------------------------------- concurrency
def test_a_second_writer_of_one_output_fails_clearly(tmp_path: Path) -> None:
    target = tmp_path / "exp"
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import sys
            from lit_eraser.io import output_lock
            with output_lock({str(target)!r}):
                print("locked", flush=True)
                sys.stdin.readline()
        """)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=REPO,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(OutputBusyError, match="another lit-eraser run"):
            with atomic_directory(target) as tmp:
                (tmp / "x").write_text("loser")
        assert not target.exists()
    finally:
        holder.communicate("\n", timeout=30)
    with atomic_directory(target) as tmp:  # released: now it can be written
        (tmp / "x").write_text("winner")
    assert (target / "x").read_text() == "winner"


def test_concurrent_unlearn_runs_to_one_output_dir_exactly_one_wins(adapter_run: Path, train_rows: dict, tmp_path: Path) -> None:
    requests = tmp_path / "requests.jsonl"
    write_requests(requests, train_rows)
    out = tmp_path / "exp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    runs = [
        subprocess.Popen([sys.executable, str(REPO / "unlearn.py"), *unlearn_args(adapter_run, requests, out)],
                         cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        for _ in range(2)
    ]
    results = [(run.wait(timeout=600), run.communicate()) for run in runs]
    codes = sorted(code for code, _ in results)
    errors = " ".join(err for _, (_, err) in results)
    assert codes == [0, 2], errors
    assert "another lit-eraser run" in errors or "already exists" in errors
    assert strict_load(out / "report.json")["n_requests"] == 3


# ----------------------------------------------------------------------------------------------- stale temps
def test_stale_temporaries_of_a_killed_run_are_removed_by_the_next(tmp_path: Path) -> None:
    target = tmp_path / "exp"
    for name in (".exp.tmp-abc123", ".exp.old-def456"):
        (tmp_path / name / "adapters").mkdir(parents=True)
        (tmp_path / name / "adapters" / "big.safetensors").write_bytes(b"0" * 1024)
    (tmp_path / ".other.tmp-zzz").mkdir()  # another target's temporary is not ours to remove
    with pytest.warns(UserWarning, match="interrupted run"):
        with atomic_directory(target, marked=True) as tmp:
            (tmp / "x").write_text("1")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.tmp-zzz", "exp"]


# ----------------------------------------------------------------------------------------------- cache
SMALL = ["--data.init_args.n_train", "32", "--trainer.max_epochs", "2", "--unlearn.solver", "ExactSettings",
         "--wandb_mode", "disabled", "--baselines", "[]"]


def test_cache_key_covers_the_seed_and_a_damaged_entry_is_rebuilt(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    first = unlearn_main(["--config", SYNTHETIC_QM, "--output_dir", str(tmp_path / "a"), "--cache_dir", str(cache), *SMALL])
    assert first["methods"]["original"]["cached"] is False
    again = unlearn_main(["--config", SYNTHETIC_QM, "--output_dir", str(tmp_path / "b"), "--cache_dir", str(cache), *SMALL])
    assert again["methods"]["original"]["cached"] is True
    assert again["methods"]["original"]["source"] == first["methods"]["original"]["source"]
    seeded = unlearn_main(["--config", SYNTHETIC_QM, "--output_dir", str(tmp_path / "c"), "--cache_dir", str(cache),
                           "--seed_everything", "1", *SMALL])
    assert seeded["methods"]["original"]["cached"] is False
    assert seeded["methods"]["original"]["source"] != first["methods"]["original"]["source"]
    assert len(list(cache.glob("original-*"))) == 2

    entry = Path(first["methods"]["original"]["source"])
    weights = entry / "adapter" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # damaged: truncated
    with pytest.warns(UserWarning, match="unusable"):
        rebuilt = unlearn_main(["--config", SYNTHETIC_QM, "--output_dir", str(tmp_path / "d"), "--cache_dir", str(cache), *SMALL])
    assert rebuilt["methods"]["original"]["cached"] is False
    assert strict_load(tmp_path / "d" / "report.json")["methods"]["original"]["cached"] is False


# ----------------------------------------------------------------------------------------------- broken updates
@pytest.mark.parametrize(
    "solver",
    [
        ["--unlearn.solver", "QPSettings", "--unlearn.solver.lr", "1e6", "--unlearn.solver.max_epochs", "30"],
        ["--unlearn.solver", "LissaSettings", "--unlearn.solver.scale", "1e-3"],
    ],
    ids=["qp-diverged", "lissa-nan"],
)
def test_diverged_or_non_finite_update_is_refused_and_nothing_written(tmp_path: Path, solver: list[str], capsys) -> None:
    out = tmp_path / "exp"
    args = ["--config", SYNTHETIC_QM, "--output_dir", str(out), "--cache_dir", str(tmp_path / "cache"), *SMALL, *solver]
    with pytest.raises(SystemExit) as exit_info:
        unlearn_main(args)
    assert exit_info.value.code == 2
    assert "unlearning refused" in capsys.readouterr().err
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".exp")]


def test_an_unconverged_update_is_written_only_when_accepted_and_flagged(tmp_path: Path) -> None:
    args = ["--config", SYNTHETIC_QM, "--cache_dir", str(tmp_path / "cache"), *SMALL,
            "--unlearn.solver", "CGSettings", "--unlearn.solver.max_iter", "1", "--unlearn.max_relative_residual", "1e-6"]
    with pytest.raises(SystemExit):
        unlearn_main([*args, "--output_dir", str(tmp_path / "refused")])
    assert not (tmp_path / "refused").exists()
    report = unlearn_main([*args, "--output_dir", str(tmp_path / "accepted"), "--unlearn.accept_unconverged", "true"])
    saved = strict_load(tmp_path / "accepted" / "report.json")
    assert saved["solver"]["within_residual_ceiling"] is False and saved["solver"]["relative_residual"] > 1e-6
    assert report["methods"]["llmeraser"]["within_residual_ceiling"] is False


def test_report_json_is_strict_and_flags_non_finite_values(tmp_path: Path) -> None:
    write_json(tmp_path / "r.json", {"a": float("nan"), "b": [1.0, float("inf")], "c": {"d": 2.0}})
    saved = strict_load(tmp_path / "r.json")
    assert saved["a"] is None and saved["b"] == [1.0, None] and saved["c"] == {"d": 2.0}
    assert saved["non_finite"] == ["a", "b[1]"]


# ----------------------------------------------------------------------------------------------- umask
def test_outputs_respect_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        with atomic_directory(tmp_path / "exp", marked=True) as tmp:
            write_json(tmp / "report.json", {"a": 1})
    finally:
        os.umask(old)
    assert (tmp_path / "exp").stat().st_mode & 0o777 == 0o755
    assert (tmp_path / "exp" / "report.json").stat().st_mode & 0o777 == 0o644


# ----------------------------------------------------------------------------------------------- truncated edit
def test_an_edit_the_prompt_limit_would_truncate_is_refused_by_unlearn(adapter_run: Path, train_rows: dict, tmp_path: Path, capsys) -> None:
    ids = sorted(train_rows)
    row = train_rows[ids[1]]
    outside = [i for i in range(96) if i not in row["candidates"] and i not in row["history"]]
    requests = tmp_path / "requests.jsonl"
    requests.write_text(json.dumps({"task": "QM", "id": ids[1], "history": outside[:40]}) + "\n")
    with pytest.raises(SystemExit) as exit_info:
        unlearn_main(unlearn_args(adapter_run, requests, tmp_path / "exp"))
    assert exit_info.value.code == 2
    assert "history items" in capsys.readouterr().err
    assert not (tmp_path / "exp").exists()


def test_an_adapter_trained_on_other_data_is_refused_by_unlearn(adapter_run: Path, train_rows: dict, tmp_path: Path, capsys) -> None:
    requests = tmp_path / "requests.jsonl"
    write_requests(requests, train_rows)
    with pytest.raises(SystemExit) as exit_info:
        unlearn_main(unlearn_args(adapter_run, requests, tmp_path / "exp", "--data.n_train", "64"))
    assert exit_info.value.code == 2
    assert "the data config gives 64" in capsys.readouterr().err
    assert not (tmp_path / "exp").exists()
