"""Input limits and clear errors (issue 12, items 6 and 7): edits the prompt limit would truncate, size limits on
data files read with checksums off, and one-line errors (exit 2, a hint) instead of tracebacks or floods."""

from __future__ import annotations

import errno
import json
import pickle
import resource
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from lit_eraser.cli.errors import MAX_MESSAGE_CHARS, exit_on_user_error
from lit_eraser.data import SyntheticDataModule
from lit_eraser.data.base import MAX_TITLE_CHARS, DataLimitError, read_limited_bytes
from lit_eraser.data.bookcrossing import read_prompts
from lit_eraser.data.lastfm import LastFMDataModule, read_id2name, read_sessions
from lit_eraser.data.movielens import read_u_data, read_u_item
from lit_eraser.data.safe_pickle import (
    CorruptPickleError,
    OversizedPickleError,
    read_dataframe_pickle,
    safe_loads,
)
from lit_eraser.models import LoraSettings, TallrecRecommender, TinyLlamaSettings
from lit_eraser.models.llara import LlaraRecommender
from lit_eraser.models.prompts import edit_prompt_check, prompt_truncation
from lit_eraser.models.sasrec import SasrecSettings
from lit_eraser.unlearning.requests import (
    MAX_SHOWN_PROBLEMS,
    RequestError,
    RequestFileError,
    UnlearningRequest,
    load_requests,
    read_requests,
    validate_requests,
)

REPO = Path(__file__).resolve().parents[1]
TINY = TinyLlamaSettings(hidden_size=32, num_layers=1, num_heads=2, max_position_embeddings=512)
SASREC = SasrecSettings(hidden_size=16, num_layers=1, num_heads=1, epochs=1, batch_size=64)


def by_id(rows):
    return {row["id"]: row for row in rows}


def write_lines(path: Path, lines) -> Path:
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path


def frame_of(columns: dict) -> pd.DataFrame:
    """A DataFrame as the real LLaRA files hold it: object-dtype column names (pandas >= 3 would otherwise
    pickle them as an Arrow string array, which the allow-list does not admit)."""
    frame = pd.DataFrame(columns)
    frame.columns = pd.Index(list(columns), dtype=object)
    return frame


