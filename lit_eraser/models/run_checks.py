"""Checks that make a run directory safe to load and an ``--adapter`` safe to unlearn.

A run directory is input like any other file: it may be damaged, stale, crafted, or simply belong to another
data configuration. Everything here runs *before* the loader allocates or uses what the directory describes,
and fails with a ``ValueError`` subclass that names the file, the tensor or the setting at fault:

* :func:`check_model_config_sizes` / :func:`check_init_sizes`: sizes bounded before anything is allocated (a
  crafted config once made the loader try to allocate 262 TB).
* :func:`check_safetensors_header` / :func:`check_tensors`: every stored tensor has a floating-point dtype, the
  shape the config implies and only finite values (int64 LoRA tensors used to be cast silently, b = 0, Δ = 0).
* :func:`run_file_checksums` / :func:`verify_run_files`: ``base_model/`` and ``tokenizer/`` are under the
  sha256 recorded in ``recommender.json`` (a NaN base used to pass and crash much later).
* :func:`resolve_local_backbone`: a run never makes the loader reach the network.
* :func:`training_data_record` / :func:`check_adapter_matches_data`: what an adapter was trained on (recorded by
  ``save_run``) must be what the data config gives now.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lit_eraser.io import sha256_file
from lit_eraser.models.persistence import RECOMMENDER_JSON, CorruptFileError, RunDirectoryError, read_recommender_json

#: Largest value a run directory may give each size. Far above any LLaMA-family model this project targets
#: (LLaMA-2 70B: hidden 8192, 80 layers, vocab 32000), far below what exhausts a machine. Keys are the
#: transformers config names; aliases of other architectures map onto them (:data:`_CONFIG_ALIASES`).
SIZE_LIMITS: dict[str, int] = {
    "hidden_size": 32_768,
    "intermediate_size": 262_144,
    "num_hidden_layers": 1_024,
    "num_attention_heads": 1_024,
    "num_key_value_heads": 1_024,
    "head_dim": 4_096,
    "vocab_size": 2_097_152,
    "max_position_embeddings": 4_194_304,
    "lora_r": 4_096,
    "projector_hidden": 65_536,
    "max_length": 4_194_304,
    "num_items": 50_000_000,
    "sasrec_hidden_size": 4_096,
    "sasrec_num_layers": 64,
    "sasrec_num_heads": 256,
    "sasrec_max_len": 65_536,
}
#: Estimated parameters of a whole base model described by a config (above a 100B-parameter model in float32,
#: the config is wrong: refuse it before ``from_pretrained``/``LlamaForCausalLM(config)`` allocates it).
MAX_BASE_PARAMETERS = 200_000_000_000
#: Estimated parameters of the LLaRA projector (item dim x hidden + hidden x LLM width).
MAX_PROJECTOR_PARAMETERS = 500_000_000

_CONFIG_ALIASES: dict[str, tuple[str, ...]] = {
    "hidden_size": ("hidden_size", "n_embd", "d_model"),
    "intermediate_size": ("intermediate_size", "n_inner", "ffn_dim"),
    "num_hidden_layers": ("num_hidden_layers", "n_layer", "num_layers"),
    "num_attention_heads": ("num_attention_heads", "n_head"),
    "num_key_value_heads": ("num_key_value_heads",),
    "head_dim": ("head_dim",),
    "vocab_size": ("vocab_size",),
    "max_position_embeddings": ("max_position_embeddings", "n_positions"),
}

_HINT_RUN = "the run directory is damaged, was modified, or was written by something else: retrain it with train.py"


class ConfigSizeError(RunDirectoryError):
    """A size in a run directory's configuration is not a positive integer or exceeds :data:`SIZE_LIMITS`."""

    hint = _HINT_RUN


class AdapterContentError(RunDirectoryError):
    """A stored tensor has the wrong dtype or shape, or holds NaN/inf values."""

    hint = _HINT_RUN


class BackboneNotLocalError(RunDirectoryError):
    """The pretrained backbone a run names is not on this machine; loading a run never downloads anything."""

    hint = (
        "put the backbone's files at the path named (or download it once yourself, e.g. `huggingface-cli download "
        "<id>`, into the local Hugging Face cache); loading a run uses local files only"
    )


