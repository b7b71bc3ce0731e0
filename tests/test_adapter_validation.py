"""A run directory is validated before it is used (issue 12): tensor dtypes, shapes and finiteness; base_model/
and tokenizer/ under checksums; bounded config sizes; no network; a PEFT-loadable adapter_config.json; and an
--adapter checked against the data config it is unlearned with."""

from __future__ import annotations

import json
import shutil
import socket
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from lit_eraser.data import SyntheticDataModule
from lit_eraser.io import sha256_file
from lit_eraser.models import (
    CorruptFileError,
    LlaraRecommender,
    LoraSettings,
    RunDirectoryError,
    SasrecSettings,
    TinyLlamaSettings,
    load_run,
)
from lit_eraser.models.backbone import build_tiny_llama
from lit_eraser.models.run_checks import (
    AdapterContentError,
    AdapterDataMismatchError,
    BackboneNotLocalError,
    ConfigSizeError,
    check_adapter_matches_data,
    row_ids_sha256,
)
from lit_eraser.models.sasrec import sasrec_state
from lit_eraser.unlearning.requests import UnlearningRequest

TINY = TinyLlamaSettings(hidden_size=32, num_layers=1, num_heads=2, max_position_embeddings=512)
SASREC = SasrecSettings(hidden_size=16, num_layers=1, num_heads=1, epochs=1, batch_size=64)
LORA = LoraSettings(r=4, alpha=8)
N_TRAIN = 48


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> list:
    """Any attempt to open an internet connection is recorded and fails at once."""
    attempts: list = []
    real_connect = socket.socket.connect

    def guarded(self: socket.socket, address: object) -> None:
        if self.family in (socket.AF_INET, socket.AF_INET6):
            attempts.append(address)
            raise OSError(f"network access attempted in a test: {address}")
        return real_connect(self, address)

    real_getaddrinfo = socket.getaddrinfo

    def resolve(host: object, *args: object, **kwargs: object) -> object:
        if host not in (None, "localhost", "127.0.0.1", "::1"):
            attempts.append(host)
            raise OSError(f"network name lookup attempted in a test: {host}")
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", guarded)
    monkeypatch.setattr(socket, "getaddrinfo", resolve)
    return attempts


def perturb(model):
    with torch.no_grad():
        generator = torch.Generator().manual_seed(1)
        for p in model.adapter_parameters().values():
            p.add_(0.05 * torch.randn(p.shape, generator=generator))
    return model


@pytest.fixture(scope="module")
def sequential() -> SyntheticDataModule:
    dm = SyntheticDataModule(kind="sequential", n_train=N_TRAIN, n_val=8, n_test=8)
    dm.setup("fit")
    return dm


@pytest.fixture(scope="module")
def saved(sequential, tmp_path_factory):
    root = tmp_path_factory.mktemp("llara")
    model = LlaraRecommender(tiny=TINY, sasrec=SASREC, vocab_size=400, cache_dir=str(root / "cache"), lora=LORA).build(sequential)
    perturb(model).eval()
    model.save_run(root / "run")
    return model, root / "run"


def copy_run(run: Path, tmp_path: Path) -> Path:
    target = tmp_path / "run"
    shutil.copytree(run, target)
    return target


def read_meta(run: Path) -> dict:
    return json.loads((run / "adapter" / "recommender.json").read_text())


def write_meta(run: Path, meta: dict) -> None:
    (run / "adapter" / "recommender.json").write_text(json.dumps(meta))


def rewrite(run: Path, relative: str, edit) -> None:
    """Edit the tensors of a safetensors file in the run and record its new sha256 (as a crafted run would)."""
    path = run / relative
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata()
    tensors = load_file(str(path))
    edit(tensors)
    save_file(tensors, str(path), metadata=metadata)
    refresh_checksum(run, relative)


def refresh_checksum(run: Path, relative: str) -> None:
    meta = read_meta(run)
    if relative.startswith("adapter/"):
        meta["files"][relative.removeprefix("adapter/")] = sha256_file(run / relative)
    elif "run_files" in meta:
        meta["run_files"][relative] = sha256_file(run / relative)
    write_meta(run, meta)


def first_key(run: Path, relative: str, contains: str) -> str:
    return next(k for k in sorted(load_file(str(run / relative))) if contains in k)


