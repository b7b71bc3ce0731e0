"""TallrecRecommender on tiny synthetic binary rows: prompt, labels on Yes./No. + eos, P(Yes), AUC."""

from __future__ import annotations

import lightning as L
import pytest
import torch
import torch.nn.functional as F

from lit_eraser.data import SyntheticDataModule
from lit_eraser.models import LoraSettings, TallrecRecommender, TinyLlamaSettings
from lit_eraser.models.prompts import TALLREC_INSTRUCTION
from model_training import loss_before_and_after

TINY = TinyLlamaSettings(hidden_size=32, num_layers=1, num_heads=2, max_position_embeddings=512)



@pytest.fixture(scope="module")
def datamodule():
    dm = SyntheticDataModule(kind="binary", n_train=48, n_val=16, n_test=24, batch_size=8, eval_batch_size=8)
    dm.setup("fit")
    return dm


@pytest.fixture(scope="module")
def model(datamodule, tmp_path_factory):
    m = TallrecRecommender(
        tiny=TINY, vocab_size=400, cache_dir=str(tmp_path_factory.mktemp("cache")), lora=LoraSettings(r=4, alpha=8, dropout=0.0)
    ).build(datamodule)
    with torch.no_grad():
        for name, p in m.adapter_parameters().items():
            if "lora_B" in name:
                p.normal_(0.0, 0.05)
    return m.eval()


def manual_auc(scores: list[float], labels: list[int]) -> float:
    """Probability that a random positive outscores a random negative (ties count one half)."""
    pos = [s for s, y in zip(scores, labels) if y == 1]
    neg = [s for s, y in zip(scores, labels) if y == 0]
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def test_yes_and_no_are_single_distinct_tokens(model):
    for word in ("Yes", "No"):
        assert len(model.tokenizer(word, add_special_tokens=False)["input_ids"]) == 1
    assert model.yes_id != model.no_id
    assert model.tokenizer.convert_ids_to_tokens([model.yes_id, model.no_id]) == ["Yes", "No"]


def test_encode_labels_only_the_response(model, datamodule):
    rows = [datamodule.train_rows[i] for i in range(4)]
    batch = model.encode(rows)
    assert set(batch) == {"input_ids", "attention_mask", "labels", "response_index"}
    for i, row in enumerate(rows):
        length = int(batch["attention_mask"][i].sum())
        labels = batch["labels"][i]
        kept = labels[labels != -100].tolist()
        assert model.tokenizer.decode(kept) == ("Yes." if row["label"] else "No.") + model.tokenizer.eos_token
        assert labels[length - len(kept) : length].tolist() == kept
        text = model.tokenizer.decode(batch["input_ids"][i, : length - len(kept)])
        assert TALLREC_INSTRUCTION in text and text.rstrip().endswith("### Response:")
        assert f'"{row["target"]}"' in text and all(f'"{name}"' in text for name in row["liked"])


def test_per_item_loss_matches_manual_and_is_batch_invariant(model, datamodule):
    rows = [datamodule.train_rows[i] for i in range(5)]
    batch = model.encode(rows)
    with torch.no_grad():
        losses = model(batch)
        logits = model.base_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
        alone = torch.cat([model(model.encode([row])) for row in rows])
    labels = batch["labels"][:, 1:]
    manual = torch.stack([F.cross_entropy(logits[i, :-1][labels[i] != -100], labels[i][labels[i] != -100]) for i in range(5)])
    torch.testing.assert_close(losses, manual, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(losses, alone, rtol=1e-5, atol=1e-5)


def test_adapter_parameters_are_lora_only(model):
    theta = model.adapter_parameters()
    assert len(theta) == 2 * 7 * TINY.num_layers and all(".lora_" in n and p.requires_grad for n, p in theta.items())
    assert sum(p.requires_grad for p in model.parameters()) == len(theta)


def test_yes_probability_is_softmax_of_yes_no_logits(model, datamodule):
    rows = [datamodule.val_rows[i] for i in range(4)]
    probability = model.yes_probability(rows)
    batch = model.encode(rows)
    with torch.no_grad():
        logits = model.base_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
    first = batch["response_index"][:, 0]
    pair = logits[torch.arange(4), first][:, [model.yes_id, model.no_id]]
    torch.testing.assert_close(probability, torch.softmax(pair, -1)[:, 0], rtol=1e-5, atol=1e-6)


def test_test_auc_and_accuracy_match_manual_computation(model, datamodule):
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    result = trainer.test(model, datamodule=datamodule, verbose=False)[0]
    rows = list(datamodule.test_rows)
    scores = model.yes_probability(rows).tolist()
    labels = [int(r["label"]) for r in rows]
    assert 0 < sum(labels) < len(labels)
    assert result["test/auc"] == pytest.approx(manual_auc(scores, labels), abs=1e-5)
    accuracy = sum((s > 0.5) == bool(y) for s, y in zip(scores, labels)) / len(labels)
    assert result["test/accuracy"] == pytest.approx(accuracy, abs=1e-6)
    assert "test/loss" in result


def test_training_steps_reduce_loss(datamodule, tmp_path):
    model = TallrecRecommender(tiny=TINY, vocab_size=400, cache_dir=str(tmp_path), lr=1e-2, warmup_steps=0).build(datamodule)
    before, after = loss_before_and_after(model, model.encode([datamodule.train_rows[i] for i in range(8)]), steps=8)
    assert after < before - 0.5, (before, after)


def test_bad_label_is_refused(model, datamodule):
    row = dict(datamodule.train_rows[0], label=2)
    with pytest.raises(ValueError, match="label"):
        model.encode([row])
