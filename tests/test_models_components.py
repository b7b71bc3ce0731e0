"""Tokenizer, SASRec, tiny backbone, base pretraining and the LightningCLI surface of the recommenders."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lit_eraser.data import SyntheticDataModule
from lit_eraser.models import (
    LlaraRecommender,
    LoraSettings,
    SasrecSettings,
    TallrecRecommender,
    TinyLlamaSettings,
    train_tokenizer,
)
from lit_eraser.models.backbone import (
    apply_lora,
    build_tiny_llama,
    load_tiny_base,
    save_tiny_base,
)
from lit_eraser.models.pretrain import BasePretrainSettings
from lit_eraser.models.sasrec import (
    SASRec,
    cached_sasrec,
    load_sasrec,
    rows_fingerprint,
    sasrec_candidate_hit_rate,
    save_sasrec,
    train_sasrec,
)
from lit_eraser.models.tokenizer import (
    CANDIDATE_SLOT,
    HISTORY_SLOT,
    cached_tokenizer,
    load_tokenizer,
    tokenizer_fingerprint,
)

TINY = TinyLlamaSettings(hidden_size=32, num_layers=1, num_heads=2, max_position_embeddings=512)
CORPUS = ["Morcheeba", "Café Del Mar", "Fleetwood Mac", "Enigma", "Björk", "東京事変", "Sigur Rós"]



# ------------------------------------------------------------------------------------------ tokenizer
def test_tokenizer_special_tokens_and_byte_fallback():
    tok = train_tokenizer(CORPUS, vocab_size=400, extra_texts=["Choose the next one from: Answer:"])
    assert tok.pad_token == "<pad>" and tok.bos_token == "<s>" and tok.eos_token == "</s>"
    assert len({tok.pad_token_id, tok.bos_token_id, tok.eos_token_id}) == 3
    text = f"Enigma {HISTORY_SLOT}, Zqxj 🎵 unseen {CANDIDATE_SLOT}."
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.convert_tokens_to_ids(HISTORY_SLOT) in ids and tok.convert_tokens_to_ids(CANDIDATE_SLOT) in ids
    assert tok.unk_token_id is None or tok.unk_token_id not in ids  # byte level: nothing is unknown
    assert tok.decode(tok(" Zqxj 🎵 東京事変", add_special_tokens=False)["input_ids"]) == " Zqxj 🎵 東京事変"
    for word in ("Yes", "No"):
        assert len(tok(word, add_special_tokens=False)["input_ids"]) == 1


def test_tokenizer_is_deterministic_and_round_trips(tmp_path):
    a = train_tokenizer(CORPUS, vocab_size=400)
    b = train_tokenizer(CORPUS, vocab_size=400)
    assert tokenizer_fingerprint(a) == tokenizer_fingerprint(b)
    a.save_pretrained(str(tmp_path / "tok"))
    loaded = load_tokenizer(tmp_path / "tok")
    assert tokenizer_fingerprint(loaded) == tokenizer_fingerprint(a) and len(loaded) == len(a)
    other = train_tokenizer(CORPUS + ["Radiohead"], vocab_size=420)
    assert tokenizer_fingerprint(other) != tokenizer_fingerprint(a)


def test_tokenizer_cache(tmp_path):
    first = cached_tokenizer(CORPUS, 400, ["x"], tmp_path)
    assert len(list((tmp_path).iterdir())) == 1
    second = cached_tokenizer(CORPUS, 400, ["x"], tmp_path)
    assert tokenizer_fingerprint(first) == tokenizer_fingerprint(second)


# ------------------------------------------------------------------------------------------ SASRec
@pytest.fixture(scope="module")
def sequential():
    dm = SyntheticDataModule(kind="sequential", n_train=256, n_val=16, n_test=64, noise=0.0)
    dm.setup("fit")
    return dm


def test_sasrec_learns_the_synthetic_genres(sequential):
    settings = SasrecSettings(hidden_size=16, num_layers=1, num_heads=1, epochs=30, batch_size=64, lr=1e-2, dropout=0.0)
    model = train_sasrec(sequential.train_rows, sequential.num_items, settings, seed=0)
    assert not any(p.requires_grad for p in model.parameters()) and not model.training
    assert model.item_table.shape == (sequential.num_items, 16)
    assert not model.item_embedding.weight[model.pad_id].any()
    assert sasrec_candidate_hit_rate(model, sequential.test_rows) > 0.15  # chance is 0.05


def test_sasrec_cache_and_safetensors_round_trip(sequential, tmp_path):
    settings = SasrecSettings(hidden_size=8, num_layers=1, num_heads=1, epochs=1, batch_size=64)
    first = cached_sasrec(sequential.train_rows, sequential.num_items, settings, seed=0, cache_dir=tmp_path)
    files = list((tmp_path / "sasrec").glob("*.safetensors"))
    assert len(files) == 1
    second = cached_sasrec(sequential.train_rows, sequential.num_items, settings, seed=0, cache_dir=tmp_path)
    assert torch.equal(first.item_table, second.item_table)
    cached_sasrec(sequential.train_rows.select(range(100)), sequential.num_items, settings, seed=0, cache_dir=tmp_path)
    assert len(list((tmp_path / "sasrec").glob("*.safetensors"))) == 2  # other rows, other key
    save_sasrec(first, tmp_path / "enc.safetensors")
    loaded = load_sasrec(tmp_path / "enc.safetensors")
    sequences = loaded.pad_histories([[1, 2, 3], [4]])
    assert torch.equal(loaded.scores(sequences), first.scores(sequences))


def test_rows_fingerprint_sees_edits(sequential):
    rows = [dict(r) for r in sequential.train_rows.select(range(10))]
    base = rows_fingerprint(rows)
    rows[3]["history"] = rows[3]["history"][:-1] + [rows[3]["history"][-1] + 1]
    assert rows_fingerprint(rows) != base
    assert rows_fingerprint(sequential.train_rows.select(range(10))) == base


def test_sasrec_padding_is_left_and_truncated():
    model = SASRec(10, SasrecSettings(hidden_size=8, num_heads=1, max_len=3))
    padded = model.pad_histories([[1, 2, 3, 4, 5], [7]])
    assert padded.tolist() == [[3, 4, 5], [10, 10, 7]]
    assert torch.isfinite(model(padded)).all()


# ------------------------------------------------------------------------------------------ backbone
def test_tiny_llama_is_seeded_eager_and_saved_exactly(tmp_path):
    a = build_tiny_llama(TINY, 300, 0, 1, 2, seed=5)
    b = build_tiny_llama(TINY, 300, 0, 1, 2, seed=5)
    c = build_tiny_llama(TINY, 300, 0, 1, 2, seed=6)
    assert a.config._attn_implementation == "eager"
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert not torch.equal(a.lm_head.weight, c.lm_head.weight)
    assert a.lm_head.weight.std().item() == pytest.approx(TINY.hidden_size**-0.5, rel=0.1)
    peft = apply_lora(a, LoraSettings(r=2, alpha=4), seed=0)
    save_tiny_base(peft, tmp_path / "base")
    reloaded = load_tiny_base(tmp_path / "base")
    assert set(reloaded.state_dict()) == set(b.state_dict())
    assert all(torch.equal(reloaded.state_dict()[k], v) for k, v in b.state_dict().items())


def test_settings_validate_themselves():
    with pytest.raises(ValueError):
        TinyLlamaSettings(hidden_size=30, num_heads=4)
    with pytest.raises(ValueError):
        LoraSettings(r=0)
    with pytest.raises(ValueError):
        LoraSettings(target_modules=["lm_head"])
    with pytest.raises(ValueError):
        BasePretrainSettings(loss="everything")
    with pytest.raises(ValueError):
        LlaraRecommender(lr=0)
    with pytest.raises(ValueError, match="max_position_embeddings"):
        LlaraRecommender(tiny=TINY, max_length=1024)


def test_lora_targets_must_exist(sequential, tmp_path):
    model = LlaraRecommender(tiny=TINY, vocab_size=400, cache_dir=str(tmp_path), lora=LoraSettings(target_modules=["c_attn"]),
                             sasrec=SasrecSettings(hidden_size=8, num_heads=1, epochs=1))
    with pytest.raises(ValueError, match="c_attn"):
        model.build(sequential)


# ------------------------------------------------------------------------------------------ base pretraining
def test_base_pretraining_is_cached_and_saved_with_the_run(sequential, tmp_path):
    kwargs = {
        "tiny": TINY, "vocab_size": 400, "cache_dir": str(tmp_path / "cache"),
        "sasrec": SasrecSettings(hidden_size=8, num_heads=1, epochs=1),
        "pretrain": BasePretrainSettings(steps=4, batch_size=2, warmup_steps=1),
    }
    plain = LlaraRecommender(**{**kwargs, "pretrain": BasePretrainSettings()}).build(sequential)
    first = LlaraRecommender(**kwargs).build(sequential)
    assert len(list((tmp_path / "cache" / "tiny_base").iterdir())) == 1
    second = LlaraRecommender(**kwargs).build(sequential)  # from the cache
    frozen = lambda m: {n: p for n, p in m.named_parameters() if n not in m.adapter_parameters()}
    a, b, c = frozen(first), frozen(second), frozen(plain)
    assert all(torch.equal(a[n], b[n]) for n in a)
    assert any(not torch.equal(a[n], c[n]) for n in a if "item_encoder" not in n)  # pretraining changed the base
    first.save_run(tmp_path / "run")
    from lit_eraser.models import load_run

    loaded = load_run(tmp_path / "run")
    batch = first.encode([sequential.test_rows[0]])
    with torch.no_grad():
        assert torch.equal(first.eval()(batch), loaded(batch))


def test_pretraining_rows_carry_no_user_data(sequential, tmp_path):
    model = LlaraRecommender(tiny=TINY, vocab_size=400, cache_dir=str(tmp_path), sasrec=SasrecSettings(hidden_size=8, num_heads=1, epochs=1))
    model.build(sequential)
    rows = model.pretraining_rows(np.random.default_rng(0), 50)
    for row in rows:
        assert row["target"] in row["candidates"] and not set(row["history"]) & set(row["candidates"])
        assert 2 <= len(row["candidates"]) <= 20 and row["id"] < 0
    batch = model.pretraining_batch(np.random.default_rng(0), 4)
    assert batch["input_ids"].shape[0] == 4
    binary = SyntheticDataModule(kind="binary", n_train=16, n_val=4, n_test=4)
    binary.setup("fit")
    tallrec = TallrecRecommender(tiny=TINY, vocab_size=400, cache_dir=str(tmp_path)).build(binary)
    for row in tallrec.pretraining_rows(np.random.default_rng(0), 20):
        assert row["target"] in (row["liked"] if row["label"] else row["disliked"])


# ------------------------------------------------------------------------------------------ CLI
def test_lightning_cli_parses_nested_settings():
    from lightning.pytorch.cli import LightningCLI

    from lit_eraser.cli.common import make_cli

    cli = make_cli(
        LightningCLI,
        [
            "--model=lit_eraser.models.LlaraRecommender",
            "--model.lora.r=16",
            "--model.tiny.hidden_size=64",
            "--model.sasrec.epochs=3",
            "--model.pretrain.steps=10",
            "--data=lit_eraser.data.SyntheticDataModule",
            "--trainer.accelerator=cpu",
        ],
    )
    model = cli.model
    assert isinstance(model, LlaraRecommender) and not model.is_built
    assert model.lora.r == 16 and model.lora.alpha == 16.0 and model.tiny.hidden_size == 64
    assert model.sasrec_settings.epochs == 3 and model.pretrain.steps == 10
    assert model.hparams["lora"]["r"] == 16


# ------------------------------------------------------------------------------------------ pretrained path
def test_pretrained_backbone_from_a_local_directory(sequential, tmp_path, monkeypatch):
    """``backbone: <path>``: AutoModel/AutoTokenizer from disk, slot tokens + pad added, embeddings resized,
    saved and reloaded with identical outputs (a local directory, so no network is involved)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    raw.train_from_iterator(
        [f" {t}" for t in sequential.item_titles] * 3,
        trainers.BpeTrainer(vocab_size=350, special_tokens=["<s>", "</s>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False),
    )
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=raw, bos_token="<s>", eos_token="</s>")
    model = build_tiny_llama(TINY, len(tokenizer), 0, 0, 1, seed=3)
    model.config.pad_token_id = None
    source = tmp_path / "pretrained"
    model.save_pretrained(str(source))
    tokenizer.save_pretrained(str(source))

    llara = LlaraRecommender(backbone=str(source), vocab_size=400, cache_dir=str(tmp_path / "cache"),
                             sasrec=SasrecSettings(hidden_size=8, num_heads=1, epochs=1), max_length=512).build(sequential)
    assert len(llara.tokenizer) == len(tokenizer) + 3  # [HistoryEmb], [CansEmb], <pad>
    assert llara.base_model.get_input_embeddings().num_embeddings == len(llara.tokenizer)
    assert llara.base_model.config._attn_implementation == "eager"
    perturb = {k: v + 0.01 for k, v in llara.adapter_state().items()}
    llara.load_adapter_state(perturb)
    llara.eval().save_run(tmp_path / "run")
    assert not (tmp_path / "run" / "base_model").exists()  # the pretrained base is named, not copied
    assert (tmp_path / "run" / "adapter" / "added_token_embeddings.safetensors").is_file()
    from lit_eraser.models import load_run

    loaded = load_run(tmp_path / "run")
    batch = llara.encode([sequential.test_rows[0], sequential.test_rows[1]])
    with torch.no_grad():
        assert torch.equal(llara(batch), loaded(batch))
