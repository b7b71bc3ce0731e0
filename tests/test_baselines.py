"""Baselines on a tiny synthetic adapter: each changes θ in the direction its objective says."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lit_eraser.baselines import BASELINES, BaselineContext, ShardEnsemble, ascend, fit_on_rows
from lit_eraser.baselines.sisa import shard_of_users, split_rows, touched_shards
from lit_eraser.data.synthetic import SyntheticDataModule
from lit_eraser.models import TallrecRecommender
from lit_eraser.unlearning.corruption import corrupt_rc_binary, remove_users
from lit_eraser.unlearning.experiment import per_item_losses
from lit_eraser.unlearning.requests import UnlearningRequest, build_pairs


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
    assert {"retrain", "warm_retrain", "sisa", "gradient_ascent", "npo"} <= set(BASELINES)


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


QUICK_FIT = {"max_epochs": 1, "accelerator": "cpu", "enable_progress_bar": False, "num_sanity_val_steps": 0}


def binary_datamodule() -> SyntheticDataModule:
    dm = SyntheticDataModule(kind="binary", n_train=32, n_val=8, n_test=16, history_len=3, num_items=48, n_genres=4)
    dm.setup()
    return dm


def context_for(trained, tmp_path, clean_rows, requests, **kwargs) -> BaselineContext:
    """A baseline context around the trained fixture saved as θ̂ (one-epoch fits)."""
    module, rows = trained
    run = tmp_path / "original"
    module.save_run(run)
    return BaselineContext(
        original_run=run, datamodule=binary_datamodule(), train_rows=rows, clean_rows=clean_rows, requests=requests,
        trainer_kwargs=QUICK_FIT, **kwargs,
    )


# ------------------------------------------------------------------------------------------------ SISA
def test_sisa_shards_partition_users_deterministically(trained) -> None:
    _, rows = trained
    first, again = shard_of_users(rows, 3, seed=5), shard_of_users(rows, 3, seed=5)
    assert first == again
    assert set(first) == {int(r["user"]) for r in rows}
    sizes = np.bincount(list(first.values()), minlength=3)
    assert sizes.max() - sizes.min() <= 1
    assert shard_of_users(rows, 3, seed=6) != first
    groups = split_rows(rows, first, 3)
    assert sorted(int(r["id"]) for g in groups for r in g) == sorted(int(r["id"]) for r in rows)
    with pytest.raises(ValueError, match="at least"):
        shard_of_users(rows, len(first) + 1, seed=0)


def test_removing_one_user_touches_exactly_its_shard(trained) -> None:
    _, rows = trained
    assignment = shard_of_users(rows, 4, seed=0)
    user = int(rows[0]["user"])
    removed = [int(r["id"]) for r in rows if int(r["user"]) == user]
    assert touched_shards(removed, rows, assignment) == [assignment[user]]
    other = next(r for r in rows if assignment[int(r["user"])] != assignment[user])
    assert touched_shards([*removed, int(other["id"])], rows, assignment) == sorted({assignment[user], assignment[int(other["user"])]})


def test_ensemble_of_one_adapter_scores_like_the_adapter(trained) -> None:
    """Averaging identical members changes nothing: the ensemble's AUC equals the Trainer-evaluated AUC."""
    from lit_eraser.unlearning.evaluate import evaluate

    module, _ = trained
    dm = binary_datamodule()
    ensemble = ShardEnsemble([module, module])
    expected = evaluate(module, dm, "test")
    got = ensemble.evaluate(dm, "test", batch_size=5)
    assert got["test/auc"] == pytest.approx(expected["test/auc"], abs=1e-6)
    assert got["test/accuracy"] == pytest.approx(expected["test/accuracy"], abs=1e-6)


def test_sisa_retrains_only_touched_shards_and_round_trips(trained, tmp_path) -> None:
    _, rows = trained
    removed = int(rows[0]["user"])
    requests = [UnlearningRequest(task="IR", id=int(r["id"])) for r in rows if int(r["user"]) == removed]
    clean = [r for r in rows if int(r["user"]) != removed]
    context = context_for(trained, tmp_path, clean, requests, sisa_shards=2)
    dm = context.datamodule
    ensemble, cost = BASELINES["sisa"](context)
    assert ensemble.info["retrained_shards"] == [shard_of_users(rows, 2, 0)[removed]]
    assert cost.seconds > 0 and ensemble.info["untouched_shard_seconds"] > 0
    assert len(ensemble.members) == 2
    # the members are different adapters (different shards), both differing from θ̂
    states = [m.adapter_state() for m in ensemble.members]
    assert any(not torch.equal(states[0][k], states[1][k]) for k in states[0])
    ensemble.save_run(tmp_path / "sisa")
    loaded = ShardEnsemble.load(tmp_path / "sisa")
    test_rows = list(dm.test_rows)
    assert torch.allclose(loaded.scores(test_rows), ensemble.scores(test_rows), atol=1e-6)


def test_sequential_ensemble_of_one_adapter_ranks_like_the_adapter(tmp_path) -> None:
    """Averaging candidate softmaxes of identical members keeps the argmax: hr1_rank equals the Trainer's."""
    from lit_eraser.models import LlaraRecommender
    from lit_eraser.models.backbone import TinyLlamaSettings
    from lit_eraser.models.sasrec import SasrecSettings
    from lit_eraser.unlearning.evaluate import evaluate

    dm = SyntheticDataModule(kind="sequential", n_train=32, n_val=8, n_test=24, batch_size=8, eval_batch_size=8)
    dm.setup("fit")
    module = LlaraRecommender(
        tiny=TinyLlamaSettings(hidden_size=32, num_layers=1, num_heads=2, max_position_embeddings=512),
        sasrec=SasrecSettings(hidden_size=16, num_layers=1, num_heads=1, epochs=1, batch_size=64),
        lora={"r": 2, "alpha": 4, "dropout": 0.0}, vocab_size=400, cache_dir=str(tmp_path), generation="off",
    )
    fit_on_rows(module, dm, None, QUICK_FIT)
    expected = evaluate(module, dm, "test")["test/hr1_rank"]
    assert ShardEnsemble([module, module]).evaluate(dm, "test", batch_size=7) == {"test/hr1_rank": pytest.approx(expected)}


def test_warm_retrain_is_seeded_so_paired_runs_agree(trained, tmp_path) -> None:
    """Two warm runs on the same rows give the same adapter: the paired fidelity reference cancels drift."""
    module, rows = trained
    context = context_for(trained, tmp_path, rows, [], warm_epochs=1, seed=3)
    first = BASELINES["warm_retrain"](context)[0].adapter_state()
    torch.manual_seed(12345)  # whatever happened in between
    second = BASELINES["warm_retrain"](context)[0].adapter_state()
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert any(not torch.equal(first[k], module.adapter_state()[k]) for k in first)
