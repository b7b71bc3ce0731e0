"""LlaraRecommender on tiny synthetic data: encoding, slots, per-item loss, θ, training, ranking, generation."""

from __future__ import annotations

import lightning as L
import pytest
import torch
import torch.nn.functional as F

from lit_eraser.data import SyntheticDataModule
from lit_eraser.models import (
    LlaraRecommender,
    LoraSettings,
    SasrecSettings,
    TinyLlamaSettings,
    parse_choice,
)
from lit_eraser.models.tokenizer import CANDIDATE_SLOT, HISTORY_SLOT
from model_training import loss_before_and_after

TINY = TinyLlamaSettings(hidden_size=32, num_layers=1, num_heads=2, max_position_embeddings=512)
SASREC = SasrecSettings(hidden_size=16, num_layers=1, num_heads=1, epochs=2, batch_size=64)



def make_llara(cache_dir, **kwargs) -> LlaraRecommender:
    defaults = {
        "tiny": TINY, "sasrec": SASREC, "vocab_size": 400, "cache_dir": str(cache_dir),
        "lora": LoraSettings(r=4, alpha=8, dropout=0.0),
    }
    defaults.update(kwargs)
    return LlaraRecommender(**defaults)


@pytest.fixture(scope="module")
def datamodule():
    dm = SyntheticDataModule(kind="sequential", n_train=64, n_val=16, n_test=16, batch_size=8, eval_batch_size=8)
    dm.setup("fit")
    return dm


@pytest.fixture(scope="module")
def model(datamodule, tmp_path_factory):
    torch.manual_seed(0)
    m = make_llara(tmp_path_factory.mktemp("cache")).build(datamodule)
    with torch.no_grad():  # LoRA B starts at zero; make θ non-trivial so every path is exercised
        for name, p in m.adapter_parameters().items():
            if "lora_B" in name:
                p.normal_(0.0, 0.05)
    return m.eval()


def rows_of(split, n, start=0):
    return [split[i] for i in range(start, start + n)]


def test_encode_masks_prompt_and_padding(model, datamodule):
    rows = rows_of(datamodule.train_rows, 4)
    batch = model.encode(rows)
    assert set(batch) == {"input_ids", "attention_mask", "labels", "response_index", "slot_item_ids"}
    for i, row in enumerate(rows):
        response = model.response_ids(row["target"])
        length = int(batch["attention_mask"][i].sum())
        assert batch["attention_mask"][i, :length].all() and not batch["attention_mask"][i, length:].any()
        labels = batch["labels"][i]
        # Exactly the response tokens (title + eos) are labelled; prompt and padding are -100.
        assert labels[length - len(response) : length].tolist() == response
        assert (labels[: length - len(response)] == -100).all() and (labels[length:] == -100).all()
        assert batch["input_ids"][i, length - 1].item() == model.eos_id
        assert (batch["input_ids"][i, length:] == model.pad_id).all()
        # response_index points at the positions whose logits predict the response tokens.
        index = batch["response_index"][i, : len(response)]
        assert index.tolist() == list(range(length - len(response) - 1, length - 1))


def test_prompt_text_and_slot_alignment(model, datamodule):
    row = datamodule.train_rows[0]
    batch = model.encode([row])
    text = model.tokenizer.decode(batch["input_ids"][0][batch["attention_mask"][0].bool()])
    assert text.count(HISTORY_SLOT) == len(row["history"]) and text.count(CANDIDATE_SLOT) == len(row["candidates"])
    assert "Choose the next one from:" in text and "Answer:" in text
    ids, slots = batch["input_ids"][0], batch["slot_item_ids"][0]
    h = model.tokenizer.convert_tokens_to_ids(HISTORY_SLOT)
    c = model.tokenizer.convert_tokens_to_ids(CANDIDATE_SLOT)
    assert slots[ids == h].tolist() == list(row["history"])
    assert slots[ids == c].tolist() == list(row["candidates"])
    assert (slots[(ids != h) & (ids != c)] == -1).all()


