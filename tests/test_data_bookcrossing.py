"""Book-Crossing (TALLRec prompts): every real row parses; splits are seeded; the parser's edge cases."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lit_eraser.data import DATASETS, BookCrossingDataModule
from lit_eraser.data.bookcrossing import TEST_ID_OFFSET, parse_items, parse_prompt, read_prompts


def _record(liked: str, disliked: str, target: str, output: str = "Yes.") -> dict[str, str]:
    return {
        "instruction": "Given the user's preference ...",
        "input": f"User Preference: {liked}\nUser Unpreference: {disliked}\n"
        f'Whether the user will like the target book "{target}"?',
        "output": output,
    }


def test_parse_items_keeps_commas_and_quotes() -> None:
    text = (
        '"Kiss the Girls" written by James Patterson, "I, Claudius" written by Robert Graves, '
        '"\'Gentlemen Prefer Blondes\' \'but\'" written by Anita Loos, '
        '"The ""Quoted"" Book" written by Harry Connick, Jr.'
    )
    assert parse_items(text) == [
        '"Kiss the Girls" written by James Patterson',
        '"I, Claudius" written by Robert Graves',
        '"\'Gentlemen Prefer Blondes\' \'but\'" written by Anita Loos',
        '"The ""Quoted"" Book" written by Harry Connick, Jr.',
    ]
    assert parse_items("") == []


def test_parse_prompt_and_rejects_garbage() -> None:
    liked, disliked, target, label = parse_prompt(
        _record('"A" written by B', "", '"Friday" written by Robert Heinlein', "No.")
    )
    assert (liked, disliked, target, label) == (['"A" written by B'], [], '"Friday" written by Robert Heinlein', 0)
    with pytest.raises(ValueError, match="Yes"):
        parse_prompt(_record("", "", '"X" written by Y', "Maybe."))
    with pytest.raises(ValueError, match="Title"):
        parse_prompt(_record("not an item list", "", '"X" written by Y'))


def test_bad_row_is_named(tmp_path: Path) -> None:
    path = tmp_path / "valid.json"
    path.write_text(json.dumps([_record("", "", '"X" written by Y'), {"input": "??", "output": "Yes."}]))
    with pytest.raises(ValueError, match=r"row 1"):
        read_prompts(path)


@pytest.mark.real_data
@pytest.mark.parametrize("name, yes", [("valid.json", 1011), ("test.json", 1054)])
def test_every_real_row_parses(bookcrossing_dir: Path, name: str, yes: int) -> None:
    columns = read_prompts(bookcrossing_dir / name)
    assert len(columns["id"]) == 2427
    assert sum(columns["label"]) == yes
    counts = [len(a) + len(b) for a, b in zip(columns["liked"], columns["disliked"])]
    assert min(counts) >= 3 and max(counts) <= 10
    for items in columns["liked"] + columns["disliked"]:
        for item in items:
            assert item.startswith('"') and item.count('" written by ') >= 1


@pytest.mark.real_data
def test_module_splits(bookcrossing_dir: Path) -> None:
    assert DATASETS["bookcrossing"] is BookCrossingDataModule
    dm = BookCrossingDataModule(data_dir=str(bookcrossing_dir), seed=0)
    dm.prepare_data()
    dm.setup()
    assert dm.kind == "binary"
    assert (len(dm.train_rows), len(dm.val_rows), len(dm.test_rows)) == (2184, 243, 2427)
    train_cols, val_cols = dm.train_rows.to_dict(), dm.val_rows.to_dict()
    train, val = set(train_cols["id"]), set(val_cols["id"])
    assert not train & val and train | val == set(range(2427))
    assert dm.test_rows[0]["id"] == TEST_ID_OFFSET
    assert train_cols["user"] == train_cols["id"]
    first = dm.train_rows[0]
    assert first["id"] == 0 and first["target"] == '"The Colonel" written by Patrick A. Davis' and first["label"] == 0
    again = BookCrossingDataModule(data_dir=str(bookcrossing_dir), seed=0)
    again.setup()
    assert again.val_rows.to_dict() == dm.val_rows.to_dict()
    other = BookCrossingDataModule(data_dir=str(bookcrossing_dir), seed=1, val_fraction=0.2)
    other.setup()
    assert len(other.val_rows) == 485 and set(other.val_rows.to_dict()["id"]) != val
    assert any(dm.text_corpus())
