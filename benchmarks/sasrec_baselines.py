"""How much next-item signal LLaRA's item embeddings carry: SASRec alone, trained on the adapter's subset and on
the whole training split, against two embedding-free references, on LastFM's 20-candidate rows.

    LIT_ERASER_DATA=/path/to/data python benchmarks/sasrec_baselines.py [--max_train_rows 4000] [--epochs 5]

Prints HR@1 among the 20 candidates (chance 0.05) on validation and test for: target popularity in the training
split, the dot product of each candidate's SASRec embedding with the last history item's, and SASRec's own
scores. LLaRA on top of these embeddings can only be as good as the signal they carry.
"""

from __future__ import annotations

import argparse
import collections
import time

import torch

from lit_eraser.data import LastFMDataModule
from lit_eraser.models.sasrec import SasrecSettings, sasrec_candidate_hit_rate, train_sasrec


def hit_rate(rows, score) -> float:
    """HR@1 of ``score(row) -> [n_candidates]`` (ties go to the first candidate)."""
    hits = sum(int(row["candidates"][int(torch.as_tensor(score(row)).argmax())] == row["target"]) for row in rows)
    return hits / len(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max_train_rows", type=int, default=4000, help="the adapter's subset (lastfm configs)")
    parser.add_argument("--epochs", type=int, default=SasrecSettings().epochs)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    data = LastFMDataModule(seed=args.seed, max_train_rows=args.max_train_rows)
    data.setup("fit")
    splits = {"val": list(data.val_rows), "test": list(data.test_rows)}
    full = data.item_encoder_rows()
    popularity = collections.Counter(int(row["target"]) for row in full)
    print(f"LastFM: {len(data.train_rows)} adapter rows, {len(full)} rows in the split, {data.num_items} items")
    for name, rows in splits.items():
        print(f"  target popularity (full split)   {name:4} HR@1 {hit_rate(rows, lambda r: [popularity[c] for c in r['candidates']]):.3f}")
    settings = SasrecSettings(epochs=args.epochs)
    for label, train_rows in (("subset", data.train_rows), ("full split", full)):
        start = time.perf_counter()
        sasrec = train_sasrec(train_rows, data.num_items, settings, seed=args.seed)
        seconds = time.perf_counter() - start
        table = sasrec.item_table
        for name, rows in splits.items():
            last_item = hit_rate(rows, lambda r: table[list(r["candidates"])] @ table[r["history"][-1]])
            own = sasrec_candidate_hit_rate(sasrec, rows)
            print(f"  SASRec on the {label:10} {name:4} HR@1 {own:.3f}   last-item dot product {last_item:.3f}   ({seconds:.0f}s to train)")


if __name__ == "__main__":
    main()