def test_slot_positions_receive_projected_item_embeddings(model, datamodule):
    batch = model.encode(rows_of(datamodule.train_rows, 2))
    seen = {}
    layer = model.decoder.layers[0]

    def capture(module, args, kwargs):
        seen["h"] = (args[0] if args else kwargs["hidden_states"]).detach()

    handle = layer.register_forward_pre_hook(capture, with_kwargs=True)
    try:
        with torch.no_grad():
            model(batch)
    finally:
        handle.remove()
    hidden = seen["h"]
    slots = batch["slot_item_ids"]
    with torch.no_grad():
        projected = model.projector(model.item_encoder.item_table[slots[slots >= 0]])
        tokens = model.base_model.get_input_embeddings()(batch["input_ids"][slots < 0])
    torch.testing.assert_close(hidden[slots >= 0], projected)
    torch.testing.assert_close(hidden[slots < 0], tokens)


def manual_losses(model, batch):
    """Per-item mean NLL over response tokens from the full HF forward (all logits, standard shift)."""
    with torch.no_grad():
        out = model.base_model(inputs_embeds=model.input_embeddings(batch), attention_mask=batch["attention_mask"])
        logits = out.logits.float()[:, :-1]
        labels = batch["labels"][:, 1:]
        losses = []
        for i in range(labels.shape[0]):
            keep = labels[i] != -100
            losses.append(F.cross_entropy(logits[i][keep], labels[i][keep]))
    return torch.stack(losses)


def test_per_item_loss_matches_manual_computation(model, datamodule):
    batch = model.encode(rows_of(datamodule.train_rows, 5))
    with torch.no_grad():
        losses = model(batch)
    assert losses.shape == (5,) and losses.dtype == torch.float32
    torch.testing.assert_close(losses, manual_losses(model, batch), rtol=1e-5, atol=1e-5)
    # Without the precomputed response_index the loss is the same.
    without = {k: v for k, v in batch.items() if k != "response_index"}
    with torch.no_grad():
        torch.testing.assert_close(model(without), losses)


