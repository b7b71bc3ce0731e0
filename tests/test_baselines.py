"""Baselines on a tiny synthetic adapter: each changes θ in the direction its objective says."""

from __future__ import annotations

import numpy as np
import pytest

from lit_eraser.baselines import BASELINES, ascend, fit_on_rows
from lit_eraser.data.synthetic import SyntheticDataModule
from lit_eraser.models import TallrecRecommender
from lit_eraser.unlearning.corruption import corrupt_rc_binary, remove_users
from lit_eraser.unlearning.experiment import per_item_losses
from lit_eraser.unlearning.requests import build_pairs


@pytest.fixture(scope="module")
def trained():
    dm = SyntheticDataModule(kind="binary", n_train=32, n_val=8, n_test=16, history_len=3, num_items=48, n_genres=4)
    dm.setup()
    module = TallrecRecommender(
        tiny={"hidden_size": 16, "num_layers": 1, "num_heads": 2, "max_position_embeddings": 320},
        lora={"r": 2, "alpha": 4, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]},
        vocab_size=768, max_length=320, lr=0.01, warmup_steps=2,
    )
    fit_on_rows(module, dm, None, {"max_epochs": 3, "accelerator": "cpu", "enable_progress_bar": False, "num_sanity_val_steps": 0})
    return module, list(dm.train_rows)


def test_registry_names() -> None:
    assert {"retrain", "warm_retrain", "gradient_ascent", "npo"} <= set(BASELINES)


@pytest.mark.parametrize("objective", ["gradient_ascent", "npo"])
def test_ascent_raises_forgotten_loss(trained, objective: str) -> None:
    module, rows = trained
    requests = remove_users(rows, 0.1, seed=0).requests
    forget = [z for z, _ in build_pairs(requests, {int(r["id"]): r for r in rows})]
    state = module.adapter_state()
    before = per_item_losses(module, forget)
    ascend(module, rows, requests, objective, steps=3)
    after = per_item_losses(module, forget)
    module.load_adapter_state(state)
    assert np.mean(after) > np.mean(before)


def test_ascent_with_edits_fits_the_edited_twins(trained) -> None:
    module, rows = trained
    corruption = corrupt_rc_binary(rows, 0.2, seed=1)  # flipped labels; requests restore the true ones
    twins = [t for _, t in build_pairs(corruption.requests, {int(r["id"]): r for r in corruption.rows})]
    state = module.adapter_state()
    before = per_item_losses(module, twins)
    ascend(module, corruption.rows, corruption.requests, "gradient_ascent", steps=3)
    after = per_item_losses(module, twins)
    module.load_adapter_state(state)
    assert np.mean(after) < np.mean(before)
