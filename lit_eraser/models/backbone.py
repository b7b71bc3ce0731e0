"""LLaMA backbones: a seeded random-init ``tiny`` preset or pretrained weights, frozen, with LoRA from peft.

The tiny preset exists because the machines this project is tested on have no GPU and no model hub; it
is a real ``transformers.LlamaForCausalLM`` (so every code path is the one a 7B model takes), built with
eager attention: the fused CPU SDPA kernel has no double backward, and the influence engine needs
Hessian-vector products through the attention.
"""

from __future__ import annotations

import inspect
import json
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

#: Every linear projection of a LLaMA block; the LoRA default (never ``lm_head`` or the embeddings).
LLAMA_LINEAR_MODULES: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class TinyLlamaSettings:
    """Sizes of the random-init ``tiny`` LLaMA preset (ignored for a pretrained backbone).

    Args:
        hidden_size: Width of the residual stream (64-256 is the intended range).
        num_layers: Decoder blocks.
        num_heads: Attention heads (must divide ``hidden_size``).
        num_kv_heads: Key/value heads for grouped-query attention; ``None`` means ``num_heads``.
        intermediate_size: Width of the SwiGLU MLP; ``None`` means ``2 * hidden_size``.
        max_position_embeddings: Longest sequence the rotary embedding is configured for.
        rope_theta: Rotary embedding base.
        init_std: Standard deviation of the random weight init; ``None`` means ``hidden_size ** -0.5``. (HF's
            0.02 is tuned for widths of ~4096; on a 128-wide model it makes the frozen LM head so small that
            the logits can hardly move from uniform and a LoRA-only adapter barely learns.)
    """

    hidden_size: int = 128
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int | None = None
    intermediate_size: int | None = None
    max_position_embeddings: int = 1024
    rope_theta: float = 10000.0
    init_std: float | None = None

    def __post_init__(self) -> None:
        if self.hidden_size < 8 or self.num_layers < 1 or self.num_heads < 1:
            raise ValueError(f"tiny LLaMA sizes must be positive and hidden_size >= 8: {self}")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size={self.hidden_size} is not divisible by num_heads={self.num_heads}")
        kv = self.num_kv_heads or self.num_heads
        if self.num_heads % kv:
            raise ValueError(f"num_heads={self.num_heads} is not divisible by num_kv_heads={kv}")
        if (self.hidden_size // self.num_heads) % 2:
            raise ValueError("the head dimension (hidden_size / num_heads) must be even for rotary embeddings")
        if self.intermediate_size is not None and self.intermediate_size < 1:
            raise ValueError(f"intermediate_size must be >= 1, got {self.intermediate_size}")
        if self.init_std is not None and self.init_std <= 0:
            raise ValueError(f"init_std must be > 0, got {self.init_std}")
        if self.max_position_embeddings < 16:
            raise ValueError(f"max_position_embeddings must be >= 16, got {self.max_position_embeddings}")


@dataclass(frozen=True)
class LoraSettings:
    """LoRA adapter settings (peft ``LoraConfig``).

    Args:
        r: Rank of the A/B matrices.
        alpha: Scaling numerator (the update is scaled by ``alpha / r``).
        dropout: Dropout on the LoRA input path (inactive in eval mode, where influence is computed).
        target_modules: Names of the linear modules that get adapters; default every LLaMA projection.
    """

    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: list(LLAMA_LINEAR_MODULES))

    def __post_init__(self) -> None:
        if self.r < 1:
            raise ValueError(f"LoRA rank r must be >= 1, got {self.r}")
        if self.alpha <= 0:
            raise ValueError(f"LoRA alpha must be > 0, got {self.alpha}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"LoRA dropout must be in [0, 1), got {self.dropout}")
        if not self.target_modules:
            raise ValueError("LoRA target_modules must name at least one module")
        bad = [m for m in self.target_modules if m in ("lm_head", "embed_tokens")]
        if bad:
            raise ValueError(f"LoRA must not target {bad}: the adapter covers the decoder's linear projections only")


def settings_to_dict(settings: Any) -> dict[str, Any]:
    return asdict(settings)


def fork_seed(seed: int):
    """Context manager: run a block under ``torch.manual_seed(seed)`` and restore the global RNG after."""
    devices: list[int] = []
    ctx = torch.random.fork_rng(devices=devices)

    class _Seeded:
        def __enter__(self):
            ctx.__enter__()
            torch.manual_seed(seed)
            return self

        def __exit__(self, *exc):
            return ctx.__exit__(*exc)

    return _Seeded()


def _rope_kwargs(config_class: type, theta: float) -> dict[str, Any]:
    if "rope_parameters" in inspect.signature(config_class.__init__).parameters:
        return {"rope_parameters": {"rope_type": "default", "rope_theta": theta}}
    return {"rope_theta": theta}  # transformers < 5


def build_tiny_llama(settings: TinyLlamaSettings, vocab_size: int, pad_id: int, bos_id: int, eos_id: int, seed: int):
    """A randomly initialised ``LlamaForCausalLM`` (eager attention), identical for identical arguments."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=settings.hidden_size,
        intermediate_size=settings.intermediate_size or 2 * settings.hidden_size,
        num_hidden_layers=settings.num_layers,
        num_attention_heads=settings.num_heads,
        num_key_value_heads=settings.num_kv_heads or settings.num_heads,
        max_position_embeddings=settings.max_position_embeddings,
        **_rope_kwargs(LlamaConfig, settings.rope_theta),
        pad_token_id=pad_id,
        bos_token_id=bos_id,
        eos_token_id=eos_id,
        tie_word_embeddings=False,
        attention_dropout=0.0,
        initializer_range=settings.init_std or settings.hidden_size**-0.5,
    )
    config._attn_implementation = "eager"
    with fork_seed(seed):
        model = LlamaForCausalLM(config)
    model.config._attn_implementation = "eager"
    return model


def load_pretrained_backbone(name_or_path: str, dtype: str = "float32", local_files_only: bool = False):
    """Load a causal LM by local path or hub id (``trust_remote_code=False``, eager attention).

    ``local_files_only``: never reach the network (how a run directory is loaded); training may download.
    """
    from transformers import AutoModelForCausalLM

    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
    model = AutoModelForCausalLM.from_pretrained(
        name_or_path,
        dtype=torch_dtype,
        attn_implementation="eager",
        trust_remote_code=False,
        local_files_only=local_files_only,
    )
    return model


def load_pretrained_tokenizer(name_or_path: str, local_files_only: bool = False):
    """The pretrained model's own tokenizer (``trust_remote_code=False``)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=False, local_files_only=local_files_only)


def freeze(module: nn.Module) -> nn.Module:
    for parameter in module.parameters():
        parameter.requires_grad_(False)
    return module


def apply_lora(model: nn.Module, lora: LoraSettings, seed: int):
    """Freeze ``model`` and wrap it with peft LoRA adapters (seeded init; A/B kept in float32)."""
    from peft import LoraConfig, get_peft_model

    freeze(model)
    names = {name.rsplit(".", 1)[-1] for name, module in model.named_modules() if isinstance(module, nn.Linear)}
    missing = [m for m in lora.target_modules if m not in names]
    if missing:
        raise ValueError(f"LoRA target_modules {missing} are not linear modules of this backbone (it has {sorted(names)})")
    config = LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=list(lora.target_modules),
        bias="none",
        task_type="CAUSAL_LM",
    )
    with fork_seed(seed), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        peft_model = get_peft_model(model, config)
    return peft_model


