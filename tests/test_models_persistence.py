"""save_run / load_run: the §4 layout, identical logits after reload, and clear errors for damaged runs."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from lit_eraser.data import SyntheticDataModule
from lit_eraser.models import (
    CorruptFileError,
    LlaraRecommender,
    LoraSettings,
    RecommenderModule,
    RunDirectoryError,
    SasrecSettings,
    TallrecRecommender,
    TinyLlamaSettings,
    TokenizerMismatchError,
    load_run,
    train_tokenizer,
)

TINY = TinyLlamaSettings(hidden_size=32, num_layers=1, num_heads=2, max_position_embeddings=512)
SASREC = SasrecSettings(hidden_size=16, num_layers=1, num_heads=1, epochs=1, batch_size=64)



def perturb(model):
    with torch.no_grad():
        generator = torch.Generator().manual_seed(1)
        for p in model.adapter_parameters().values():
            p.add_(0.05 * torch.randn(p.shape, generator=generator))
    return model


@pytest.fixture(scope="module")
def sequential():
    dm = SyntheticDataModule(kind="sequential", n_train=48, n_val=8, n_test=8)
    dm.setup("fit")
    return dm


@pytest.fixture(scope="module")
def saved_llara(sequential, tmp_path_factory):
    root = tmp_path_factory.mktemp("llara")
    model = LlaraRecommender(
        tiny=TINY, sasrec=SASREC, vocab_size=400, cache_dir=str(root / "cache"), lora=LoraSettings(r=4, alpha=8)
    ).build(sequential)
    perturb(model).eval()
    model.save_run(root / "run")
    return model, root / "run"


def copy_run(run, tmp_path):
    target = tmp_path / "run"
    shutil.copytree(run, target)
    return target


def test_run_layout(saved_llara):
    _, run = saved_llara
    names = {p.name for p in (run / "adapter").iterdir()}
    assert names == {
        "adapter_config.json", "adapter_model.safetensors", "projector.safetensors",
        "item_encoder.safetensors", "recommender.json",
    }
    assert {p.name for p in (run / "base_model").iterdir()} == {"config.json", "model.safetensors"}
    assert (run / "tokenizer" / "tokenizer.json").is_file()
    meta = json.loads((run / "adapter" / "recommender.json").read_text())
    assert meta["class"] == "LlaraRecommender" and meta["init"]["lora"]["r"] == 4
    assert not [p for p in run.rglob("*") if p.suffix in (".bin", ".pt", ".pkl", ".pth")]  # no pickles


def test_load_gives_identical_outputs(saved_llara, sequential):
    model, run = saved_llara
    loaded = load_run(run)
    assert type(loaded) is LlaraRecommender and not loaded.training
    rows = [sequential.test_rows[i] for i in range(4)]
    batch = model.encode(rows)
    torch.testing.assert_close(loaded.encode(rows), batch, rtol=0, atol=0)
    with torch.no_grad():
        assert torch.equal(model(batch), loaded(batch))
        assert torch.equal(model.response_logits(batch)[0], loaded.response_logits(batch)[0])
    assert torch.equal(model.candidate_scores(rows), loaded.candidate_scores(rows))
    assert model.generate(rows, max_new_tokens=3) == loaded.generate(rows, max_new_tokens=3)
    for (name, a), (other, b) in zip(model.adapter_parameters().items(), loaded.adapter_parameters().items()):
        assert name == other and torch.equal(a, b)


def test_load_works_without_the_datamodule_and_setup_does_not_rebuild(saved_llara):
    _, run = saved_llara
    loaded = RecommenderModule.load(run)
    before = {k: v.clone() for k, v in loaded.adapter_state().items()}
    loaded.setup("fit")  # already built: a no-op, no trainer needed
    assert all(torch.equal(before[k], v) for k, v in loaded.adapter_state().items())


def test_save_refuses_existing_directories_unless_overwrite(saved_llara, tmp_path):
    model, run = saved_llara
    target = copy_run(run, tmp_path)
    with pytest.raises(FileExistsError):
        model.save_run(target)
    model.save_run(target, overwrite=True)
    load_run(target)


def test_truncated_adapter_file_is_named(saved_llara, tmp_path):
    run = copy_run(saved_llara[1], tmp_path)
    path = run / "adapter" / "adapter_model.safetensors"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(CorruptFileError, match="adapter_model.safetensors"):
        load_run(run)


def test_truncated_file_without_recorded_checksums_is_still_detected(saved_llara, tmp_path):
    run = copy_run(saved_llara[1], tmp_path)
    meta_path = run / "adapter" / "recommender.json"
    meta = json.loads(meta_path.read_text())
    meta["files"] = {}
    meta_path.write_text(json.dumps(meta))
    path = run / "adapter" / "projector.safetensors"
    path.write_bytes(path.read_bytes()[:-7])
    with pytest.raises(CorruptFileError, match="projector.safetensors"):
        load_run(run)


def test_modified_weights_fail_the_checksum(saved_llara, tmp_path):
    run = copy_run(saved_llara[1], tmp_path)
    path = run / "adapter" / "item_encoder.safetensors"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptFileError, match="item_encoder.safetensors"):
        load_run(run)


def test_missing_files_are_named(saved_llara, tmp_path):
    run = copy_run(saved_llara[1], tmp_path)
    (run / "adapter" / "projector.safetensors").unlink()
    with pytest.raises(RunDirectoryError, match="projector.safetensors"):
        load_run(run)
    run2 = copy_run(saved_llara[1], tmp_path / "second")
    shutil.rmtree(run2 / "base_model")
    with pytest.raises(RunDirectoryError, match="base_model"):
        load_run(run2)
    with pytest.raises(RunDirectoryError, match="recommender.json"):
        load_run(tmp_path)


def test_mismatched_tokenizer_is_refused(saved_llara, sequential, tmp_path):
    run = copy_run(saved_llara[1], tmp_path)
    other = train_tokenizer([f" other {t}" for t in sequential.item_titles], vocab_size=360)
    shutil.rmtree(run / "tokenizer")
    other.save_pretrained(str(run / "tokenizer"))
    with pytest.raises(TokenizerMismatchError, match="tokenizer"):
        load_run(run)


def test_load_an_adapter_from_another_directory(saved_llara, sequential, tmp_path):
    """An unlearned adapter saved alone (adapters/<method>/) loads against the original run."""
    model, run = saved_llara
    loaded = load_run(run)
    state = {k: v + 0.01 for k, v in loaded.adapter_state().items()}
    loaded.load_adapter_state(state)
    loaded.save_adapter(tmp_path / "adapters" / "llmeraser")
    again = load_run(run, adapter_dir=tmp_path / "adapters" / "llmeraser")
    batch = model.encode([sequential.test_rows[0]])
    with torch.no_grad():
        assert torch.equal(again(batch), loaded(batch)) and not torch.equal(again(batch), model(batch))


def test_tallrec_round_trip(tmp_path):
    dm = SyntheticDataModule(kind="binary", n_train=32, n_val=4, n_test=8)
    dm.setup("fit")
    model = perturb(TallrecRecommender(tiny=TINY, vocab_size=400, cache_dir=str(tmp_path / "cache")).build(dm)).eval()
    model.save_run(tmp_path / "run")
    loaded = load_run(tmp_path / "run")
    assert type(loaded) is TallrecRecommender
    rows = list(dm.test_rows)
    with torch.no_grad():
        assert torch.equal(model(model.encode(rows)), loaded(loaded.encode(rows)))
    assert torch.equal(model.yes_probability(rows), loaded.yes_probability(rows))
    with pytest.raises(RunDirectoryError, match="LlaraRecommender"):
        LlaraRecommender.load(tmp_path / "run")


def test_retrain_from_frozen_parts_of_a_run(saved_llara, sequential):
    """reuse_frozen_from: same tokenizer, base and item encoder; a fresh (seeded) adapter."""
    model, run = saved_llara
    fresh = LlaraRecommender(tiny=TINY, sasrec=SASREC, lora=LoraSettings(r=4, alpha=8), reuse_frozen_from=str(run)).build(sequential)
    assert fresh.tokenizer.get_vocab() == model.tokenizer.get_vocab()
    assert torch.equal(fresh.item_encoder.item_table, model.item_encoder.item_table)
    frozen = {n: p for n, p in model.named_parameters() if n not in model.adapter_parameters()}
    for name, parameter in fresh.named_parameters():
        if name in frozen:
            assert torch.equal(parameter, frozen[name]), name
    assert all(not p.any() for n, p in fresh.adapter_parameters().items() if "lora_B" in n)