def test_per_item_loss_invariant_to_batch_composition(model, datamodule):
    rows = rows_of(datamodule.train_rows, 6)
    with torch.no_grad():
        together = model(model.encode(rows))
        alone = torch.cat([model(model.encode([row])) for row in rows])
        reversed_ = model(model.encode(rows[::-1])).flip(0)
    torch.testing.assert_close(together, alone, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(together, reversed_, rtol=1e-5, atol=1e-5)


def test_adapter_parameters_are_lora_and_projector_only(model):
    theta = model.adapter_parameters()
    lora = [n for n in theta if ".lora_A." in n or ".lora_B." in n]
    projector = [n for n in theta if n.startswith("projector.")]
    assert len(lora) == 2 * 7 * TINY.num_layers  # q,k,v,o,gate,up,down x (A, B) per layer
    assert len(projector) == 4 and len(lora) + len(projector) == len(theta)
    named = dict(model.named_parameters())
    assert all(named[n] is p and p.requires_grad for n, p in theta.items())
    frozen = [n for n, p in model.named_parameters() if n not in theta]
    assert frozen and not any(named[n].requires_grad for n in frozen)
    assert not any("lm_head" in n or "embed_tokens" in n or "item_encoder" in n for n in theta)
    assert list(theta) == [n for n, _ in model.named_parameters() if n in theta]  # fixed order


def test_forward_is_functional(model, datamodule):
    from torch.func import functional_call

    batch = model.encode(rows_of(datamodule.train_rows, 3))
    theta = model.adapter_parameters()
    with torch.no_grad():
        direct = model(batch)
        via = functional_call(model, {k: v.detach() for k, v in theta.items()}, (batch,))
        doubled = functional_call(model, {k: 2 * v.detach() for k, v in theta.items()}, (batch,))
    torch.testing.assert_close(direct, via)
    assert not torch.allclose(direct, doubled)
    torch.testing.assert_close(model(batch).detach(), direct)  # the module's own θ is untouched
    # Double backward (Hessian-vector product) works: eager attention.
    params = list(theta.values())
    loss = model(batch).mean()
    grads = torch.autograd.grad(loss, params, create_graph=True)
    vector = [torch.randn_like(p) for p in params]
    hvp = torch.autograd.grad(sum((g * v).sum() for g, v in zip(grads, vector)), params)
    assert all(torch.isfinite(h).all() for h in hvp)


def test_gauss_newton_outputs_reproduce_forward(model, datamodule):
    batch = model.encode(rows_of(datamodule.train_rows, 3))
    with torch.no_grad():
        outputs, loss_fn = model.gauss_newton_outputs(batch)
        torch.testing.assert_close(loss_fn(outputs), model(batch))


def test_training_steps_reduce_loss(datamodule, tmp_path):
    torch.manual_seed(0)
    model = make_llara(tmp_path, lr=1e-2, warmup_steps=0).build(datamodule)
    rows = rows_of(datamodule.train_rows, 16)
    before, after = loss_before_and_after(model, model.encode(rows), steps=15)
    assert after < before - 0.5, (before, after)


def test_candidate_scores_equal_response_log_likelihoods(model, datamodule):
    rows = rows_of(datamodule.val_rows, 2)
    scores = model.candidate_scores(rows)
    assert scores.shape == (2, 20)
    for i, row in enumerate(rows):
        variants = [dict(row, target=c) for c in row["candidates"]]
        batch = model.encode(variants)
        with torch.no_grad():
            expected = -model(batch) * (batch["labels"] != -100).sum(1)
        torch.testing.assert_close(scores[i], expected, rtol=1e-4, atol=1e-4)


def test_ranking_hr1_is_one_for_a_model_forced_to_prefer_the_target(model, datamodule, monkeypatch):
    """All test rows share one target; boosting the target's tokens makes ranking pick it every time."""
    from lit_eraser.data.candidates import draw_candidates

    target = 7
    wanted = set(model.response_ids(target))
    # Items whose response tokens are all among the target's could tie; keep them out of the candidates.
    excluded = [i for i in range(datamodule.num_items) if i != target and set(model.response_ids(i)) <= wanted]
    rows = []
    for row_id in range(12):
        history = [(target + 1 + 5 * row_id + k) % datamodule.num_items for k in range(4)]
        history = [h for h in history if h != target]
        candidates = draw_candidates(3, row_id, target, history + excluded, datamodule.num_items)
        rows.append({"id": 1000 + row_id, "user": row_id, "history": history, "target": target, "candidates": candidates})
    bonus = torch.zeros(len(model.tokenizer))
    bonus[list(wanted)] = 50.0
    original = model.lm_logits
    monkeypatch.setattr(model, "lm_logits", lambda hidden: original(hidden) + bonus)

    class Rows(L.LightningDataModule):
        def test_dataloader(self):
            return torch.utils.data.DataLoader(rows, batch_size=5, collate_fn=list)

    model.generation = "off"
    try:
        trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
        result = trainer.test(model, datamodule=Rows(), verbose=False)[0]
    finally:
        model.generation = "test"
    assert result["test/hr1_rank"] == pytest.approx(1.0)


def test_generation_and_its_metrics(model, datamodule):
    rows = rows_of(datamodule.test_rows, 3)
    texts = model.generate(rows, max_new_tokens=4)
    assert len(texts) == 3 and all(isinstance(t, str) for t in texts)
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False, limit_test_batches=1)
    model.max_generation_rows = 5
    try:
        result = trainer.test(model, datamodule=datamodule, verbose=False)[0]
    finally:
        model.max_generation_rows = None
    assert {"test/loss", "test/hr1_rank", "test/valid_ratio", "test/hr1_gen_valid", "test/hr1_gen_total"} <= set(result)
    assert 0.0 <= result["test/valid_ratio"] <= 1.0
    assert result["test/hr1_gen_total"] <= result["test/valid_ratio"] + 1e-9