def run_child(code: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter (for what could crash or exhaust the test process on old code)."""
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=timeout, cwd=REPO
    )


# A child that caps its own address space 1 GiB above what its imports use: code that reads or allocates without
# bound fails there with MemoryError instead of eating the machine's memory.
CAPPED = """
import resource
def cap(extra=2**30):
    size = int(open("/proc/self/status").read().split("VmSize:")[1].split()[0]) * 1024
    resource.setrlimit(resource.RLIMIT_AS, (size + extra, resource.getrlimit(resource.RLIMIT_AS)[1]))
"""


# ============================================================================ 1. edits the prompt would truncate
@pytest.fixture(scope="module")
def binary_dm():
    dm = SyntheticDataModule(kind="binary", n_train=32, n_val=8, n_test=8)
    dm.setup("fit")
    return dm


@pytest.fixture(scope="module")
def tallrec(binary_dm, tmp_path_factory):
    return TallrecRecommender(
        tiny=TINY, vocab_size=400, max_length=256, cache_dir=str(tmp_path_factory.mktemp("cache")),
        lora=LoraSettings(r=2, alpha=4, dropout=0.0),
    ).build(binary_dm).eval()


@pytest.fixture(scope="module")
def seq_dm():
    dm = SyntheticDataModule(kind="sequential", n_train=32, n_val=8, n_test=8, history_len=3, n_candidates=8)
    dm.setup("fit")
    return dm


@pytest.fixture(scope="module")
def llara(seq_dm, tmp_path_factory):
    torch.manual_seed(0)
    return LlaraRecommender(
        tiny=TINY, sasrec=SASREC, vocab_size=400, max_length=128, max_history=10,
        cache_dir=str(tmp_path_factory.mktemp("cache")), lora=LoraSettings(r=2, alpha=4, dropout=0.0),
    ).build(seq_dm).eval()


def long_name(seed: int, chars: int) -> str:
    """A plausible item name of about ``chars`` characters (words the tokenizer has not merged)."""
    rng = np.random.default_rng(seed)
    words = ["".join(chr(ord("a") + int(c)) for c in rng.integers(0, 26, size=int(rng.integers(3, 9)))) for _ in range(chars)]
    return " ".join(words)[:chars].strip()


def test_a_2mb_edit_name_is_refused_cheaply(binary_dm, tmp_path):
    """The report's case: a QM edit whose item name is 2 MB. Refused by a length bound before any tokenizing,
    with a short message (the name is not echoed)."""
    row = binary_dm.train_rows[0]
    path = write_lines(tmp_path / "r.jsonl", [{"task": "QM", "id": row["id"], "liked": ["x" * 2_000_000]}])
    calls = []
    with pytest.raises(RequestError, match=f"at most {MAX_TITLE_CHARS:,}") as info:
        read_requests(path, by_id(binary_dm.train_rows), "binary", fits=lambda z: calls.append(z) or True)
    assert len(str(info.value)) < 1000
    assert calls == []  # never reached the (expensive) prompt check


def test_an_absurdly_long_edit_list_is_refused(seq_dm):
    row = seq_dm.train_rows[0]
    history = [i for i in range(seq_dm.num_items) if i not in row["candidates"]] * 200  # ~8k items
    with pytest.raises(RequestError, match="at most 1,000"):
        validate_requests([UnlearningRequest("QM", row["id"], {"history": history})], by_id(seq_dm.train_rows), "sequential")


def test_binary_edit_that_the_prompt_limit_would_truncate_is_refused(tallrec, binary_dm):
    rows = by_id(binary_dm.train_rows)
    row = binary_dm.train_rows[0]
    names = [long_name(i, MAX_TITLE_CHARS - 10) for i in range(3)]  # each under the cheap bound
    edited = {**row, "liked": list(row["liked"]) + names}
    # What happened before: encode() silently drops the oldest items until the prompt fits.
    full = tallrec._text_ids([tallrec_full(tallrec, edited)])[0]
    assert len(full) > tallrec.max_length
    assert tallrec._prompts([edited])[0] != full
    # Now: the unchanged row fits, the edit is refused with a clear reason.
    assert prompt_truncation(tallrec, row) is None
    assert "max_length=256" in prompt_truncation(tallrec, edited)
    request = UnlearningRequest("QM", row["id"], {"liked": edited["liked"]})
    with pytest.raises(RequestError, match="would not be the requested edit"):
        validate_requests([request], rows, "binary", fits=edit_prompt_check(tallrec))
    # A short edit of the same row passes.
    validate_requests(
        [UnlearningRequest("QM", row["id"], {"liked": list(row["liked"]) + ["a new book"]})], rows, "binary",
        fits=edit_prompt_check(tallrec),
    )


def tallrec_full(model, row):
    from lit_eraser.models.prompts import full_prompt_text

    return full_prompt_text(model, row)


def test_sequential_edit_longer_than_the_prompt_shows_is_refused(llara, seq_dm):
    rows = by_id(seq_dm.train_rows)
    row = seq_dm.train_rows[0]
    outside = [i for i in range(seq_dm.num_items) if i not in row["candidates"]]
    long_history = outside[:14]  # more than max_history=10: the prompt would keep only the last 10
    assert prompt_truncation(llara, {**row, "history": outside[:4]}) is None
    reason = prompt_truncation(llara, {**row, "history": long_history})
    assert reason is not None and "of its 14 history items" in reason
    fits = edit_prompt_check(llara)
    with pytest.raises(RequestError, match="history items") as info:
        validate_requests(
            [
                UnlearningRequest("QM", row["id"], {"history": long_history}),
                UnlearningRequest("QM", seq_dm.train_rows[1]["id"], {"history": outside[:4]}),
            ],
            rows, "sequential", seq_dm.num_items, fits=fits,
        )
    assert [number for number, _ in info.value.problems] == [1]


def test_fits_hook_verdicts_and_errors(seq_dm):
    rows = by_id(seq_dm.train_rows)
    row = seq_dm.train_rows[0]
    new = [i for i in range(seq_dm.num_items) if i not in row["candidates"] and i not in row["history"]][:2]
    request = [UnlearningRequest("QM", row["id"], {"history": new})]
    validate_requests(request, rows, "sequential", fits=lambda z: None)
    validate_requests(request, rows, "sequential", fits=lambda z: True)
    with pytest.raises(RequestError, match="max_length"):
        validate_requests(request, rows, "sequential", fits=lambda z: False)
    with pytest.raises(RequestError, match="too long for this model"):
        validate_requests(request, rows, "sequential", fits=lambda z: "too long for this model")

    def boom(z):
        raise ValueError("no room")

    with pytest.raises(RequestError, match="no room"):
        validate_requests(request, rows, "sequential", fits=boom)
    seen = []
    validate_requests(request, rows, "sequential", fits=lambda z: seen.append(z) or True)
    assert seen[0]["history"] == new and seen[0]["candidates"] == row["candidates"]  # z', not z


# ============================================================================ 2. size limits on data files
def test_bytearray_bomb_pickle_is_refused_before_allocating(tmp_path):
    """The report's case: an allow-listed ``builtins.bytearray(1.5e9)`` grew RSS to 1.95 GB before rejection."""

    class Bomb:
        def __reduce__(self):
            return (bytearray, (1_500_000_000,))

    path = tmp_path / "train_data.df"
    path.write_bytes(pickle.dumps(Bomb(), protocol=4))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(OversizedPickleError, match="refusing to allocate") as info:
        read_dataframe_pickle(path)
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mib < 200
    assert str(path) in str(info.value)


def test_allocations_are_charged_against_one_budget_per_file():
    """Many allocations that each look small add up: one shared 1 MB bytes object turned into 100 bytearrays."""
    shared = b"x" * 1_000_000

    class Copy:
        def __reduce__(self):
            return (bytearray, (shared,))

    with pytest.raises(OversizedPickleError):
        safe_loads(pickle.dumps([Copy() for _ in range(100)], protocol=4))


@pytest.mark.parametrize(
    "shape, dtype", [((10**9,), "b"), ((10**5, 10**5), "b")], ids=["1e9", "1e5x1e5"]
)
def test_huge_array_shapes_are_refused(shape, dtype):
    from numpy._core.multiarray import _reconstruct

    class Huge:
        def __reduce__(self):
            return (_reconstruct, (np.ndarray, shape, dtype.encode()))

    with pytest.raises(OversizedPickleError):
        safe_loads(pickle.dumps(Huge(), protocol=4))


def test_object_array_state_that_does_not_match_its_shape_is_refused():
    """numpy reads past the state's list (segfault) when an object array's shape is larger; runs in a child."""
    code = """
        import pickle, numpy as np
        from numpy._core.multiarray import _reconstruct
        from lit_eraser.data.safe_pickle import safe_loads

        class Lie:
            def __init__(self, n): self.n = n
            def __reduce__(self):
                return (_reconstruct, (np.ndarray, (0,), b"b"), (1, (self.n,), np.dtype(object), False, [1, 2]))

        for n in (3, 10**9):
            try:
                safe_loads(pickle.dumps(Lie(n), protocol=4))
                print("loaded", n)
            except Exception as err:
                print("refused", n, type(err).__name__)
    """
    result = run_child(CAPPED + textwrap.dedent(code).replace("\nfor n", "\ncap()\nfor n"))
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split("\n")[:2] == ["refused 3 CorruptPickleError", "refused 1000000000 OversizedPickleError"]


def test_real_shaped_frames_still_load(tmp_path):
    """Regression guard: the bounded unpickler still reads frames shaped like LLaRA's (protocols 4 and 5)."""
    rows = 5000
    frame = frame_of(
        {"seq": [[int(i), 7, 7] for i in range(rows)], "len_seq": np.full(rows, 3), "next": np.arange(rows)}
    )
    for protocol in (4, 5):
        path = tmp_path / f"p{protocol}.df"
        path.write_bytes(pickle.dumps(frame, protocol=protocol))
        pd.testing.assert_frame_equal(read_dataframe_pickle(path), frame)


def test_pickle_file_size_is_bounded(tmp_path, monkeypatch):
    import lit_eraser.data.safe_pickle as safe_pickle

    path = tmp_path / "big.df"
    path.write_bytes(pickle.dumps(pd.DataFrame({"a": np.arange(10_000)}), protocol=4))
    with pytest.raises(OversizedPickleError, match="larger than"):
        read_dataframe_pickle(path, max_bytes=1000)
    monkeypatch.setattr(safe_pickle, "MAX_PICKLE_BYTES", 1000)
    with pytest.raises(OversizedPickleError):
        read_dataframe_pickle(path)
    with pytest.raises(OversizedPickleError, match="device or a pipe"):
        read_dataframe_pickle("/dev/zero")  # at most 1001 bytes are read


def _lastfm_dir(tmp_path: Path, titles: list[str]) -> Path:
    data = tmp_path / "lastfm"
    data.mkdir()
    (data / "id2name.txt").write_text("".join(f"{i}::{t}\n" for i, t in enumerate(titles)), encoding="utf-8")
    frame = frame_of({"seq": [[0, 1, 2, 3]] * 4, "len_seq": [3] * 4, "next": [3] * 4})
    for name in ("train_data.df", "Val_data.df", "Test_data.df"):
        (data / name).write_bytes(pickle.dumps(frame, protocol=4))
    return data


def test_a_5mb_title_is_refused_before_the_tokenizer(tmp_path):
    """The report's case: a 5 MB title in id2name.txt hung tokenizer training for more than 15 minutes."""
    titles = [f"artist {i}" for i in range(30)]
    titles[2] = "y" * 5_000_000
    data = _lastfm_dir(tmp_path, titles)
    started = time.monotonic()
    with pytest.raises(DataLimitError, match=r"id2name.txt:3: an item title/name of 5,000,000 characters") as info:
        LastFMDataModule(data_dir=str(data), verify_checksums=False).setup("fit")
    assert time.monotonic() - started < 10
    assert len(str(info.value)) < 500
    with pytest.raises(DataLimitError):
        read_id2name(data / "id2name.txt")


def test_title_bound_in_u_item_and_tallrec_prompts(tmp_path):
    (tmp_path / "u.item").write_text("1|Toy Story (1995)|x\n2|" + "z" * 3000 + "|x\n", encoding="latin-1")
    with pytest.raises(DataLimitError, match=r"u.item:2"):
        read_u_item(tmp_path / "u.item")

    def record(liked: str) -> dict:
        return {
            "instruction": "",
            "input": f'User Preference: {liked}\nUser Unpreference: \nWhether the user will like the target book ""T" written by A"?',
            "output": "Yes.",
        }

    long_item = '"' + "w" * 2000 + '" written by Someone'
    (tmp_path / "long_item.json").write_text(json.dumps([record('"ok" written by A'), record(long_item)]))
    with pytest.raises(DataLimitError, match="row 1"):
        read_prompts(tmp_path / "long_item.json")
    huge = '"' * 5_000_000  # the item regex is quadratic on this; refused before it runs
    (tmp_path / "huge.json").write_text(json.dumps([record(huge)]))
    started = time.monotonic()
    with pytest.raises(DataLimitError, match="an input of 5,000,100 characters"):
        read_prompts(tmp_path / "huge.json")
    assert time.monotonic() - started < 10


def test_text_corpus_refuses_long_titles_of_any_datamodule():
    dm = SyntheticDataModule(kind="sequential", n_train=8, n_val=4, n_test=4)
    dm.setup("fit")
    assert len(list(dm.text_corpus())) == dm.num_items
    dm.item_titles[1] = "q" * (MAX_TITLE_CHARS + 1)
    with pytest.raises(DataLimitError, match="SyntheticDataModule"):
        list(dm.text_corpus())


def test_text_data_files_are_bounded_and_never_read_whole_from_a_device(tmp_path):
    (tmp_path / "u.item").write_text("1|Toy Story (1995)|x\n" * 100, encoding="latin-1")
    with pytest.raises(DataLimitError, match="larger than"):
        read_u_item(tmp_path / "u.item", max_bytes=100)
    with pytest.raises(DataLimitError, match="device or a pipe"):
        read_limited_bytes("/dev/zero", max_bytes=2**20)
    with pytest.raises(DataLimitError, match="is a directory"):
        read_limited_bytes(tmp_path)
    with pytest.raises(DataLimitError):
        read_u_data("/dev/zero", 10, max_bytes=2**20)


def test_deeply_nested_tallrec_json_is_a_value_error(tmp_path):
    (tmp_path / "valid.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ValueError, match="nested too deeply"):
        read_prompts(tmp_path / "valid.json")


@pytest.mark.parametrize(
    "seq, match",
    [
        (5, "seq must be a list of item ids"),
        ([[1, 2], [3, 4]], "seq must hold integers"),
        (np.zeros((2, 5), dtype=np.int64), "one-dimensional"),
        (["a", "b", "c", "d"], "seq must hold integers"),
    ],
    ids=["scalar", "nested-list", "2d-array", "strings"],
)
def test_wrongly_shaped_lastfm_cells_are_value_errors(tmp_path, seq, match):
    frame = frame_of({"seq": [[0, 1, 2, 9], seq], "len_seq": [3, 3], "next": [3, 3]})
    path = tmp_path / "train_data.df"
    path.write_bytes(pickle.dumps(frame, protocol=4))
    with pytest.raises(ValueError, match=match) as info:
        read_sessions(path, padding=9)
    assert "row 1" in str(info.value) and str(path) in str(info.value)


def test_len_seq_outside_its_seq_is_a_value_error(tmp_path):
    frame = frame_of({"seq": [[0, 1, 2]], "len_seq": [7], "next": [3]})
    path = tmp_path / "Val_data.df"
    path.write_bytes(pickle.dumps(frame, protocol=4))
    with pytest.raises(ValueError, match="len_seq 7 is outside"):
        read_sessions(path, padding=9)


# ============================================================================ 3. clear errors, capped output
def run_cli(func, capsys) -> tuple[int, list[str]]:
    with pytest.raises(SystemExit) as info:
        exit_on_user_error(func)()
    return info.value.code, capsys.readouterr().err.rstrip("\n").split("\n")


def test_request_path_that_is_a_directory(tmp_path, capsys):
    with pytest.raises(RequestFileError, match="is a directory"):
        load_requests(tmp_path)
    code, err = run_cli(lambda: load_requests(tmp_path), capsys)
    assert code == 2 and len(err) == 2
    assert err[0].startswith("error: RequestFileError:") and err[1].startswith("hint: ")


def test_request_path_dev_zero_reads_a_bounded_amount(capsys):
    with pytest.raises(RequestFileError, match="device or an endless stream"):
        load_requests("/dev/zero", max_bytes=2**20)
    code, err = run_cli(lambda: load_requests("/dev/zero", max_bytes=2**20), capsys)
    assert code == 2 and len(err) == 2 and err[1].startswith("hint: ")


def test_request_path_dev_zero_with_the_default_limit():
    """Old code read /dev/zero until the memory ran out: run it in a child whose address space is capped."""
    code = CAPPED + textwrap.dedent(
        """
        from lit_eraser.unlearning.requests import load_requests
        cap()
        try:
            load_requests("/dev/zero")
        except Exception as err:
            print(f"refused: {type(err).__name__}: {err}"[:500])
        """
    )
    result = run_child(code)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "refused: RequestFileError: /dev/zero: more than 67,108,864 bytes" in result.stdout


def test_request_file_size_limit(tmp_path):
    path = write_lines(tmp_path / "r.jsonl", [{"task": "IR", "id": i} for i in range(200)])
    with pytest.raises(RequestFileError, match="more than the 1,000 allowed"):
        load_requests(path, max_bytes=1000)


def test_100k_deep_nesting_in_a_request_line(tmp_path, seq):
    rows, num_items = seq
    deep = '{"task": "QM", "id": %d, "history": %s%s}' % (rows[0]["id"], "[" * 100_000, "]" * 100_000)
    path = write_lines(tmp_path / "r.jsonl", [{"task": "IR", "id": rows[1]["id"]}, deep])
    requests = load_requests(path)
    assert len(requests) == 1 and requests.parse_errors == [(2, "malformed JSON: nested too deeply (a request is one flat object)")]
    with pytest.raises(RequestError, match="line 2: malformed JSON: nested too deeply"):
        validate_requests(requests, by_id(rows), "sequential", num_items)


def test_moderately_deep_edit_values_give_a_short_message(tmp_path, seq):
    rows, num_items = seq
    deep = '{"task": "QM", "id": %d, "history": [%s1%s]}' % (rows[0]["id"], "[" * 500, "]" * 500)
    path = write_lines(tmp_path / "r.jsonl", [deep])
    with pytest.raises(RequestError, match="non-integer item") as info:
        read_requests(path, by_id(rows), "sequential", num_items)
    assert len(str(info.value)) < 500


def test_huge_bad_request_file_gives_a_capped_error(tmp_path, seq, capsys):
    """The report's case: a 100k-line bad request file produced an 8.7 MB error."""
    rows, num_items = seq
    lines = [{"task": "RC", "id": 10**9 + i, "target": -1} for i in range(100_000)]
    path = write_lines(tmp_path / "bad.jsonl", lines)
    with pytest.raises(RequestError) as info:
        read_requests(path, by_id(rows), "sequential", num_items)
    error = info.value
    assert len(error.problems) == 200_000  # unknown id and bad target on each line, all available to code
    message = str(error)
    assert len(message) < 6000
    assert message.count("\n  line ") == MAX_SHOWN_PROBLEMS
    assert f"more problems on" in message and "(not shown)" in message
    code, err = run_cli(lambda: read_requests(path, by_id(rows), "sequential", num_items), capsys)
    assert code == 2 and sum(len(line) for line in err) < 8000 and err[-1].startswith("hint: ")


def test_a_line_with_many_keys_is_checked_in_linear_time(tmp_path, seq):
    rows, num_items = seq
    fields = ", ".join(f'"k{i}": 0' for i in range(100_000))
    path = write_lines(tmp_path / "r.jsonl", ['{"task": "IR", "id": %d, %s}' % (rows[0]["id"], fields)])
    started = time.monotonic()
    with pytest.raises(RequestError, match="and 99,995 more do not belong") as info:
        read_requests(path, by_id(rows), "sequential", num_items)
    assert time.monotonic() - started < 10
    assert len(str(info.value)) < 1000


def test_disk_full_is_a_clear_error(capsys):
    code, err = run_cli(lambda: Path("/dev/full").write_text("x" * 100_000), capsys)
    assert code == 2 and len(err) == 2
    assert err[0].startswith("error: disk full") and "No space left on device" in err[0]
    assert err[1].startswith("hint: free space")


def test_disk_full_reported_by_a_native_library_is_a_clear_error(capsys):
    def save():
        try:
            raise OSError(errno.ENOSPC, "No space left on device", "/runs/out/adapter/adapter_model.safetensors")
        except OSError as err:
            raise RuntimeError("safetensors: could not write the file") from err

    code, err = run_cli(save, capsys)
    assert code == 2 and "adapter_model.safetensors" in err[0] and "disk full" in err[0]

    def tokenizer_save():
        raise Exception("No space left on device (os error 28)")

    code, err = run_cli(tokenizer_save, capsys)
    assert code == 2 and err[0].startswith("error: disk full")


def test_bugs_keep_their_traceback_and_long_messages_are_capped(capsys):
    with pytest.raises(KeyError):
        exit_on_user_error(lambda: {}["missing"])()
    code, err = run_cli(lambda: (_ for _ in ()).throw(ValueError("v" * 100_000)), capsys)
    assert code == 2 and len(err[0]) < MAX_MESSAGE_CHARS + 200 and "more characters not shown" in err[0]


def test_unlearn_cli_refuses_a_directory_and_dev_zero_as_requests(tmp_path, capsys):
    """End to end: exit 2, two lines on stderr, nothing written (before any training)."""
    from lit_eraser.cli.unlearn_cli import main as unlearn_main

    for requests in (tmp_path / "a_directory", Path("/dev/zero")):
        (tmp_path / "a_directory").mkdir(exist_ok=True)
        with pytest.raises(SystemExit) as info:
            unlearn_main([
                "--config", str(REPO / "configs/synthetic_qm.yaml"), "--corruption", "null", "--requests", str(requests),
                "--output_dir", str(tmp_path / "out"), "--cache_dir", str(tmp_path / "cache"), "--wandb_mode", "disabled",
            ])
        assert info.value.code == 2
        err = [line for line in capsys.readouterr().err.splitlines() if line.startswith(("error:", "hint:"))]
        assert len(err) == 2 and "RequestFileError" in err[0] and str(requests) in err[0]
        assert not (tmp_path / "out").exists() and not (tmp_path / "cache").exists()