# ------------------------------------------------------------------------------------------ what save_run records
def test_save_run_records_training_data_run_files_and_a_peft_base_path(saved, sequential):
    _, run = saved
    meta = read_meta(run)
    data = meta["training_data"]
    assert data["n_train"] == N_TRAIN and data["num_items"] == sequential.num_items
    assert data["data_class"].endswith("SyntheticDataModule") and data["kind"] == "sequential"
    assert data["row_ids_sha256"] == row_ids_sha256(range(N_TRAIN))
    assert {"base_model/config.json", "base_model/model.safetensors", "tokenizer/tokenizer.json"} <= set(meta["run_files"])
    for relative, digest in meta["run_files"].items():
        assert sha256_file(run / relative) == digest
    assert json.loads((run / "adapter" / "adapter_config.json").read_text())["base_model_name_or_path"] == "../base_model"


def test_a_loaded_run_keeps_its_training_record_when_saved_again(saved, tmp_path):
    _, run = saved
    load_run(run).save_run(tmp_path / "again")
    assert read_meta(tmp_path / "again")["training_data"] == read_meta(run)["training_data"]
    load_run(tmp_path / "again")


# ------------------------------------------------------------------------------------------ adapter tensors
@pytest.mark.parametrize("part", ["lora_A", "lora_B"])
def test_integer_lora_tensor_is_refused_not_cast(saved, tmp_path, part):
    run = copy_run(saved[1], tmp_path)
    name = first_key(run, "adapter/adapter_model.safetensors", part)
    rewrite(run, "adapter/adapter_model.safetensors", lambda t: t.__setitem__(name, (t[name] * 100).to(torch.int64)))
    with pytest.raises(AdapterContentError, match=f"{name}.*(I64|int64).*floating"):
        load_run(run)


def test_nan_lora_tensor_is_refused_with_its_name(saved, tmp_path):
    run = copy_run(saved[1], tmp_path)
    name = first_key(run, "adapter/adapter_model.safetensors", "lora_B")

    def poison(tensors):
        tensors[name][0, 0] = float("nan")

    rewrite(run, "adapter/adapter_model.safetensors", poison)
    with pytest.raises(ValueError, match=f"{name}.*non-finite"):
        load_run(run)


def test_lora_tensor_of_wrong_shape_is_a_clear_error(saved, tmp_path):
    run = copy_run(saved[1], tmp_path)
    name = first_key(run, "adapter/adapter_model.safetensors", "lora_A")
    rewrite(run, "adapter/adapter_model.safetensors", lambda t: t.__setitem__(name, torch.zeros(t[name].shape[0], t[name].shape[1] + 3)))
    with pytest.raises(AdapterContentError, match=f"{name}.*shape"):
        load_run(run)
    rank = copy_run(saved[1], tmp_path / "rank")
    rewrite(rank, "adapter/adapter_model.safetensors", lambda t: t.__setitem__(name, torch.zeros(7, t[name].shape[1])))
    with pytest.raises(AdapterContentError, match="rank r = 4"):
        load_run(rank)


@pytest.mark.parametrize("damage", ["int64", "nan", "shape"])
def test_projector_tensors_are_checked(saved, tmp_path, damage):
    run = copy_run(saved[1], tmp_path)

    def edit(tensors):
        weight = tensors["net.0.weight"]
        if damage == "int64":
            tensors["net.0.weight"] = (weight * 100).to(torch.int64)
        elif damage == "nan":
            weight[1, 1] = float("inf")
        else:
            tensors["net.0.weight"] = torch.zeros(weight.shape[0] + 1, weight.shape[1])

    rewrite(run, "adapter/projector.safetensors", edit)
    with pytest.raises(AdapterContentError, match=r"projector.safetensors.*net\.0\.weight"):
        load_run(run)


@pytest.mark.parametrize("damage", ["int64", "nan"])
def test_item_encoder_tensors_are_checked(saved, tmp_path, damage):
    run = copy_run(saved[1], tmp_path)

    def edit(tensors):
        if damage == "int64":
            tensors["item_embedding.weight"] = tensors["item_embedding.weight"].to(torch.int64)
        else:
            tensors["item_embedding.weight"][3, 0] = float("nan")

    rewrite(run, "adapter/item_encoder.safetensors", edit)
    with pytest.raises(AdapterContentError, match="item_embedding.weight"):
        load_run(run)


