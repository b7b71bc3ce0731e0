"""LLM recommenders: tiny/pretrained LLaMA backbones + LoRA, the in-process tokenizer, SASRec, the projector,
the LLaRA- and TALLRec-style LightningModules, and run-directory save/load (docs/ARCHITECTURE.md §3-§4).

| name      | class                 | rows       | θ                  |
| --------- | --------------------- | ---------- | ------------------ |
| ``llara`` | ``LlaraRecommender``  | sequential | LoRA + projector   |
| ``tallrec`` | ``TallrecRecommender`` | binary  | LoRA               |
"""

from lit_eraser.models.backbone import (
    LLAMA_LINEAR_MODULES,
    LoraSettings,
    TinyLlamaSettings,
)
from lit_eraser.models.base import RecommenderModule
from lit_eraser.models.llara import LlaraRecommender, parse_choice
from lit_eraser.models.persistence import (
    CorruptFileError,
    RunDirectoryError,
    TokenizerMismatchError,
    load_run,
)
from lit_eraser.models.pretrain import BasePretrainSettings
from lit_eraser.models.projector import Projector
from lit_eraser.models.sasrec import SASRec, SasrecSettings, cached_sasrec, train_sasrec
from lit_eraser.models.tallrec import TallrecRecommender
from lit_eraser.models.tokenizer import TokenizerError, train_tokenizer

MODELS: dict[str, type[RecommenderModule]] = {
    LlaraRecommender.registry_name: LlaraRecommender,
    TallrecRecommender.registry_name: TallrecRecommender,
}

__all__ = [
    "LLAMA_LINEAR_MODULES",
    "MODELS",
    "BasePretrainSettings",
    "CorruptFileError",
    "LlaraRecommender",
    "LoraSettings",
    "Projector",
    "RecommenderModule",
    "RunDirectoryError",
    "SASRec",
    "SasrecSettings",
    "TallrecRecommender",
    "TinyLlamaSettings",
    "TokenizerError",
    "TokenizerMismatchError",
    "cached_sasrec",
    "load_run",
    "parse_choice",
    "train_sasrec",
    "train_tokenizer",
]
