"""Run-directory persistence (docs/ARCHITECTURE.md §4): safetensors only, checksummed, clear errors.

```
RUN/adapter/adapter_config.json        peft LoRA config
RUN/adapter/adapter_model.safetensors  LoRA weights
RUN/adapter/projector.safetensors      LLaRA projector (part of θ)
RUN/adapter/item_encoder.safetensors   SASRec (frozen; LLaRA only)
RUN/adapter/recommender.json           class, hyper-parameters, tokenizer fingerprint, file checksums
RUN/base_model/                        tiny preset only: config.json + model.safetensors
RUN/tokenizer/                         tokenizer.json etc.
```
Weights are never pickled and never read with ``torch.load``.

``recommender.json`` records, besides the class and its settings: ``files`` (sha256 of each adapter file),
``run_files`` (sha256 of every file under ``base_model/`` and ``tokenizer/``), ``training_data`` (what the
adapter was trained on: data class, ``n_train``, ``num_items``, sha256 of the sorted row ids and of the rows) and,
for a pretrained backbone, ``backbone`` (its local directory). ``adapter_config.json``'s
``base_model_name_or_path`` is for PEFT only (see ``RecommenderModule.peft_base_model_path``).

Loading validates all of it before use (``lit_eraser.models.run_checks``): bounded sizes, checksums, tensor
dtypes/shapes/finiteness, local files only. A run saved before ``run_files``/``training_data`` existed is read
if its base passes the content checks; ``check_adapter_matches_data`` refuses it as an ``--adapter`` by default.
"""

from __future__ import annotations

import importlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from lit_eraser.io import sha256_file
from lit_eraser.models.tokenizer import TokenizerError

if TYPE_CHECKING:
    from lit_eraser.models.base import RecommenderModule

RECOMMENDER_JSON = "recommender.json"
FORMAT = "lit-eraser-recommender"
FORMAT_VERSION = 1


class RunDirectoryError(ValueError):
    """A run or adapter directory that cannot be loaded: a missing, corrupt or inconsistent file."""


class CorruptFileError(RunDirectoryError):
    """A weight file that is truncated, unreadable, or differs from the checksum recorded at save time."""


class TokenizerMismatchError(RunDirectoryError, TokenizerError):
    """The tokenizer next to an adapter is not the one the adapter was trained with."""


def read_safetensors(path: str | os.PathLike[str], with_metadata: bool = False) -> Any:
    """All tensors of a safetensors file (CPU); a missing or damaged file raises a specific error naming it."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise RunDirectoryError(f"{path} is missing")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            metadata = dict(handle.metadata() or {})
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118 - safe_open is no dict
    except (SafetensorError, OSError, ValueError, RuntimeError) as error:
        raise CorruptFileError(f"{path} is corrupt or truncated (not a readable safetensors file): {error}") from None
    return (tensors, metadata) if with_metadata else tensors


def write_safetensors(tensors: dict[str, torch.Tensor], path: str | os.PathLike[str], metadata: dict[str, str] | None = None) -> None:
    from safetensors.torch import save_file

    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(path), metadata=metadata or {"format": "pt"})


def read_recommender_json(adapter_dir: str | os.PathLike[str]) -> dict[str, Any]:
    path = Path(adapter_dir) / RECOMMENDER_JSON
    if not path.is_file():
        raise RunDirectoryError(f"{path} is missing: {Path(adapter_dir)} is not a lit-eraser adapter directory")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CorruptFileError(f"{path} is not valid JSON: {error}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise RunDirectoryError(f"{path} is not a lit-eraser recommender description (format {FORMAT!r})")
    if int(meta.get("version", 0)) > FORMAT_VERSION:
        raise RunDirectoryError(f"{path} has format version {meta.get('version')}; this lit-eraser reads <= {FORMAT_VERSION}")
    return meta


def verify_checksums(adapter_dir: str | os.PathLike[str], meta: dict[str, Any]) -> None:
    """Every file recorded in ``recommender.json`` exists and has its recorded sha256."""
    adapter_dir = Path(adapter_dir)
    for name, digest in (meta.get("files") or {}).items():
        path = adapter_dir / name
        if not path.is_file():
            raise RunDirectoryError(f"{path} is missing (recorded in {adapter_dir / RECOMMENDER_JSON})")
        if sha256_file(path) != digest:
            raise CorruptFileError(
                f"{path} is corrupt or was modified: its sha256 differs from the one recorded in "
                f"{adapter_dir / RECOMMENDER_JSON} when the adapter was saved"
            )


def resolve_class(meta: dict[str, Any]) -> type[RecommenderModule]:
    from lit_eraser.models import MODELS
    from lit_eraser.models.base import RecommenderModule

    name = meta.get("class", "")
    for klass in MODELS.values():
        if klass.__name__ == name:
            return klass
    module_name = meta.get("module")
    if module_name and module_name.startswith("lit_eraser."):
        klass = getattr(importlib.import_module(module_name), name, None)
        if isinstance(klass, type) and issubclass(klass, RecommenderModule):
            return klass
    raise RunDirectoryError(f"recommender.json names an unknown recommender class {name!r}")


def load_run(run_dir: str | os.PathLike[str], adapter_dir: str | os.PathLike[str] | None = None) -> RecommenderModule:
    """Rebuild the recommender saved in ``run_dir`` (class read from ``adapter/recommender.json``), in eval mode.

    Args:
        run_dir: A run directory written by ``save_run`` (or ``train.py``).
        adapter_dir: Load the adapter from here instead of ``run_dir/adapter`` (e.g. an unlearned adapter
            under ``adapters/<method>/``); the tokenizer and base model still come from ``run_dir``.
    """
    from lit_eraser.models.base import RecommenderModule

    return RecommenderModule.load(run_dir, adapter_dir=adapter_dir)