def test_item_encoder_sizes_are_bounded_before_allocation(saved, tmp_path):
    """Old code built SASRec(num_items) from the file's metadata first: 10^12 items is 256 TB."""
    model, _ = saved
    run = copy_run(saved[1], tmp_path)
    tensors, metadata = sasrec_state(model.item_encoder)
    metadata["num_items"] = str(10**12)
    save_file(tensors, str(run / "adapter" / "item_encoder.safetensors"), metadata=metadata)
    refresh_checksum(run, "adapter/item_encoder.safetensors")
    with pytest.raises(ConfigSizeError, match="num_items"):
        load_run(run)


# ------------------------------------------------------------------------------------------ base_model/ and tokenizer/
def poison_base(run: Path) -> str:
    path = run / "base_model" / "model.safetensors"
    tensors = load_file(str(path))
    name = next(k for k in sorted(tensors) if "q_proj" in k)
    tensors[name][0, 0] = float("nan")
    save_file(tensors, str(path), metadata={"format": "pt"})
    return name


def test_a_nan_base_fails_the_recorded_checksum(saved, tmp_path):
    run = copy_run(saved[1], tmp_path)
    poison_base(run)
    with pytest.raises(CorruptFileError, match="base_model/model.safetensors"):
        load_run(run)


def test_an_older_run_without_base_checksums_is_read_only_if_its_base_is_sound(saved, sequential, tmp_path):
    model, source = saved
    run = copy_run(source, tmp_path)
    meta = read_meta(run)
    del meta["run_files"]
    write_meta(run, meta)
    loaded = load_run(run)  # sound base: still readable
    batch = model.encode([sequential.test_rows[0]])
    with torch.no_grad():
        assert torch.equal(loaded(batch), model(batch))
    name = poison_base(run)
    with pytest.raises(AdapterContentError, match=f"{name}.*non-finite"):
        load_run(run)


def test_an_integer_base_tensor_is_refused(saved, tmp_path):
    run = copy_run(saved[1], tmp_path)
    path = run / "base_model" / "model.safetensors"
    rewrite(run, "base_model/model.safetensors", lambda t: t.__setitem__("lm_head.weight", t["lm_head.weight"].to(torch.int64)))
    assert read_meta(run)["run_files"]["base_model/model.safetensors"] == sha256_file(path)
    with pytest.raises(AdapterContentError, match="lm_head.weight"):
        load_run(run)


def test_a_modified_tokenizer_file_fails_the_checksum(saved, tmp_path):
    """tokenizer_config.json decides bos/eos/pad but not the vocabulary fingerprint: it is checksummed now."""
    run = copy_run(saved[1], tmp_path)
    path = run / "tokenizer" / "tokenizer_config.json"
    config = json.loads(path.read_text())
    config["model_max_length"] = 7
    path.write_text(json.dumps(config))
    with pytest.raises(CorruptFileError, match="tokenizer_config.json"):
        load_run(run)


# ------------------------------------------------------------------------------------------ bounded sizes
@pytest.mark.parametrize(
    ("edit", "field"),
    [
        ({"hidden_size": 2**20, "intermediate_size": 64, "vocab_size": 2**24}, "hidden_size"),
        ({"vocab_size": 2**36}, "vocab_size"),
        ({"max_position_embeddings": 10**12}, "max_position_embeddings"),
        # a huge MLP too, so that the old loader fails at its first allocation instead of building 10^9 layers
        ({"num_hidden_layers": 10**9, "intermediate_size": 2**40}, "intermediate_size.*num_hidden_layers"),
        ({"hidden_size": "32"}, "hidden_size"),
    ],
)
def test_base_config_sizes_are_bounded_before_allocation(saved, tmp_path, edit, field):
    """Checksums recorded for the crafted file too: the bound itself must refuse it, quickly."""
    run = copy_run(saved[1], tmp_path)
    path = run / "base_model" / "config.json"
    config = json.loads(path.read_text())
    config.update(edit)
    path.write_text(json.dumps(config))
    refresh_checksum(run, "base_model/config.json")
    start = time.perf_counter()
    with pytest.raises(ConfigSizeError, match=field):
        load_run(run)
    assert time.perf_counter() - start < 30


def test_an_invalid_base_config_field_is_a_clear_error(saved, tmp_path):
    run = copy_run(saved[1], tmp_path)
    path = run / "base_model" / "config.json"
    config = json.loads(path.read_text())
    config["rms_norm_eps"] = "x"
    path.write_text(json.dumps(config))
    refresh_checksum(run, "base_model/config.json")
    with pytest.raises(RunDirectoryError, match="rms_norm_eps"):
        load_run(run)


