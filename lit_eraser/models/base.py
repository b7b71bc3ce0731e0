"""``RecommenderModule``: what the LLaRA- and TALLRec-style LightningModules share (docs/ARCHITECTURE.md §3).

Functional API used by the influence engine and the unlearning code:

* ``encode(rows) -> dict[str, Tensor]``: ``input_ids``, ``attention_mask``, ``labels`` (-100 everywhere but the
  response tokens, eos included), ``response_index`` (for each response token, the position whose logits
  predict it; padded with 0) and any extra inputs (LLaRA: ``slot_item_ids``). Batches are right-padded.
* ``forward(batch) -> Tensor[B]``: per-item loss, the mean NLL over the item's response tokens, in float32.
  Pure (no side effects, no in-place writes to parameters), so ``torch.func.functional_call`` works.
* ``adapter_parameters() -> dict[str, nn.Parameter]``: θ (LoRA A/B + any extra adapter module), by name.

Lifecycle: ``setup(stage)`` (under a Trainer) or ``build(datamodule)`` (plain Python) builds the tokenizer,
the frozen parts and the adapter, unless the module was loaded from a run directory (``load``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn

from lit_eraser.io import atomic_directory, sha256_file, write_json
from lit_eraser.models.backbone import (
    LoraSettings,
    TinyLlamaSettings,
    apply_lora,
    build_tiny_llama,
    fork_seed,
    load_pretrained_backbone,
    load_pretrained_tokenizer,
    load_tiny_base,
    resize_for_tokens,
    run_decoder,
    save_tiny_base,
)
from lit_eraser.models.persistence import (
    FORMAT,
    FORMAT_VERSION,
    RECOMMENDER_JSON,
    RunDirectoryError,
    TokenizerMismatchError,
    read_recommender_json,
    read_safetensors,
    resolve_class,
    verify_checksums,
    write_safetensors,
)
from lit_eraser.models.pretrain import BasePretrainSettings, cached_pretrained_base
from lit_eraser.models.run_checks import (
    SIZE_LIMITS,
    ConfigSizeError,
    check_init_sizes,
    check_lora_header,
    check_model_config_sizes,
    check_tensor_file,
    check_tensors,
    local_config,
    resolve_local_backbone,
    run_file_checksums,
    training_data_record,
    verify_run_files,
)
from lit_eraser.models.sasrec import default_cache_dir
from lit_eraser.models.tokenizer import (
    SLOT_TOKENS,
    TokenizerError,
    cached_tokenizer,
    check_tokenizer,
    load_tokenizer,
    tokenizer_fingerprint,
)

Scheduler = Literal["cosine", "linear", "constant"]
BackboneDtype = Literal["float32", "bfloat16", "float16"]
_ADDED_EMBEDDINGS = "added_token_embeddings.safetensors"


#: Module-level defaults (frozen dataclasses, so sharing them is safe).
DEFAULT_TINY = TinyLlamaSettings()
DEFAULT_LORA = LoraSettings()
DEFAULT_PRETRAIN = BasePretrainSettings()


def _coerce(value: Any, klass: type) -> Any:
    if value is None:
        return klass()
    if isinstance(value, klass):
        return value
    if isinstance(value, Mapping):
        return klass(**value)
    raise TypeError(f"expected {klass.__name__} or a mapping of its fields, got {type(value).__name__}")


class RecommenderModule(L.LightningModule):
    """Base LightningModule of the LLM recommenders: frozen LLaMA backbone + LoRA (+ extra adapter modules).

    Args:
        backbone: ``tiny`` (a seeded random-init LLaMA, sizes from ``tiny``) or a local path / hub id of a
            pretrained causal LM (loaded with ``trust_remote_code=False`` and eager attention).
        tiny: Sizes of the tiny preset.
        lora: LoRA settings (rank, alpha, dropout, target modules).
        lr: AdamW learning rate of the adapter.
        weight_decay: AdamW weight decay.
        warmup_steps: Linear learning-rate warm-up steps.
        scheduler: Learning-rate schedule after warm-up: ``cosine`` or ``linear`` decay to 0, or ``constant``.
        max_length: Longest encoded sequence (prompt + response); longer prompts lose their oldest items.
        seed: Seed of every random initialisation (base, LoRA, extra modules, SASRec).
        vocab_size: BPE vocabulary size of the in-process tokenizer (tiny preset).
        cache_dir: Where trained tokenizers and SASRec encoders are cached; default ``$LIT_ERASER_CACHE`` or the
            user cache directory.
        backbone_dtype: dtype of a pretrained backbone's frozen weights (the tiny preset is always float32).
        reuse_frozen_from: A run directory whose frozen parts (tokenizer, tiny base, item encoder) are reused
            instead of rebuilt; the adapter is freshly initialised (for retraining baselines).
        pretrain: Short cached pretraining of the tiny base on random catalogue prompts (no user data), a
            stand-in for a pretrained LLM; ``steps: 0`` keeps the random init (see ``lit_eraser.models.pretrain``).
    """

    #: Row kind this recommender encodes (``sequential`` or ``binary``).
    kind: ClassVar[str] = ""
    #: Registry name (``lit_eraser.models.MODELS``).
    registry_name: ClassVar[str] = ""
    #: Dataclass-typed init arguments (rebuilt from dicts when loading ``recommender.json``).
    settings_types: ClassVar[dict[str, type]] = {
        "tiny": TinyLlamaSettings,
        "lora": LoraSettings,
        "pretrain": BasePretrainSettings,
    }

    def __init__(
        self,
        backbone: str = "tiny",
        tiny: TinyLlamaSettings = DEFAULT_TINY,
        lora: LoraSettings = DEFAULT_LORA,
        lr: float = 2e-3,
        weight_decay: float = 0.0,
        warmup_steps: int = 20,
        scheduler: Scheduler = "cosine",
        max_length: int = 512,
        seed: int = 0,
        vocab_size: int = 4096,
        cache_dir: str | None = None,
        backbone_dtype: BackboneDtype = "float32",
        reuse_frozen_from: str | None = None,
        pretrain: BasePretrainSettings = DEFAULT_PRETRAIN,
    ) -> None:
        init_args = {k: v for k, v in locals().items() if k not in ("self", "__class__")}
        super().__init__()
        if lr <= 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        if weight_decay < 0 or warmup_steps < 0:
            raise ValueError("weight_decay and warmup_steps must be >= 0")
        if scheduler not in ("cosine", "linear", "constant"):
            raise ValueError(f"scheduler must be cosine, linear or constant, got {scheduler!r}")
        if max_length < 16:
            raise ValueError(f"max_length must be >= 16, got {max_length}")
        if not backbone:
            raise ValueError("backbone must be 'tiny' or a model path / hub id")
        self.backbone = backbone
        self.tiny = _coerce(tiny, TinyLlamaSettings)
        self.lora = _coerce(lora, LoraSettings)
        self.pretrain = _coerce(pretrain, BasePretrainSettings)
        if self.is_tiny and max_length > self.tiny.max_position_embeddings:
            raise ValueError(
                f"max_length={max_length} exceeds the tiny preset's max_position_embeddings="
                f"{self.tiny.max_position_embeddings}"
            )
        self.lr = lr
        self.weight_decay = weight_decay
        self.warmup_steps = warmup_steps
        #: Where :func:`lit_eraser.models.converge.converge` last left this adapter (None: never run).
        self.converge_report: dict[str, Any] | None = None
        self.scheduler_name = scheduler
        self.max_length = max_length
        self.seed = seed
        self.vocab_size = vocab_size
        self.cache_dir = cache_dir
        self.backbone_dtype = backbone_dtype
        self.reuse_frozen_from = reuse_frozen_from
        self.tokenizer: Any = None
        self.llm: nn.Module | None = None
        self._added_token_rows: dict[str, torch.Tensor] = {}
        #: What the adapter was (last) fitted on: :func:`lit_eraser.models.run_checks.training_data_record` of the
        #: datamodule given to ``build``/``fit``, or the record read from ``recommender.json`` by ``load``.
        self.training_data: dict[str, Any] | None = None
        #: sha256 of ``base_model/`` and ``tokenizer/`` files of the run this adapter belongs to (``save_run``/``load``).
        self._run_files: dict[str, str] | None = None
        #: Absolute local directory of a pretrained backbone (``None``: tiny, or a hub id).
        self._backbone_local_path: str | None = None
        init_args.update(tiny=self.tiny, lora=self.lora, pretrain=self.pretrain)
        #: Every init argument (subclasses add theirs), to rebuild the module from ``recommender.json``.
        self._init_args: dict[str, Any] = init_args

    def _record_init_args(self, **kwargs: Any) -> None:
        """Subclasses register their own init arguments, then call this once (saves hparams too)."""
        self._init_args.update(kwargs)
        self.save_hyperparameters(self.init_config())

    # ----------------------------------------------------------------------------------------- properties
    @property
    def is_tiny(self) -> bool:
        return self.backbone == "tiny"

    @property
    def is_built(self) -> bool:
        return self.llm is not None

    def _require_built(self) -> None:
        if not self.is_built:
            raise RuntimeError(
                f"{type(self).__name__} is not built yet: call build(datamodule), run it under a Trainer "
                "(setup builds it), or load it with RecommenderModule.load(run_dir)"
            )

    @property
    def base_model(self) -> nn.Module:
        self._require_built()
        return self.llm.get_base_model()

    @property
    def decoder(self) -> nn.Module:
        return self.base_model.get_decoder()

    @property
    def pad_id(self) -> int:
        return int(self.tokenizer.pad_token_id)

    @property
    def eos_id(self) -> int:
        return int(self.tokenizer.eos_token_id)

    @property
    def bos_ids(self) -> list[int]:
        bos = self.tokenizer.bos_token_id
        return [] if bos is None else [int(bos)]

    def resolved_cache_dir(self) -> Path:
        return Path(self.cache_dir).expanduser() if self.cache_dir else default_cache_dir()

    # ----------------------------------------------------------------------------------------- building
    def setup(self, stage: str) -> None:
        """Build from ``trainer.datamodule`` unless already built (e.g. loaded from a run directory)."""
        if self.is_built:
            datamodule = getattr(self._trainer, "datamodule", None)
            if stage == "fit" and datamodule is not None and getattr(datamodule, "train_rows", None) is not None:
                self.training_data = training_data_record(datamodule)  # fitted again (e.g. warm retraining)
            return
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is None:
            raise RuntimeError(
                f"{type(self).__name__} builds its tokenizer and item encoder from the datamodule: pass one "
                "(trainer.fit(model, datamodule=...)) or call model.build(datamodule) first"
            )
        trainer = self.trainer
        if trainer.world_size > 1:  # rank 0 fills the caches first; the others then read them
            if trainer.global_rank == 0:
                self.build(datamodule)
            trainer.strategy.barrier("lit_eraser_build")
            if trainer.global_rank != 0:
                self.build(datamodule)
        else:
            self.build(datamodule)

    def build(self, datamodule: Any) -> RecommenderModule:
        """Build tokenizer, frozen parts and adapter from a set-up datamodule (no Trainer needed). Returns self."""
        if self.is_built:
            return self
        if getattr(datamodule, "train_rows", None) is None:
            datamodule.setup("fit")
        if datamodule.kind != self.kind:
            raise ValueError(
                f"{type(self).__name__} encodes {self.kind!r} rows but the datamodule "
                f"{type(datamodule).__name__} yields {datamodule.kind!r} rows"
            )
        reuse = Path(self.reuse_frozen_from) if self.reuse_frozen_from else None
        # Recorded in recommender.json, so an --adapter can later be checked against a data config.
        self.training_data = training_data_record(datamodule)
        self._prepare_data_state(datamodule)
        if not self.is_tiny:
            base, tokenizer = self._pretrained_parts(reuse)
        elif reuse is not None:
            tokenizer, base = load_tokenizer(reuse / "tokenizer"), load_tiny_base(reuse / "base_model")
        else:
            tokenizer = cached_tokenizer(
                self._corpus(datamodule), self.vocab_size, self.template_texts(), self.resolved_cache_dir() / "tokenizers"
            )
            check_tokenizer(tokenizer)
            base = None
        self.tokenizer = tokenizer
        self._setup_encoding()
        self._build_frozen_parts(datamodule, reuse)
        if base is None:  # a fresh tiny base: seeded random init, then the optional cached pretraining
            base = build_tiny_llama(
                self.tiny, len(tokenizer), int(tokenizer.pad_token_id), int(tokenizer.bos_token_id),
                int(tokenizer.eos_token_id), self.seed,
            )
            base = cached_pretrained_base(
                base, self.pretraining_batch, self.pretrain, self.seed, self.resolved_cache_dir() / "tiny_base",
                self._pretrain_key_payload(), log=self._log_info,
            )
        self._install(tokenizer, base)
        self._build_adapter_modules()
        self._finish_build()
        return self

    def _pretrained_parts(self, reuse: Path | None) -> tuple[nn.Module, Any]:
        """A pretrained backbone and its tokenizer with the slot tokens (and a pad token) added."""
        base = load_pretrained_backbone(self.backbone, self.backbone_dtype)
        local = Path(self.backbone).expanduser()
        self._backbone_local_path = str(local.absolute()) if local.is_dir() else None
        old = base.get_input_embeddings().num_embeddings
        if reuse is not None:
            tokenizer = load_tokenizer(reuse / "tokenizer")
            base.resize_token_embeddings(len(tokenizer), mean_resizing=False)
            added = reuse / "adapter" / _ADDED_EMBEDDINGS
            if added.is_file():
                self._added_token_rows = read_safetensors(added)
                self._restore_added_rows(base, self._added_token_rows)
            return base, tokenizer
        tokenizer = load_pretrained_tokenizer(self.backbone)
        with fork_seed(self.seed):
            resize_for_tokens(base, tokenizer, SLOT_TOKENS)
        if base.get_input_embeddings().num_embeddings > old:
            self._added_token_rows = self._collect_added_rows(base, old)
        return base, tokenizer

    def _corpus(self, datamodule: Any) -> list[str]:
        return list(datamodule.text_corpus())

    @staticmethod
    def _log_info(message: str) -> None:
        from lightning.pytorch.utilities import rank_zero_info

        rank_zero_info(message)

    # base pretraining (tiny preset)
    def pretraining_rows(self, rng: Any, n: int) -> list[dict[str, Any]]:  # pragma: no cover - per subclass
        """``n`` rows in this recommender's format built from random catalogue items (no user data)."""
        raise NotImplementedError(f"{type(self).__name__} does not support base pretraining")

    def pretraining_batch(self, rng: Any, n: int) -> dict[str, torch.Tensor]:
        return self.encode(self.pretraining_rows(rng, n))

    def catalogue_fingerprint(self) -> str:
        """sha256 of the item names the pretraining prompts are drawn from."""
        return ""

    def _pretrain_key_payload(self) -> dict[str, Any]:
        return {
            "class": type(self).__name__,
            "tiny": asdict(self.tiny),
            "tokenizer": tokenizer_fingerprint(self.tokenizer),
            "templates": self.template_texts(),
            "catalogue": self.catalogue_fingerprint(),
            "max_length": self.max_length,
        }

    def _install(self, tokenizer: Any, base: nn.Module) -> None:
        if base.get_input_embeddings().num_embeddings < len(tokenizer):
            raise TokenizerMismatchError(
                f"the tokenizer has {len(tokenizer)} tokens but the base model only "
                f"{base.get_input_embeddings().num_embeddings} embeddings"
            )
        self.tokenizer = tokenizer
        self.llm = apply_lora(base, self.lora, self.seed + 1)
        self.llm.config.use_cache = False

    def _collect_added_rows(self, base: nn.Module, old_size: int) -> dict[str, torch.Tensor]:
        rows = {"input": base.get_input_embeddings().weight[old_size:].detach().clone()}
        head = base.get_output_embeddings()
        if head is not None and head.weight is not base.get_input_embeddings().weight:
            rows["output"] = head.weight[old_size:].detach().clone()
        return rows

    def _restore_added_rows(self, base: nn.Module, rows: Mapping[str, torch.Tensor]) -> None:
        with torch.no_grad():
            n = rows["input"].shape[0]
            base.get_input_embeddings().weight[-n:] = rows["input"].to(base.get_input_embeddings().weight)
            if "output" in rows:
                base.get_output_embeddings().weight[-n:] = rows["output"].to(base.get_output_embeddings().weight)

    # hooks for subclasses
    def template_texts(self) -> list[str]:
        """Prompt-template text the tokenizer is also trained on."""
        return []

    def _prepare_data_state(self, datamodule: Any) -> None:
        """Take what the encoder needs from the datamodule (titles, wording)."""

    def _build_frozen_parts(self, datamodule: Any, reuse: Path | None) -> None:
        """Build frozen non-LLM parts (LLaRA: the SASRec item encoder)."""

    def _build_adapter_modules(self) -> None:
        """Build extra trainable adapter modules (LLaRA: the projector), seeded."""

    def _setup_encoding(self) -> None:
        """Token-id state the encoder needs (slot ids, title tokens), once the tokenizer is set."""

    def _require_tokenizer(self) -> None:
        if self.tokenizer is None:
            self._require_built()

    def _finish_build(self) -> None:
        """Freeze everything that is not θ once tokenizer and model exist."""
        for name, parameter in self.named_parameters():
            if parameter.requires_grad and name not in self._adapter_names():
                parameter.requires_grad_(False)

    # ----------------------------------------------------------------------------------------- θ
    def _adapter_names(self) -> set[str]:
        names = set()
        for name, _ in self.named_parameters():
            if ".lora_" in name or name.startswith(tuple(f"{m}." for m in self.extra_adapter_modules())):
                names.add(name)
        return names

    def extra_adapter_modules(self) -> tuple[str, ...]:
        """Attribute names of trainable adapter modules besides LoRA (LLaRA: ``("projector",)``)."""
        return ()

    def adapter_parameters(self) -> dict[str, nn.Parameter]:
        """θ: every trainable adapter tensor (LoRA A/B, extra adapter modules), by name, in a fixed order."""
        self._require_built()
        names = self._adapter_names()
        return {name: p for name, p in self.named_parameters() if name in names}

    def adapter_state(self) -> dict[str, torch.Tensor]:
        """A detached copy of θ (e.g. θ̂ before an unlearning update)."""
        return {name: p.detach().clone() for name, p in self.adapter_parameters().items()}

    @torch.no_grad()
    def load_adapter_state(self, state: Mapping[str, torch.Tensor]) -> None:
        """Overwrite θ with ``state`` (same names and shapes as :meth:`adapter_parameters`)."""
        params = self.adapter_parameters()
        if set(state) != set(params):
            missing, extra = sorted(set(params) - set(state)), sorted(set(state) - set(params))
            raise KeyError(f"adapter state mismatch: missing {missing[:3]}, unexpected {extra[:3]}")
        for name, parameter in params.items():
            if tuple(state[name].shape) != tuple(parameter.shape):
                raise ValueError(f"{name}: shape {tuple(state[name].shape)} != {tuple(parameter.shape)}")
            parameter.copy_(state[name].to(parameter))

    # ----------------------------------------------------------------------------------------- encoding
    def encode(self, rows: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:  # pragma: no cover
        raise NotImplementedError

    def _collate(
        self,
        prompts: Sequence[Sequence[int]],
        responses: Sequence[Sequence[int]],
        slots: Sequence[Sequence[int]] | None = None,
    ) -> dict[str, torch.Tensor]:
        """Right-padded ``bos + prompt + response`` batch with labels on the response tokens only."""
        bos = self.bos_ids
        batch = len(prompts)
        if batch == 0:
            raise ValueError("cannot encode an empty batch")
        lengths = [len(bos) + len(p) + len(r) for p, r in zip(prompts, responses)]
        width = max(lengths)
        longest_response = max(len(r) for r in responses)
        input_ids = torch.full((batch, width), self.pad_id, dtype=torch.long)
        attention_mask = torch.zeros((batch, width), dtype=torch.long)
        labels = torch.full((batch, width), -100, dtype=torch.long)
        response_index = torch.zeros((batch, longest_response), dtype=torch.long)
        slot_ids = torch.full((batch, width), -1, dtype=torch.long) if slots is not None else None
        for i, (prompt, response) in enumerate(zip(prompts, responses)):
            start = len(bos) + len(prompt)
            if start < 2 or not response:
                raise ValueError("a prompt needs at least two tokens (bos included) and a response at least one")
            sequence = bos + list(prompt) + list(response)
            input_ids[i, : len(sequence)] = torch.as_tensor(sequence)
            attention_mask[i, : len(sequence)] = 1
            labels[i, start : len(sequence)] = torch.as_tensor(response)
            response_index[i, : len(response)] = torch.arange(start - 1, len(sequence) - 1)
            if slot_ids is not None:
                slot_ids[i, len(bos) : start] = torch.as_tensor(slots[i], dtype=torch.long)
        out = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels, "response_index": response_index}
        if slot_ids is not None:
            out["slot_item_ids"] = slot_ids
        return out

    def _collate_prompts(
        self, prompts: Sequence[Sequence[int]], slots: Sequence[Sequence[int]] | None = None
    ) -> dict[str, torch.Tensor]:
        """Right-padded ``bos + prompt`` batch (no response) and each prompt's length."""
        bos = self.bos_ids
        width = max(len(bos) + len(p) for p in prompts)
        input_ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(prompts), width), dtype=torch.long)
        slot_ids = torch.full((len(prompts), width), -1, dtype=torch.long) if slots is not None else None
        lengths = torch.zeros(len(prompts), dtype=torch.long)
        for i, prompt in enumerate(prompts):
            sequence = bos + list(prompt)
            input_ids[i, : len(sequence)] = torch.as_tensor(sequence)
            attention_mask[i, : len(sequence)] = 1
            lengths[i] = len(sequence)
            if slot_ids is not None:
                slot_ids[i, len(bos) : len(sequence)] = torch.as_tensor(slots[i], dtype=torch.long)
        out = {"input_ids": input_ids, "attention_mask": attention_mask, "lengths": lengths}
        if slot_ids is not None:
            out["slot_item_ids"] = slot_ids
        return out

    def _text_ids(self, texts: Sequence[str]) -> list[list[int]]:
        if not texts:
            return []
        return [list(ids) for ids in self.tokenizer(list(texts), add_special_tokens=False)["input_ids"]]

    # ----------------------------------------------------------------------------------------- model
    def input_embeddings(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """``[B, T, H]`` input embeddings (LLaRA overrides this to fill the slot positions)."""
        return self.base_model.get_input_embeddings()(batch["input_ids"])

    def lm_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """The LM head in float32 (autocast off), whatever the backbone's dtype."""
        head = self.base_model.get_output_embeddings()
        with torch.autocast(device_type=hidden.device.type, enabled=False):
            weight = head.weight if head.weight.dtype == torch.float32 else head.weight.float()
            bias = None if getattr(head, "bias", None) is None else head.bias.float()
            return F.linear(hidden.float(), weight, bias)

    def hidden_states(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        hidden, _ = run_decoder(self.decoder, inputs_embeds=self.input_embeddings(batch), attention_mask=batch["attention_mask"])
        return hidden

    @staticmethod
    def _response_index_from_labels(labels: torch.Tensor) -> torch.Tensor:
        """Positions predicting each response token (data-dependent shape; ``encode`` precomputes this)."""
        mask = labels[:, 1:] != -100
        count = int(mask.sum(1).max().clamp(min=1))
        order = torch.argsort((~mask).to(torch.int8), dim=1, stable=True)
        return order[:, :count]

    def response_logits(self, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(logits [B, L, V] float32, targets [B, L])`` at the response tokens (targets -100 on padding)."""
        hidden = self.hidden_states(batch)
        return self._gather_response(hidden, batch)

    def _gather_response(self, hidden: torch.Tensor, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        labels = batch["labels"]
        index = batch.get("response_index")
        if index is None:
            index = self._response_index_from_labels(labels)
        shifted = labels[:, 1:]
        targets = shifted.gather(1, index)
        selected = hidden[:, :-1].gather(1, index.unsqueeze(-1).expand(-1, -1, hidden.shape[-1]))
        return self.lm_logits(selected), targets

    @staticmethod
    def per_item_nll(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean NLL over each item's non-ignored targets, float32: ``[B, L, V], [B, L] -> [B]``."""
        nll = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=-100, reduction="none")
        nll = nll.view(targets.shape)
        mask = (targets != -100).to(nll.dtype)
        return (nll * mask).sum(1) / mask.sum(1).clamp(min=1.0)

    def forward(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Per-item loss ℓ(z, θ) ``[B]``: mean NLL of each item's response tokens (eos included), float32."""
        logits, targets = self.response_logits(batch)
        return self.per_item_nll(logits, targets)

    def gauss_newton_outputs(self, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, Any]:
        """``(response logits, loss_fn)`` for Gauss-Newton curvature: ``loss_fn(logits)`` is :meth:`forward`."""
        logits, targets = self.response_logits(batch)
        return logits, lambda outputs: self.per_item_nll(outputs, targets)

    # ----------------------------------------------------------------------------------------- Lightning
    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Lists of row dicts (what the datamodules yield) become tensors; eval batches keep their rows."""
        if isinstance(batch, list) and (not batch or isinstance(batch[0], Mapping)):
            encoded = self.encode(batch)
            trainer = self._trainer
            if trainer is None or not trainer.training:
                encoded["rows"] = batch
            return encoded
        return batch

    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> torch.Tensor:
        loss = self(batch).mean()
        self.log("train/loss", loss, prog_bar=True, batch_size=batch["input_ids"].shape[0])
        return loss

    def configure_optimizers(self) -> Any:
        params = list(self.adapter_parameters().values())
        optimizer = torch.optim.AdamW(params, lr=self.lr, weight_decay=self.weight_decay)
        total = None
        if self._trainer is not None:
            estimate = self.trainer.estimated_stepping_batches
            total = None if estimate is None or math.isinf(estimate) else int(estimate)
        warmup, kind = self.warmup_steps, self.scheduler_name

        def factor(step: int) -> float:
            if warmup and step < warmup:
                return (step + 1) / warmup
            if kind == "constant" or not total or total <= warmup:
                return 1.0
            progress = min(1.0, (step - warmup) / max(1, total - warmup))
            return 0.5 * (1.0 + math.cos(math.pi * progress)) if kind == "cosine" else 1.0 - progress

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # ----------------------------------------------------------------------------------------- persistence
    def init_config(self) -> dict[str, Any]:
        """The init arguments, JSON-ready (dataclasses as dicts), to rebuild this module."""
        return {k: asdict(v) if is_dataclass(v) else v for k, v in self._init_args.items()}

    @classmethod
    def from_init_config(cls, config: Mapping[str, Any]) -> RecommenderModule:
        kwargs = {}
        for name, value in config.items():
            klass = cls.settings_types.get(name)
            kwargs[name] = klass(**value) if klass is not None and isinstance(value, Mapping) else value
        return cls(**kwargs)

    def extra_state(self) -> dict[str, Any]:
        """JSON-ready state the encoder needs beyond the init arguments (LLaRA: titles)."""
        return {}

    def load_extra_state(self, state: Mapping[str, Any]) -> None:
        """Inverse of :meth:`extra_state`."""

    def save_adapter_extras(self, directory: Path) -> list[str]:
        """Write extra weight files into the adapter directory; returns their names."""
        return []

    def load_adapter_extras(self, directory: Path) -> None:
        """Read what :meth:`save_adapter_extras` wrote."""

    def peft_base_model_path(self) -> str:
        """What ``adapter_config.json`` names as ``base_model_name_or_path`` (read by PEFT, never by lit-eraser).

        * pretrained backbone: its absolute local directory (or the hub id it was loaded by), so
          ``peft.AutoPeftModelForCausalLM.from_pretrained(run/"adapter")`` rebuilds base + LoRA. The slot tokens and
          pad token this project adds (``added_token_embeddings.safetensors``), the projector and the item encoder
          live outside PEFT: PEFT's model covers the backbone's own vocabulary only.
        * tiny preset: ``"../base_model"``, the run's own copy of the random-init base, relative to the adapter
          directory. PEFT resolves it against the working directory, so ``AutoPeftModelForCausalLM`` works from
          inside ``run/adapter``; from elsewhere pass the base yourself:
          ``PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(run/"base_model"), run/"adapter")``.
        """
        if self.is_tiny:
            return "../base_model"
        return self._backbone_local_path or self.backbone

    def save_adapter(self, directory: str | Path) -> Path:
        """Write the adapter directory (peft files, extra modules, ``recommender.json`` with checksums).

        ``recommender.json`` also records what the adapter was trained on (``training_data``, for
        :func:`lit_eraser.models.run_checks.check_adapter_matches_data`), the sha256 of the run's ``base_model/``
        and ``tokenizer/`` files (``run_files``; set by :meth:`save_run`, or kept from the run this module was
        loaded from) and where a pretrained backbone lives locally (``backbone``).
        """
        self._require_built()
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.llm.save_pretrained(str(directory), safe_serialization=True, save_embedding_layers=False)
        (directory / "README.md").unlink(missing_ok=True)  # peft's model-card stub: not part of the contract
        config_path = directory / "adapter_config.json"
        peft_config = json.loads(config_path.read_text(encoding="utf-8"))
        peft_config["base_model_name_or_path"] = self.peft_base_model_path()
        write_json(config_path, peft_config)
        names = ["adapter_config.json", "adapter_model.safetensors", *self.save_adapter_extras(directory)]
        if self._added_token_rows:
            write_safetensors(self._added_token_rows, directory / _ADDED_EMBEDDINGS)
            names.append(_ADDED_EMBEDDINGS)
        from lit_eraser import __version__

        meta = {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "lit_eraser_version": __version__,
            "class": type(self).__name__,
            "module": type(self).__module__,
            "registry_name": self.registry_name,
            "kind": self.kind,
            "init": self.init_config(),
            "tokenizer": {"sha256": tokenizer_fingerprint(self.tokenizer), "size": len(self.tokenizer)},
            "adapter_parameters": {n: list(p.shape) for n, p in self.adapter_parameters().items()},
            "state": self.extra_state(),
            "files": {name: sha256_file(directory / name) for name in names},
        }
        if self.training_data is not None:
            meta["training_data"] = self.training_data
        if self._run_files is not None:
            meta["run_files"] = self._run_files
        if not self.is_tiny:
            meta["backbone"] = {"name_or_path": self.backbone, "local_path": self._backbone_local_path}
        write_json(directory / RECOMMENDER_JSON, meta)
        return directory

    def save_run(self, run_dir: str | Path, overwrite: bool = False) -> Path:
        """Write ``tokenizer/``, ``base_model/`` (tiny preset) and ``adapter/`` into ``run_dir``.

        Each sub-directory is written atomically (a temporary sibling renamed into place); an existing one is
        refused unless ``overwrite``. ``run_dir`` itself may exist (``train.py`` writes it atomically as a whole).
        ``tokenizer/`` and ``base_model/`` are written first so that their sha256 go into ``recommender.json``.
        """
        self._require_built()
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        with atomic_directory(run_dir / "tokenizer", overwrite=overwrite) as tmp:
            self.tokenizer.save_pretrained(str(tmp))
        if self.is_tiny:
            with atomic_directory(run_dir / "base_model", overwrite=overwrite) as tmp:
                save_tiny_base(self.llm, tmp)
        self._run_files = run_file_checksums(run_dir)
        with atomic_directory(run_dir / "adapter", overwrite=overwrite) as tmp:
            self.save_adapter(tmp)
        return run_dir

    @classmethod
    def load(cls, run_dir: str | Path, adapter_dir: str | Path | None = None) -> RecommenderModule:
        """Rebuild a saved recommender in eval mode (the class comes from ``recommender.json``).

        A run directory is validated before it is used: sizes bounded before anything is allocated, every file
        under the sha256 recorded at save time (``base_model/`` and ``tokenizer/`` included), every stored
        tensor floating point, finite and of the shape the config implies, and nothing read from the network (a
        pretrained backbone must be a local directory or already in the local Hugging Face cache). A run saved
        before ``base_model/`` was checksummed is read only after its base passes those content checks.

        Raises:
            RunDirectoryError: a missing file or directory, an inconsistent or oversized config, a backbone that
                is not on this machine (:class:`~lit_eraser.models.run_checks.BackboneNotLocalError`).
            CorruptFileError: a truncated/unreadable weight file or one whose checksum changed.
            AdapterContentError: a tensor with a wrong dtype or shape or with NaN/inf values.
            TokenizerMismatchError: ``tokenizer/`` is not the tokenizer the adapter was trained with.
        """
        run_dir = Path(run_dir)
        if not run_dir.is_dir():
            raise RunDirectoryError(f"run directory {run_dir} does not exist")
        adapter_dir = Path(adapter_dir) if adapter_dir is not None else run_dir / "adapter"
        meta = read_recommender_json(adapter_dir)
        klass = resolve_class(meta)
        if not issubclass(klass, cls):
            raise RunDirectoryError(f"{adapter_dir} holds a {klass.__name__}, not a {cls.__name__}")
        where = str(adapter_dir / RECOMMENDER_JSON)
        verify_checksums(adapter_dir, meta)
        check_init_sizes(meta.get("init"), where)
        verify_run_files(run_dir, adapter_dir, meta, ("base_model",))  # older runs: the content checks below
        try:
            module = klass.from_init_config(meta["init"])
            module.load_extra_state(meta.get("state") or {})
        except (TypeError, KeyError, ValueError) as error:
            raise RunDirectoryError(f"{where} holds settings this {klass.__name__} cannot be built from: {error}") from None
        training_data = meta.get("training_data")
        module.training_data = dict(training_data) if isinstance(training_data, Mapping) else None
        run_files = meta.get("run_files")
        module._run_files = dict(run_files) if isinstance(run_files, Mapping) else None

        try:
            tokenizer = load_tokenizer(run_dir / "tokenizer")
        except TokenizerError as error:
            raise RunDirectoryError(str(error)) from None
        expected = meta.get("tokenizer")
        if not isinstance(expected, Mapping) or not {"sha256", "size"} <= set(expected):
            raise RunDirectoryError(f"{where} records no tokenizer fingerprint")
        if tokenizer_fingerprint(tokenizer) != expected["sha256"] or len(tokenizer) != int(expected["size"]):
            raise TokenizerMismatchError(
                f"{run_dir / 'tokenizer'} does not match the adapter in {adapter_dir}: the adapter was trained with a "
                f"tokenizer of {expected['size']} tokens (sha256 {expected['sha256'][:12]}...), this one has "
                f"{len(tokenizer)} tokens (sha256 {tokenizer_fingerprint(tokenizer)[:12]}...)"
            )
        verify_run_files(run_dir, adapter_dir, meta, ("tokenizer",))  # after the fingerprint: its message is clearer
        if len(tokenizer) > SIZE_LIMITS["vocab_size"]:
            raise ConfigSizeError(f"{run_dir / 'tokenizer'} has {len(tokenizer):,} tokens (limit {SIZE_LIMITS['vocab_size']:,})")
        if module.is_tiny:
            base = load_tiny_base(run_dir / "base_model")  # bounded config, shapes, dtypes, finite values
            if base.get_input_embeddings().num_embeddings != len(tokenizer):
                raise TokenizerMismatchError(
                    f"{run_dir / 'base_model'} has {base.get_input_embeddings().num_embeddings} embeddings but the "
                    f"tokenizer {len(tokenizer)} tokens"
                )
        else:
            base = module._load_local_backbone(meta, where)
            old = base.get_input_embeddings().num_embeddings
            base.resize_token_embeddings(len(tokenizer), mean_resizing=False)
            if (adapter_dir / _ADDED_EMBEDDINGS).is_file():
                rows = module._checked_added_rows(adapter_dir / _ADDED_EMBEDDINGS, base, len(tokenizer) - old)
                module._restore_added_rows(base, rows)
                module._added_token_rows = rows
        module.tokenizer = tokenizer
        module._setup_encoding()
        module._check_frozen_files(adapter_dir)
        module._load_frozen_extras(adapter_dir)
        check_lora_header(adapter_dir / "adapter_model.safetensors", module.lora.r)  # before LoRA is allocated
        module._install(tokenizer, base)
        module._check_adapter_budget(where)
        module._build_adapter_modules()
        module._check_adapter_files(adapter_dir)
        module._load_lora(adapter_dir)
        module.load_adapter_extras(adapter_dir)
        module._finish_build()
        module.eval()
        return module

    # validation steps of ``load`` (each before what it guards is allocated or used)
    def _load_local_backbone(self, meta: Mapping[str, Any], where: str) -> nn.Module:
        """The pretrained backbone from local files only (never the network), its config bounded first."""
        recorded = meta.get("backbone") if isinstance(meta.get("backbone"), Mapping) else {}
        local = recorded.get("local_path") if isinstance(recorded.get("local_path"), str) else None
        path = resolve_local_backbone(self.backbone, local, where)
        check_model_config_sizes(local_config(path), f"{path}/config.json")
        try:
            base = load_pretrained_backbone(path, self.backbone_dtype, local_files_only=True)
        except Exception as error:  # noqa: BLE001 - a damaged or foreign checkpoint: name it, one line
            raise RunDirectoryError(f"the backbone {path} named in {where} cannot be loaded: {type(error).__name__}: {error}") from None
        self._backbone_local_path = str(Path(path).absolute()) if Path(path).is_dir() else None
        return base

    def _checked_added_rows(self, path: Path, base: nn.Module, n_added: int) -> dict[str, torch.Tensor]:
        """The added-token embedding rows: floating, finite, one row per added token of the embedding width."""
        if n_added < 1:
            raise TokenizerMismatchError(f"{path} does not fit the tokenizer: the tokenizer adds no tokens to the backbone")
        rows = check_tensor_file(path)
        expected = {"input": (n_added, base.get_input_embeddings().embedding_dim)}
        head = base.get_output_embeddings()
        if "output" in rows and head is not None:
            expected["output"] = (n_added, head.weight.shape[1])
        try:
            check_tensors(rows, path, expected)
        except RunDirectoryError as error:
            raise TokenizerMismatchError(f"{path} does not fit the tokenizer: {error}") from None
        return rows

    def _check_frozen_files(self, adapter_dir: Path) -> None:
        """The frozen item encoder (LLaRA), if any: bounded, floating, finite, shaped as its metadata implies."""
        from lit_eraser.models.run_checks import ITEM_ENCODER_FILE, check_item_encoder_file

        path = adapter_dir / ITEM_ENCODER_FILE
        if path.is_file():
            titles = getattr(self, "item_titles", None)
            check_item_encoder_file(path, len(titles) if titles else None)

    def _check_adapter_budget(self, where: str) -> None:
        """Bound extra adapter modules built from ``init`` (LLaRA's projector) before they are allocated."""
        from lit_eraser.models.run_checks import check_projector_budget

        encoder = getattr(self, "item_encoder", None)
        if "projector" in self.extra_adapter_modules() and encoder is not None:
            llm_dim = self.base_model.get_input_embeddings().embedding_dim
            check_projector_budget(encoder.settings.hidden_size, llm_dim, getattr(self, "projector_hidden", None), where)

    def _check_adapter_files(self, adapter_dir: Path) -> None:
        """θ's files before they are loaded: exactly the LoRA tensors of this model (peft's saved names) and,
        per extra adapter module ``name``, ``name.safetensors``; floating, finite, of the shapes the config implies."""
        from peft import get_peft_model_state_dict

        lora = get_peft_model_state_dict(self.llm, save_embedding_layers=False)
        check_tensor_file(adapter_dir / "adapter_model.safetensors", {k: tuple(v.shape) for k, v in lora.items()})
        for name in self.extra_adapter_modules():
            path = adapter_dir / f"{name}.safetensors"
            if path.is_file():
                expected = {k: tuple(v.shape) for k, v in getattr(self, name).state_dict().items()}
                check_tensor_file(path, expected)

    def _load_frozen_extras(self, adapter_dir: Path) -> None:
        """Load frozen non-LLM parts from the adapter directory before the adapter is built."""

    def _load_lora(self, adapter_dir: Path) -> None:
        from peft import set_peft_model_state_dict

        config_path = adapter_dir / "adapter_config.json"
        try:
            saved = json.loads(config_path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as error:
            raise RunDirectoryError(f"{config_path} cannot be read: {error}") from None
        if int(saved.get("r", -1)) != self.lora.r or sorted(saved.get("target_modules") or []) != sorted(self.lora.target_modules):
            raise RunDirectoryError(f"{config_path} does not match the LoRA settings in {adapter_dir / RECOMMENDER_JSON}")
        state = read_safetensors(adapter_dir / "adapter_model.safetensors")
        result = set_peft_model_state_dict(self.llm, state)
        expected = {n for n in self.adapter_parameters() if ".lora_" in n}
        missing = [k for k in getattr(result, "missing_keys", []) if ".lora_" in k]
        unexpected = list(getattr(result, "unexpected_keys", []))
        if missing or unexpected or len(state) != len(expected):
            raise RunDirectoryError(
                f"{adapter_dir / 'adapter_model.safetensors'} does not fit the model: "
                f"{len(state)} tensors for {len(expected)} LoRA parameters; missing {missing[:3]}, unexpected {unexpected[:3]}"
            )