class AdapterDataMismatchError(ValueError):
    """An ``--adapter`` was trained on other rows, another catalogue or another dataset than the data config gives."""

    hint = (
        "pass the data settings the adapter was trained with (they are recorded under 'training_data' in its "
        "adapter/recommender.json), or drop --adapter to train the original here"
    )


# ------------------------------------------------------------------------------------------------ sizes
def _size(value: Any, name: str, where: str, limit: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigSizeError(f"{where}: {name} must be a positive integer, got {value!r}")
    if value > limit:
        raise ConfigSizeError(f"{where}: {name} = {value:,} exceeds the limit {limit:,}; refusing to allocate it")
    return value


def check_model_config_sizes(config: Mapping[str, Any], where: str) -> int:
    """Refuse a model config whose sizes are not positive integers within :data:`SIZE_LIMITS`.

    Called on the raw ``config.json`` before transformers builds (allocates) anything. Returns the estimated
    parameter count, itself bounded by :data:`MAX_BASE_PARAMETERS`. Keys that are absent are skipped (other
    architectures name them differently); a nested ``text_config`` is checked too.
    """
    if not isinstance(config, Mapping):
        raise RunDirectoryError(f"{where} is not a JSON object")
    sizes: dict[str, int] = {}
    problems: list[str] = []
    for name, aliases in _CONFIG_ALIASES.items():
        for alias in aliases:
            value = config.get(alias)
            if value is not None:
                try:
                    sizes[name] = _size(value, alias, where, SIZE_LIMITS[name])
                except ConfigSizeError as error:
                    problems.append(str(error).removeprefix(f"{where}: "))
                break
    if problems:  # every bad size at once, so one fix suffices
        raise ConfigSizeError(f"{where}: " + "; ".join(problems))
    hidden = sizes.get("hidden_size", 0)
    heads = sizes.get("num_attention_heads")
    if heads and hidden and "head_dim" not in sizes and hidden % heads:
        raise ConfigSizeError(f"{where}: hidden_size {hidden} is not divisible by num_attention_heads {heads}")
    kv = sizes.get("num_key_value_heads")
    if kv and heads and (kv > heads or heads % kv):
        raise ConfigSizeError(f"{where}: num_key_value_heads {kv} does not divide num_attention_heads {heads}")
    head_dim = sizes.get("head_dim") or (hidden // heads if heads else hidden)
    inter = sizes.get("intermediate_size", 4 * hidden)
    layers = sizes.get("num_hidden_layers", 0)
    kv_width = head_dim * (kv or heads or 1)
    q_width = head_dim * (heads or 1)
    per_layer = hidden * (q_width + 2 * kv_width) + q_width * hidden + 3 * hidden * inter
    tied = bool(config.get("tie_word_embeddings", False))
    estimate = sizes.get("vocab_size", 0) * hidden * (1 if tied else 2) + layers * per_layer
    if estimate > MAX_BASE_PARAMETERS:
        raise ConfigSizeError(
            f"{where} describes a model of about {estimate:,} parameters (limit {MAX_BASE_PARAMETERS:,}); refusing to allocate it"
        )
    text_config = config.get("text_config")
    if isinstance(text_config, Mapping):
        estimate += check_model_config_sizes(text_config, f"{where} (text_config)")
    return estimate


def check_init_sizes(init: Mapping[str, Any], where: str) -> None:
    """Bound the sizes in ``recommender.json``'s ``init`` that the loader allocates from (LoRA rank, projector)."""
    if not isinstance(init, Mapping):
        raise RunDirectoryError(f"{where}: 'init' is not a JSON object")
    lora = init.get("lora")
    if isinstance(lora, Mapping) and "r" in lora:
        _size(lora["r"], "lora.r", where, SIZE_LIMITS["lora_r"])
    if init.get("projector_hidden") is not None:
        _size(init["projector_hidden"], "projector_hidden", where, SIZE_LIMITS["projector_hidden"])
    if init.get("max_length") is not None:
        _size(init["max_length"], "max_length", where, SIZE_LIMITS["max_length"])
    backbone = init.get("backbone", "tiny")
    if not isinstance(backbone, str) or not backbone:
        raise RunDirectoryError(f"{where}: init.backbone must be 'tiny' or a path, got {backbone!r}")


def check_projector_budget(item_dim: int, llm_dim: int, hidden: int | None, where: str) -> None:
    """Bound the projector the loader is about to allocate (LLaRA: ``item_dim -> hidden -> llm_dim``)."""
    width = hidden or llm_dim
    estimate = item_dim * width + width * llm_dim
    if estimate > MAX_PROJECTOR_PARAMETERS:
        raise ConfigSizeError(f"{where}: a projector of {estimate:,} parameters exceeds the limit {MAX_PROJECTOR_PARAMETERS:,}")


def check_item_encoder_metadata(metadata: Mapping[str, str], path: Path) -> tuple[int, dict[str, Any]]:
    """``(num_items, settings)`` of a SASRec file's metadata, bounded before SASRec is built from them."""
    try:
        num_items = int(metadata["num_items"])
        settings = json.loads(metadata["settings"])
    except (KeyError, TypeError, ValueError) as error:
        raise RunDirectoryError(f"{path} has no readable item-encoder metadata: {error}") from None
    if not isinstance(settings, dict):
        raise RunDirectoryError(f"{path}: the item-encoder settings are not a JSON object")
    where = str(path)
    _size(num_items, "num_items", where, SIZE_LIMITS["num_items"])
    for key in ("hidden_size", "num_layers", "num_heads", "max_len"):
        if key in settings:
            _size(settings[key], f"settings.{key}", where, SIZE_LIMITS[f"sasrec_{key}"])
    return num_items, settings


# ------------------------------------------------------------------------------------------------ tensors
def expected_shapes(build: Callable[[], nn.Module]) -> dict[str, tuple[int, ...]]:
    """The state-dict shapes of the module ``build()`` returns, built on the meta device (nothing allocated)."""
    with torch.device("meta"):
        module = build()
    return {name: tuple(tensor.shape) for name, tensor in module.state_dict().items()}


def safetensors_header(path: str | os.PathLike[str]) -> dict[str, tuple[str, tuple[int, ...]]]:
    """``name -> (dtype, shape)`` of every tensor in a safetensors file, read from its header (no tensor data)."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise RunDirectoryError(f"{path} is missing")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            out = {}
            for key in handle.keys():  # noqa: SIM118 - safe_open is no dict
                view = handle.get_slice(key)
                out[key] = (str(view.get_dtype()), tuple(int(d) for d in view.get_shape()))
    except (SafetensorError, OSError, ValueError, RuntimeError) as error:
        raise CorruptFileError(f"{path} is corrupt or truncated (not a readable safetensors file): {error}") from None
    return out


#: safetensors dtype names that are floating point (the only kind a weight may have).
_FLOAT_DTYPES = {"F16", "BF16", "F32", "F64", "F8_E4M3", "F8_E5M2"}


def _shape_text(shape: Sequence[int]) -> str:
    return "(" + ", ".join(str(d) for d in shape) + ")"


def _compare_keys(found: Iterable[str], expected: Mapping[str, Any], path: Path) -> None:
    found = set(found)
    missing, unexpected = sorted(set(expected) - found), sorted(found - set(expected))
    if missing or unexpected:
        raise AdapterContentError(
            f"{path} does not fit the model its config describes: {len(found)} tensors for {len(expected)} expected; "
            f"missing {missing[:3]}{' ...' if len(missing) > 3 else ''}, unexpected {unexpected[:3]}"
            f"{' ...' if len(unexpected) > 3 else ''}"
        )


def check_safetensors_header(
    path: str | os.PathLike[str], expected: Mapping[str, Sequence[int]] | None = None
) -> dict[str, tuple[str, tuple[int, ...]]]:
    """Every tensor in ``path`` is floating point and (with ``expected``) has exactly the expected names and shapes.

    Reads only the header, so it is cheap and runs before anything the file describes is allocated.
    """
    path = Path(path)
    header = safetensors_header(path)
    for name, (dtype, _) in header.items():
        if dtype not in _FLOAT_DTYPES:
            raise AdapterContentError(
                f"{path}: tensor {name!r} has dtype {dtype}, not a floating-point dtype (a weight file must hold "
                "floating-point weights; integer values would be cast silently)"
            )
    if expected is not None:
        _compare_keys(header, expected, path)
        for name, shape in expected.items():
            if tuple(header[name][1]) != tuple(shape):
                raise AdapterContentError(
                    f"{path}: tensor {name!r} has shape {_shape_text(header[name][1])}, the config implies "
                    f"{_shape_text(shape)}"
                )
    return header


def check_tensors(tensors: Mapping[str, torch.Tensor], path: str | os.PathLike[str], expected: Mapping[str, Sequence[int]] | None = None) -> None:
    """Tensors read from ``path``: floating point, finite and (with ``expected``) of the expected names/shapes."""
    path = Path(path)
    if expected is not None:
        _compare_keys(tensors, expected, path)
    for name, tensor in tensors.items():
        if not tensor.is_floating_point():
            raise AdapterContentError(f"{path}: tensor {name!r} has dtype {tensor.dtype}, not a floating-point dtype")
        if expected is not None and tuple(tensor.shape) != tuple(expected[name]):
            raise AdapterContentError(
                f"{path}: tensor {name!r} has shape {_shape_text(tensor.shape)}, the config implies {_shape_text(expected[name])}"
            )
        if not bool(torch.isfinite(tensor).all()):
            bad = int((~torch.isfinite(tensor)).sum())
            raise AdapterContentError(f"{path}: tensor {name!r} holds {bad:,} non-finite (NaN/inf) values")


def check_tensor_file(path: str | os.PathLike[str], expected: Mapping[str, Sequence[int]] | None = None) -> dict[str, torch.Tensor]:
    """:func:`check_safetensors_header` on the header, then read the file and :func:`check_tensors` its values."""
    from lit_eraser.models.persistence import read_safetensors

    check_safetensors_header(path, expected)
    tensors = read_safetensors(path)
    check_tensors(tensors, path, expected)
    return tensors


def check_lora_header(path: str | os.PathLike[str], r: int) -> None:
    """Before the adapter is allocated: every LoRA A/B tensor in ``path`` is floating point and of rank ``r``."""
    path = Path(path)
    for name, (_, shape) in check_safetensors_header(path).items():
        if len(shape) != 2:
            raise AdapterContentError(f"{path}: tensor {name!r} has shape {_shape_text(shape)}, a LoRA matrix is 2-D")
        rank = shape[0] if ".lora_A." in name else shape[1] if ".lora_B." in name else None
        if rank is not None and rank != r:
            raise AdapterContentError(
                f"{path}: tensor {name!r} has shape {_shape_text(shape)}, which is not of the LoRA rank r = {r} "
                f"recorded in {path.parent / RECOMMENDER_JSON}"
            )


#: The frozen item encoder's file in an adapter directory (LLaRA).
ITEM_ENCODER_FILE = "item_encoder.safetensors"


def check_item_encoder_file(path: str | os.PathLike[str], num_items: int | None = None) -> None:
    """A SASRec item-encoder file: bounded metadata, and floating, finite tensors of the shapes it implies.

    Args:
        path: The ``item_encoder.safetensors`` file.
        num_items: The catalogue size the recommender indexes (LLaRA: its item titles); must match the encoder's.
    """
    from lit_eraser.models.persistence import read_safetensors
    from lit_eraser.models.sasrec import SASRec, SasrecSettings

    path = Path(path)
    check_safetensors_header(path)
    tensors, metadata = read_safetensors(path, with_metadata=True)
    if metadata.get("format") != "lit_eraser.sasrec":
        raise RunDirectoryError(f"{path} is not a lit-eraser SASRec item encoder file")
    stored_items, raw = check_item_encoder_metadata(metadata, path)
    try:
        settings = SasrecSettings(**raw)
        shapes = expected_shapes(lambda: SASRec(stored_items, settings))
    except (TypeError, ValueError) as error:
        raise RunDirectoryError(f"{path} records item-encoder settings that cannot be built: {error}") from None
    check_tensors(tensors, path, shapes)
    if num_items is not None and num_items != stored_items:
        raise AdapterContentError(f"{path} encodes {stored_items} items but the recommender indexes {num_items} items")


# ------------------------------------------------------------------------------------------------ checksums
#: Sub-directories of a run that are checksummed into ``recommender.json`` (``run_files``).
RUN_SUBDIRS = ("base_model", "tokenizer")


def run_file_checksums(run_dir: str | os.PathLike[str]) -> dict[str, str]:
    """sha256 of every file in the run's ``base_model/`` and ``tokenizer/``, keyed by path relative to the run."""
    run_dir = Path(run_dir)
    out: dict[str, str] = {}
    for sub in RUN_SUBDIRS:
        directory = run_dir / sub
        if directory.is_dir():
            for path in sorted(p for p in directory.rglob("*") if p.is_file()):
                out[path.relative_to(run_dir).as_posix()] = sha256_file(path)
    return out


def verify_run_files(
    run_dir: str | os.PathLike[str],
    adapter_dir: str | os.PathLike[str],
    meta: Mapping[str, Any],
    subdirs: Sequence[str] = RUN_SUBDIRS,
) -> bool:
    """Check the files of ``subdirs`` (``base_model/``, ``tokenizer/``) against the sha256 recorded at save time.

    Returns ``False`` when ``recommender.json`` records none (a run saved before they were recorded): the
    caller then validates the contents themselves (bounded sizes, shapes, dtypes, finite values), which is
    what makes such a run safe to read.
    """
    run_dir = Path(run_dir)
    recorded = meta.get("run_files")
    if recorded is None:
        return False
    if not isinstance(recorded, Mapping):
        raise RunDirectoryError(f"{Path(adapter_dir) / RECOMMENDER_JSON}: 'run_files' is not a JSON object")
    for relative, digest in recorded.items():
        parts = Path(relative).parts
        if not parts or parts[0] not in RUN_SUBDIRS or ".." in parts or Path(relative).is_absolute():
            raise RunDirectoryError(f"{Path(adapter_dir) / RECOMMENDER_JSON} records a file outside the run: {relative!r}")
        if parts[0] not in subdirs:
            continue
        path = run_dir / relative
        if not path.is_file():
            raise RunDirectoryError(f"{path} is missing (recorded in {Path(adapter_dir) / RECOMMENDER_JSON})")
        if sha256_file(path) != digest:
            raise CorruptFileError(
                f"{path} is corrupt or was modified: its sha256 differs from the one recorded in "
                f"{Path(adapter_dir) / RECOMMENDER_JSON} when the run was saved"
            )
    return True


# ------------------------------------------------------------------------------------------------ backbone
def resolve_local_backbone(name_or_path: str, recorded_path: str | None, where: str) -> str:
    """Where a run's pretrained backbone is on this machine; never a download.

    Tried in order: the absolute path recorded at save time, ``name_or_path`` as a local directory (relative
    to the working directory), then ``name_or_path`` as a hub id already in the local Hugging Face cache.

    Raises:
        BackboneNotLocalError: none of them exists locally (the message names the paths that are missing).
    """
    candidates = [p for p in (recorded_path, name_or_path) if p]
    for candidate in candidates:
        if Path(candidate).expanduser().is_dir():
            return str(Path(candidate).expanduser())
    if _in_local_hf_cache(name_or_path):
        return name_or_path
    missing = ", ".join(dict.fromkeys(str(Path(c).expanduser().absolute()) for c in candidates))
    raise BackboneNotLocalError(
        f"{where} names the pretrained backbone {name_or_path!r}, which is not on this machine: no directory {missing} "
        "and not in the local Hugging Face cache; loading a run never downloads a model"
    )


def _in_local_hf_cache(name: str) -> bool:
    """``name`` is a hub id whose ``config.json`` is in the local cache (looked up without any network call)."""
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(name, "config.json")
    except Exception:  # noqa: BLE001 - an invalid repo id, or no hub library: not in the cache
        return False
    return isinstance(found, str) and Path(found).is_file()


def local_config(name_or_path: str) -> dict[str, Any]:
    """The raw ``config.json`` of a local backbone directory or cached hub id (local files only)."""
    path = Path(name_or_path) / "config.json"
    if not path.is_file():
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(name_or_path, "config.json")
        if not isinstance(cached, str):
            raise RunDirectoryError(f"{path} is missing: {name_or_path} is not a transformers checkpoint")
        path = Path(cached)
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CorruptFileError(f"{path} is not valid JSON: {error}") from None
    if not isinstance(config, dict):
        raise RunDirectoryError(f"{path} is not a JSON object")
    return config


# ------------------------------------------------------------------------------------------------ training data
def _plain(value: Any) -> Any:
    """JSON-ready form of numpy scalars/arrays in a row (so a list of rows and a Dataset hash alike)."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if hasattr(value, "item"):
        return value.item()
    return str(value)


def _row_list(rows: Any) -> list[Mapping[str, Any]]:
    if hasattr(rows, "to_list"):  # datasets.Dataset: one Arrow->Python conversion
        return list(rows.to_list())
    return list(rows)


def row_ids_sha256(ids: Iterable[int]) -> str:
    """sha256 of the sorted row ids (order-free: the same rows in another order hash alike)."""
    return hashlib.sha256(json.dumps(sorted(int(i) for i in ids)).encode()).hexdigest()


def rows_sha256(rows: Iterable[Mapping[str, Any]]) -> str:
    """sha256 of the rows' contents, sorted by id (catches other contents under the same ids: another data seed).

    ``None`` fields are left out: a list of rows and the ``datasets.Dataset`` made from it (which fills missing
    fields with ``None``) hash alike.
    """
    digest = hashlib.sha256()
    for row in sorted(rows, key=lambda r: int(r["id"])):
        plain = {key: value for key, value in dict(row).items() if value is not None}
        digest.update(json.dumps(plain, sort_keys=True, default=_plain, ensure_ascii=False).encode("utf-8", "surrogatepass"))
        digest.update(b"\n")
    return digest.hexdigest()


def data_class_name(datamodule: Any) -> str:
    klass = type(datamodule)
    return f"{klass.__module__}.{klass.__qualname__}"


def training_data_record(datamodule: Any, rows: Any = None) -> dict[str, Any]:
    """What an adapter is trained on, for ``recommender.json`` (``training_data``): data class, row kind,
    ``n_train``, ``num_items``, the id range, and sha256 of the sorted row ids and of the row contents.

    Args:
        datamodule: The set-up datamodule the adapter is built from / fitted on.
        rows: The training rows; default ``datamodule.train_rows``.
    """
    rows = _row_list(datamodule.train_rows if rows is None else rows)
    record: dict[str, Any] = {
        "data_class": data_class_name(datamodule),
        "kind": getattr(datamodule, "kind", None),
        "n_train": len(rows),
        "num_items": int(getattr(datamodule, "num_items", 0) or 0),
    }
    if any(not isinstance(row, Mapping) or row.get("id") is None for row in rows):
        return record  # rows without stable ids (a hand-made datamodule): only the counts can be compared later
    ids = [int(row["id"]) for row in rows]
    record.update(
        row_id_min=min(ids) if ids else None,
        row_id_max=max(ids) if ids else None,
        row_ids_sha256=row_ids_sha256(ids),
        rows_sha256=rows_sha256(rows),
    )
    return record


def _request_id(request: Any) -> int:
    if isinstance(request, Mapping):
        return int(request["id"])
    if hasattr(request, "id"):
        return int(request.id)
    return int(request)


def _adapter_meta(run_dir: Path) -> tuple[Path, dict[str, Any]]:
    adapter_dir = run_dir / "adapter" if (run_dir / "adapter" / RECOMMENDER_JSON).is_file() else run_dir
    return adapter_dir, read_recommender_json(adapter_dir)


def check_adapter_matches_data(
    run_dir: str | os.PathLike[str],
    datamodule: Any,
    train_rows: Any = None,
    requests: Iterable[Any] = (),
    allow_unrecorded: bool = False,
) -> dict[str, Any]:
    """Refuse an ``--adapter`` that was not trained on the rows the data config gives (before any unlearning).

    Unlearning computes the update from the training rows the *data config* yields; if the adapter was trained
    on other rows (another ``n_train``, catalogue, seed or dataset), the result is meaningless although every
    step succeeds. ``save_run`` records what the adapter was trained on (``training_data`` in
    ``recommender.json``); this compares it with ``datamodule``/``train_rows``.

    Args:
        run_dir: The ``--adapter`` run directory (or its ``adapter/`` directory).
        datamodule: The set-up datamodule of this experiment (its class, ``kind`` and ``num_items`` are compared).
        train_rows: The rows θ̂ is assumed fitted on (after any corruption); default ``datamodule.train_rows``.
        requests: The unlearning requests (``UnlearningRequest``, mappings with ``id``, or ids); each row id must be
            among the rows the adapter was trained on.
        allow_unrecorded: Accept (with a warning) an adapter saved before ``training_data`` was recorded, checking
            only its catalogue size; by default such an adapter is refused.

    Returns:
        The adapter's recorded ``training_data`` (``{}`` for an accepted unrecorded adapter).

    Raises:
        AdapterDataMismatchError: the adapter does not fit the data config (every difference is named).
    """
    run_dir = Path(run_dir)
    adapter_dir, meta = _adapter_meta(run_dir)
    rows = _row_list(datamodule.train_rows if train_rows is None else train_rows)
    ids = {int(row["id"]) for row in rows}
    num_items = int(getattr(datamodule, "num_items", 0) or 0)
    request_ids = [_request_id(r) for r in requests]
    where = f"--adapter {run_dir}"
    kind = getattr(datamodule, "kind", None)
    if meta.get("kind") and kind and meta["kind"] != kind:
        raise AdapterDataMismatchError(f"{where} holds a {meta['kind']} recommender; the data config gives {kind} rows")

    recorded = meta.get("training_data")
    if not isinstance(recorded, Mapping):
        titles = (meta.get("state") or {}).get("item_titles")
        problems = []
        if isinstance(titles, list) and num_items and len(titles) != num_items:
            problems.append(f"it covers {len(titles)} items, the data config gives num_items {num_items}")
        message = (
            f"{where} was saved without a record of its training data ({adapter_dir / RECOMMENDER_JSON} has no "
            "'training_data'; saved by an older lit-eraser), so n_train and the row ids cannot be checked"
        )
        if problems or not allow_unrecorded:
            raise AdapterDataMismatchError(message + ("; " + "; ".join(problems) if problems else "; retrain it with train.py"))
        warnings.warn(message, stacklevel=2)
        return {}

    problems: list[str] = []
    data_class = data_class_name(datamodule)
    if recorded.get("data_class") and recorded["data_class"] != data_class:
        problems.append(f"it was trained on {recorded['data_class']} data, the data config is {data_class}")
    if recorded.get("num_items") is not None and int(recorded["num_items"]) != num_items:
        problems.append(f"it was trained with num_items {recorded['num_items']}, the data config gives {num_items}")
    n_train = recorded.get("n_train")
    if n_train is not None and int(n_train) != len(rows):
        problems.append(f"it was trained on n_train {n_train} rows, the data config gives {len(rows)}")
    low, high = recorded.get("row_id_min"), recorded.get("row_id_max")
    outside = sorted({i for i in request_ids if i not in ids or (low is not None and not low <= i <= high)})
    if outside:
        span = f" (ids {low}..{high})" if low is not None else ""
        shown = ", ".join(map(str, outside[:10])) + (f" and {len(outside) - 10} more" if len(outside) > 10 else "")
        problems.append(f"request row(s) {shown} are not among the {n_train} rows it was trained on{span}")
    if not problems and recorded.get("row_ids_sha256") and recorded["row_ids_sha256"] != row_ids_sha256(ids):
        problems.append(f"it was trained on other row ids than the {len(rows)} the data config gives")
    if not problems and recorded.get("rows_sha256") and recorded["rows_sha256"] != rows_sha256(rows):
        problems.append(
            "it was trained on rows with the same ids but other contents (another data seed, other data files, "
            "or an edit/corruption the adapter was not trained on)"
        )
    if problems:
        raise AdapterDataMismatchError(f"{where} does not fit the data config: " + "; ".join(problems))
    return dict(recorded)