def test_base_config_that_disagrees_with_the_weights_is_refused_before_allocation(saved, tmp_path):
    run = copy_run(saved[1], tmp_path)
    path = run / "base_model" / "config.json"
    config = json.loads(path.read_text())
    config["intermediate_size"] = 4096
    path.write_text(json.dumps(config))
    refresh_checksum(run, "base_model/config.json")
    with pytest.raises(AdapterContentError, match="mlp.*shape"):
        load_run(run)


def test_lora_rank_in_recommender_json_is_bounded(saved, tmp_path):
    run = copy_run(saved[1], tmp_path)
    meta = read_meta(run)
    meta["init"]["lora"]["r"] = 2**34
    write_meta(run, meta)
    with pytest.raises(ConfigSizeError, match="lora.r"):
        load_run(run)


def test_projector_width_in_recommender_json_is_bounded(saved, tmp_path):
    run = copy_run(saved[1], tmp_path)
    meta = read_meta(run)
    meta["init"]["projector_hidden"] = 2**31
    write_meta(run, meta)
    with pytest.raises(ConfigSizeError, match="projector_hidden"):
        load_run(run)


def test_unknown_init_setting_is_a_clear_error(saved, tmp_path):
    run = copy_run(saved[1], tmp_path)
    meta = read_meta(run)
    meta["init"]["no_such_setting"] = 1
    write_meta(run, meta)
    with pytest.raises(RunDirectoryError, match="no_such_setting"):
        load_run(run)


# ------------------------------------------------------------------------------------------ no network
@pytest.mark.parametrize("backbone", ["gpt2", "no-such-org/no-such-model"])
def test_a_hub_backbone_in_recommender_json_never_reaches_the_network(saved, tmp_path, no_network, backbone):
    run = copy_run(saved[1], tmp_path)
    meta = read_meta(run)
    meta["init"]["backbone"] = backbone
    write_meta(run, meta)
    start = time.perf_counter()
    with pytest.raises(BackboneNotLocalError, match=f"{backbone}.*not on this machine.*never downloads"):
        load_run(run)
    assert no_network == [] and time.perf_counter() - start < 30