def test_parse_choice():
    titles = ["The Beatles", "Beatles", "Enigma", "Enigma Variations"]
    assert parse_choice(" The Beatles ", titles) == 0  # exact match wins over substrings
    assert parse_choice("Enigma Variations", titles) == 3
    assert parse_choice("I pick Enigma!", titles) == 2
    assert parse_choice("The Beatles and Enigma", titles) == -1  # names more than one
    assert parse_choice("nothing here", titles) == -1


def test_fit_under_a_trainer_builds_in_setup(datamodule, tmp_path):
    model = make_llara(tmp_path, generation="off")
    assert not model.is_built
    trainer = L.Trainer(
        accelerator="cpu", max_epochs=1, limit_train_batches=2, limit_val_batches=1, num_sanity_val_steps=0, logger=False,
        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
    )
    trainer.fit(model, datamodule=datamodule)
    assert model.is_built and "val/hr1_rank" in trainer.callback_metrics and "train/loss" in trainer.callback_metrics


def test_build_is_deterministic(datamodule, tmp_path):
    a = make_llara(tmp_path).build(datamodule)
    b = make_llara(tmp_path).build(datamodule)
    for (na, pa), (nb, pb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert na == nb and torch.equal(pa, pb), na


def test_wrong_row_kind_is_refused(tmp_path):
    dm = SyntheticDataModule(kind="binary", n_train=16, n_val=4, n_test=4)
    dm.setup("fit")
    with pytest.raises(ValueError, match="sequential"):
        make_llara(tmp_path).build(dm)


def test_long_histories_are_truncated_to_fit(datamodule, tmp_path):
    model = make_llara(tmp_path, max_length=200, max_history=40).build(datamodule)
    row = dict(datamodule.train_rows[0])
    row["history"] = [i for i in range(datamodule.num_items) if i not in row["candidates"]][:40]
    batch = model.encode([row])
    assert batch["input_ids"].shape[1] <= 200
    kept = batch["slot_item_ids"][0][batch["input_ids"][0] == model.tokenizer.convert_tokens_to_ids(HISTORY_SLOT)].tolist()
    assert 0 < len(kept) < 40 and kept == row["history"][-len(kept):]


def test_item_encoder_can_learn_from_the_full_split_while_the_adapter_uses_a_subset(tmp_path):
    """``sasrec.rows=full_split``: SASRec sees every training row, whatever the subset or override; ``adapter``
    (the default) sees exactly the adapter's rows."""
    from dataclasses import replace

    from lit_eraser.models.sasrec import train_sasrec

    dm = SyntheticDataModule(kind="sequential", n_train=64, n_val=8, n_test=8, max_train_rows=24)
    dm.setup("fit")
    full = SyntheticDataModule(kind="sequential", n_train=64, n_val=8, n_test=8)
    full.setup("fit")
    assert len(dm.train_rows) == 24 and len(dm.item_encoder_rows()) == 64
    dm.set_train_rows([dict(r, target=r["history"][0]) for r in rows_of(dm.train_rows, 24)])  # an edit
    assert len(dm.item_encoder_rows()) == 64
    settings = replace(SASREC, rows="full_split")
    on_full = make_llara(tmp_path / "a", sasrec=settings).build(dm).item_encoder
    expected = train_sasrec(full.train_rows, full.num_items, settings, seed=0)
    assert torch.equal(on_full.item_table, expected.item_table)
    on_subset = make_llara(tmp_path / "b").build(dm).item_encoder
    assert torch.equal(on_subset.item_table, train_sasrec(dm.train_rows, dm.num_items, SASREC, seed=0).item_table)
    assert not torch.allclose(on_subset.item_table, on_full.item_table)
    with pytest.raises(ValueError, match="full_split"):
        SasrecSettings(rows="everything")
    binary = SyntheticDataModule(kind="binary", n_train=16, n_val=4, n_test=4)
    binary.setup("fit")
    with pytest.raises(RuntimeError, match="no full training split"):
        binary.item_encoder_rows()