def base_state_dict(peft_model: nn.Module) -> dict[str, torch.Tensor]:
    """The frozen base weights of a peft-wrapped model under the plain (un-wrapped) parameter names."""
    base = peft_model.get_base_model()
    state = {}
    for name, tensor in base.state_dict().items():
        if "lora_" in name:
            continue
        state[name.replace(".base_layer.", ".")] = tensor.detach().contiguous()
    return state


def save_tiny_base(model: nn.Module, directory: str | Path) -> None:
    """Write ``config.json`` + ``model.safetensors`` of the tiny base (plain or peft-wrapped; LoRA excluded),
    so a reload never depends on an RNG or on a pretraining run."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if hasattr(model, "get_base_model"):
        base, state = model.get_base_model(), base_state_dict(model)
    else:
        base, state = model, {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    base.config.to_json_file(str(directory / "config.json"))
    save_file(state, str(directory / "model.safetensors"), metadata={"format": "pt"})


def load_tiny_base(directory: str | Path):
    """Rebuild the tiny base saved by :func:`save_tiny_base` (strict: every weight must be present).

    ``config.json`` is input, not trusted: its sizes are bounded before anything is allocated, every tensor of
    ``model.safetensors`` must have a floating-point dtype and the shape the config implies (both read from the
    file's header first), and every value must be finite. So a damaged, crafted or NaN base is refused here
    with an error naming the setting or tensor, instead of an allocation failure or a crash much later.
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    from lit_eraser.models.persistence import CorruptFileError, RunDirectoryError
    from lit_eraser.models.run_checks import check_model_config_sizes, check_tensor_file, expected_shapes

    directory = Path(directory)
    config_path = directory / "config.json"
    if not config_path.is_file():
        raise RunDirectoryError(f"{config_path} is missing: the tiny base model cannot be rebuilt")
    try:
        raw = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CorruptFileError(f"{config_path} is not valid JSON: {error}") from None
    check_model_config_sizes(raw, str(config_path))
    try:
        config = LlamaConfig.from_dict(raw)
    except Exception as error:  # noqa: BLE001 - any field transformers rejects (its strict dataclass errors included)
        raise RunDirectoryError(f"{config_path} is not a valid LLaMA config: {error}") from None
    config._attn_implementation = "eager"
    try:
        shapes = expected_shapes(lambda: LlamaForCausalLM(config))
    except Exception as error:  # noqa: BLE001 - built on the meta device: a failure is the config's
        raise RunDirectoryError(f"{config_path} does not describe a buildable LLaMA model: {error}") from None
    state = check_tensor_file(directory / "model.safetensors", shapes)
    with fork_seed(0):  # the random init is overwritten below; keep the caller's RNG untouched
        model = LlamaForCausalLM(config)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise RunDirectoryError(f"{directory / 'model.safetensors'} does not match {config_path}: {error}") from None
    model.config._attn_implementation = "eager"
    return model


# ------------------------------------------------------------------------------------------ decoder calls
_CACHE_KWARG: dict[type, str] = {}


def cache_kwarg(decoder: nn.Module) -> str:
    """``cache`` (transformers >= 5.x) or ``past_key_values`` (older): the decoder's KV-cache argument name."""
    kind = type(decoder)
    if kind not in _CACHE_KWARG:
        params = inspect.signature(decoder.forward).parameters
        _CACHE_KWARG[kind] = "cache" if "cache" in params else "past_key_values"
    return _CACHE_KWARG[kind]


def output_cache(output: Any) -> Any:
    cache = getattr(output, "cache", None)
    if cache is None:
        cache = getattr(output, "past_key_values", None)
    return cache


def run_decoder(
    decoder: nn.Module,
    *,
    inputs_embeds: torch.Tensor | None = None,
    input_ids: torch.Tensor | None = None,
    attention_mask: torch.Tensor | None = None,
    position_ids: torch.Tensor | None = None,
    cache: Any = None,
    use_cache: bool = False,
) -> tuple[torch.Tensor, Any]:
    """Run the decoder stack (no LM head); returns (last hidden states, KV cache or ``None``)."""
    kwargs: dict[str, Any] = {"attention_mask": attention_mask, "use_cache": use_cache}
    if inputs_embeds is not None:
        kwargs["inputs_embeds"] = inputs_embeds
    else:
        kwargs["input_ids"] = input_ids
    if position_ids is not None:
        kwargs["position_ids"] = position_ids
    if cache is not None:
        kwargs[cache_kwarg(decoder)] = cache
    output = decoder(**kwargs)
    return output.last_hidden_state, (output_cache(output) if use_cache else None)


def resize_for_tokens(model: nn.Module, tokenizer: Any, new_tokens: Sequence[str]) -> None:
    """Add ``new_tokens`` as special tokens and resize the embeddings (pretrained backbones)."""
    missing = [t for t in new_tokens if t not in tokenizer.get_vocab()]
    added = 0
    if missing:
        if "replace_extra_special_tokens" in inspect.signature(tokenizer.add_special_tokens).parameters:
            added = tokenizer.add_special_tokens({"additional_special_tokens": missing}, replace_extra_special_tokens=False)
        else:
            added = tokenizer.add_special_tokens({"additional_special_tokens": missing}, replace_additional_special_tokens=False)
    if tokenizer.pad_token is None:
        tokenizer.add_special_tokens({"pad_token": "<pad>"})
        added += 1
    if added or model.get_input_embeddings().num_embeddings < len(tokenizer):
        model.resize_token_embeddings(len(tokenizer), mean_resizing=True)