# ------------------------------------------------------------------------------------------ PEFT
def llm_logits(peft_model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return peft_model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits.float()


def test_auto_peft_loads_a_tiny_run_from_its_adapter_directory(saved, monkeypatch):
    """Tiny preset: base_model_name_or_path is ../base_model, relative to the adapter directory."""
    from peft import AutoPeftModelForCausalLM

    model, run = saved
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(run / "adapter")
    auto = AutoPeftModelForCausalLM.from_pretrained(str((run / "adapter").absolute())).eval()
    ids = torch.tensor([[1, 5, 17, 42, 99, 7]])
    torch.testing.assert_close(llm_logits(auto, ids), llm_logits(model.llm, ids), atol=1e-5, rtol=1e-4)


@pytest.fixture(scope="module")
def pretrained_run(sequential, tmp_path_factory):
    """A LLaRA adapter on a small local transformers LLaMA checkpoint (random init, saved in the test)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    root = tmp_path_factory.mktemp("pretrained")
    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    raw.train_from_iterator(
        [f" {t}" for t in sequential.item_titles] * 3,
        trainers.BpeTrainer(vocab_size=350, special_tokens=["<s>", "</s>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False),
    )
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=raw, bos_token="<s>", eos_token="</s>")
    base = build_tiny_llama(TINY, len(tokenizer), 0, 0, 1, seed=3)
    base.config.pad_token_id = None
    source = root / "checkpoint"
    base.save_pretrained(str(source))
    tokenizer.save_pretrained(str(source))
    model = LlaraRecommender(backbone=str(source), vocab_size=400, cache_dir=str(root / "cache"), sasrec=SASREC, lora=LORA).build(sequential)
    perturb(model).eval()
    model.save_run(root / "run")
    return model, root / "run", source, len(tokenizer)


def test_auto_peft_loads_an_adapter_on_a_pretrained_backbone(pretrained_run, monkeypatch, no_network):
    from peft import AutoPeftModelForCausalLM

    model, run, source, base_vocab = pretrained_run
    config = json.loads((run / "adapter" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(source.absolute())
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(run.parent)  # any working directory: the path is absolute
    auto = AutoPeftModelForCausalLM.from_pretrained(str((run / "adapter").absolute())).eval()
    ids = torch.tensor([[0, 5, 17, 42, 99, 7], [0, 3, 200, 11, 12, 300]])
    expected = llm_logits(model.llm, ids)
    assert expected.shape[-1] == base_vocab + 3  # [HistoryEmb], [CansEmb], <pad>: outside PEFT
    torch.testing.assert_close(llm_logits(auto, ids), expected[..., :base_vocab], atol=1e-5, rtol=1e-4)
    assert no_network == []


def test_a_pretrained_run_loads_from_local_files_only(pretrained_run, sequential, tmp_path, no_network):
    model, run, source, _ = pretrained_run
    meta = read_meta(run)
    assert meta["backbone"]["local_path"] == str(source.absolute())
    loaded = load_run(run)
    batch = model.encode([sequential.test_rows[0], sequential.test_rows[1]])
    with torch.no_grad():
        assert torch.equal(loaded(batch), model(batch))
    assert no_network == []

    moved = copy_run(run, tmp_path)
    meta["backbone"]["local_path"] = str(tmp_path / "gone")
    meta["init"]["backbone"] = str(tmp_path / "also-gone")
    write_meta(moved, meta)
    with pytest.raises(BackboneNotLocalError, match="gone"):
        load_run(moved)


def test_a_pretrained_backbone_config_is_bounded(pretrained_run, tmp_path):
    _, run, source, _ = pretrained_run
    crafted = tmp_path / "checkpoint"
    shutil.copytree(source, crafted)
    config = json.loads((crafted / "config.json").read_text())
    config["vocab_size"] = 2**40
    (crafted / "config.json").write_text(json.dumps(config))
    target = copy_run(run, tmp_path)
    meta = read_meta(target)
    meta["backbone"]["local_path"] = str(crafted)
    write_meta(target, meta)
    with pytest.raises(ConfigSizeError, match="vocab_size"):
        load_run(target)


# ------------------------------------------------------------------------------------------ --adapter vs the data config
class OtherSynthetic(SyntheticDataModule):
    """Same rows, another dataset class."""


def datamodule(kind: str = "sequential", cls: type = SyntheticDataModule, **kwargs) -> SyntheticDataModule:
    dm = cls(kind=kind, **{"n_train": N_TRAIN, "n_val": 8, "n_test": 8, **kwargs})
    dm.setup("fit")
    return dm


def test_an_adapter_that_fits_the_data_config_passes(saved, sequential):
    _, run = saved
    requests = [UnlearningRequest("IR", 3), UnlearningRequest("RC", 7, {"target": 1})]
    record = check_adapter_matches_data(run, sequential, list(sequential.train_rows), requests)
    assert record["n_train"] == N_TRAIN
    check_adapter_matches_data(run / "adapter", datamodule(), requests=[{"id": 0}, N_TRAIN - 1])


def test_an_adapter_trained_on_fewer_rows_is_refused_naming_the_request_row(saved):
    """The issue's case: trained with n_train 32, unlearned for row 40 with n_train 64 (exit 0 before)."""
    _, run = saved
    with pytest.raises(AdapterDataMismatchError, match=rf"n_train {N_TRAIN}.*gives 64.*row\(s\) 50 are not among"):
        check_adapter_matches_data(run, datamodule(n_train=64), requests=[UnlearningRequest("IR", 50)])


@pytest.mark.parametrize(
    ("dm_kwargs", "message"),
    [
        ({"num_items": 120}, "num_items"),
        ({"seed": 1}, "same ids but other contents"),
        ({"cls": OtherSynthetic}, "OtherSynthetic"),
        ({"kind": "binary"}, "sequential recommender.*binary"),
    ],
)
def test_an_adapter_from_another_data_config_is_refused(saved, dm_kwargs, message):
    _, run = saved
    with pytest.raises(AdapterDataMismatchError, match=message):
        check_adapter_matches_data(run, datamodule(**dm_kwargs))


def test_an_adapter_without_a_training_record_is_refused_unless_allowed(saved, sequential, tmp_path):
    run = copy_run(saved[1], tmp_path)
    meta = read_meta(run)
    del meta["training_data"]
    write_meta(run, meta)
    with pytest.raises(AdapterDataMismatchError, match="without a record of its training data"):
        check_adapter_matches_data(run, sequential)
    with pytest.warns(UserWarning, match="cannot be checked"):
        assert check_adapter_matches_data(run, sequential, allow_unrecorded=True) == {}
    with pytest.raises(AdapterDataMismatchError, match="covers 96 items.*num_items 120"):
        check_adapter_matches_data(run, datamodule(num_items=120), allow_unrecorded=True)
