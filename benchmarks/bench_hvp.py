"""Time the Hessian-vector product implementations of ``lit_eraser.influence.hvp`` on one module and batch.

    python benchmarks/bench_hvp.py                                   # a toy LoRA transformer (default factory)
    python benchmarks/bench_hvp.py --factory llara                   # the LLaRA recommender, tiny preset
    python benchmarks/bench_hvp.py --factory mypkg.mod:make --repeats 5
    python benchmarks/bench_hvp.py --impls autograd func --threads 2

``--factory "package.module:callable"`` names a zero-argument callable returning ``(module, params, batch)`` or
``(module, params, batch, encode)``: ``module(encode(batch))`` gives per-item losses, ``params`` is θ. For a
recommender: build it (tiny preset), and return ``(rec, rec.adapter_parameters(), rows, rec.encode)``.

Prints seconds per product (median of ``--repeats`` after ``--warmup`` calls), the ratio to ``autograd``, and the
largest relative difference between the implementations' results.
"""

from __future__ import annotations

import argparse
import importlib
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lit_eraser.influence._utils import evaluation_mode, prepare, requiring_grad, tnorm, tadd  # noqa: E402
from lit_eraser.influence.hvp import HVP_IMPLS, batch_hvp_sum  # noqa: E402


# ------------------------------------------------------------------------------------------ toy factory
class _LoRALinear(nn.Module):
    def __init__(self, d_in: int, d_out: int, rank: int) -> None:
        super().__init__()
        self.base = nn.Linear(d_in, d_out)
        self.lora_A = nn.Linear(d_in, rank, bias=False)
        self.lora_B = nn.Linear(rank, d_out, bias=False)
        nn.init.normal_(self.lora_B.weight, std=0.02)
        self.dropout = nn.Dropout(0.05)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + 2.0 * self.lora_B(self.lora_A(self.dropout(x)))


class _Block(nn.Module):
    def __init__(self, dim: int, heads: int, rank: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim)
        self.q_proj = _LoRALinear(dim, dim, rank)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = _LoRALinear(dim, dim, rank)
        self.o_proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.up = nn.Linear(dim, 4 * dim)
        self.down = nn.Linear(4 * dim, dim)

    def forward(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, t, d = h.shape
        x = self.norm1(h)

        def split(y: torch.Tensor) -> torch.Tensor:
            return y.view(b, t, self.heads, d // self.heads).transpose(1, 2)

        q, k, v = split(self.q_proj(x)), split(self.k_proj(x)), split(self.v_proj(x))
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(d // self.heads)  # eager attention (double backward)
        attn = scores.masked_fill(mask, float("-inf")).softmax(-1)
        h = h + self.o_proj((attn @ v).transpose(1, 2).reshape(b, t, d))
        return h + self.down(F.gelu(self.up(self.norm2(h))))


class ToyLoRATransformer(nn.Module):
    """A small causal LM with LoRA on q/v (the only trainable tensors); per-item mean NLL over labelled tokens."""

    def __init__(self, vocab: int = 256, dim: int = 64, layers: int = 2, heads: int = 4, rank: int = 8) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.blocks = nn.ModuleList(_Block(dim, heads, rank) for _ in range(layers))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab, bias=False)
        for name, p in self.named_parameters():
            p.requires_grad_(".lora_" in name)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        ids, labels = batch["input_ids"], batch["labels"]
        t = ids.shape[1]
        mask = torch.ones(t, t, dtype=torch.bool, device=ids.device).triu(1)
        h = self.embed(ids)
        for block in self.blocks:
            h = block(h, mask)
        logits = self.head(self.norm(h))[:, :-1]
        target = labels[:, 1:]
        nll = F.cross_entropy(logits.transpose(1, 2), target, ignore_index=-100, reduction="none")
        keep = (target != -100).to(nll.dtype)
        return (nll * keep).sum(1) / keep.sum(1).clamp_min(1)


def toy_factory(batch_size: int = 8, length: int = 48, **kwargs: Any) -> tuple[nn.Module, dict[str, nn.Parameter], Any]:
    torch.manual_seed(0)
    module = ToyLoRATransformer(**kwargs)
    ids = torch.randint(0, 256, (batch_size, length))
    labels = torch.full_like(ids, -100)
    labels[:, -4:] = ids[:, -4:]
    params = {k: p for k, p in module.named_parameters() if p.requires_grad}
    return module, params, {"input_ids": ids, "labels": labels}


def _recommender_factory(kind: str, batch_size: int = 8, hidden: int = 64, layers: int = 2, rank: int = 8):
    """A tiny-preset recommender (random init, B ≠ 0) on synthetic rows: (module, θ, rows, module.encode)."""
    import tempfile

    from lit_eraser.data import SyntheticDataModule
    from lit_eraser.models import LlaraRecommender, LoraSettings, TinyLlamaSettings

    torch.manual_seed(0)
    dm = SyntheticDataModule(kind="sequential" if kind == "llara" else "binary", n_train=64, n_val=8, n_test=8)
    dm.setup("fit")
    common = dict(
        tiny=TinyLlamaSettings(hidden_size=hidden, num_layers=layers, num_heads=4),
        lora=LoraSettings(r=rank, alpha=2 * rank, dropout=0.0), vocab_size=400,
        cache_dir=tempfile.mkdtemp(prefix="bench-hvp-"),
    )
    if kind == "llara":
        from lit_eraser.models import SasrecSettings

        module = LlaraRecommender(sasrec=SasrecSettings(hidden_size=16, num_layers=1, num_heads=1, epochs=1), **common)
    else:
        from lit_eraser.models import TallrecRecommender

        module = TallrecRecommender(**common)
    module.build(dm)
    params = module.adapter_parameters()
    with torch.no_grad():
        for name, p in params.items():
            if "lora_B" in name:
                p.normal_(0.0, 0.05)
    rows = [dm.train_rows[i] for i in range(batch_size)]
    return module, params, rows, module.encode


def llara_factory():
    return _recommender_factory("llara")


def tallrec_factory():
    return _recommender_factory("tallrec")


# ------------------------------------------------------------------------------------------ timing
FACTORIES = {"toy": toy_factory, "llara": llara_factory, "tallrec": tallrec_factory}


def load_factory(spec: str | None):
    if not spec:
        return toy_factory
    if spec in FACTORIES:
        return FACTORIES[spec]
    if ":" not in spec:
        raise SystemExit(f"--factory must look like 'package.module:callable', got {spec!r}")
    mod, name = spec.split(":", 1)
    return getattr(importlib.import_module(mod), name)


def bench(factory, impls: list[str], repeats: int, warmup: int) -> dict[str, float]:
    made = factory()
    module, params, batch = made[:3]
    encode = made[3] if len(made) > 3 else None
    device = next(iter(params.values())).device
    batch = prepare(batch, encode, device)
    gen = torch.Generator().manual_seed(0)
    vector = {k: torch.randn(p.shape, generator=gen).to(p) for k, p in params.items()}
    p_count = sum(p.numel() for p in params.values())
    print(f"module {type(module).__name__}: θ has {p_count} entries in {len(params)} tensors; device {device}")
    results: dict[str, Any] = {}
    times: dict[str, float] = {}
    with evaluation_mode(module), requiring_grad(params):
        # one forward+backward for reference
        def grad_once() -> None:
            torch.autograd.grad(module(batch).sum(), list(params.values()))

        # Round-robin: every repeat times each implementation once, so load changes on a shared machine hit all alike.
        runners = {"forward+backward": lambda: (grad_once(), None)[1]}
        for impl in impls:
            runners[impl] = lambda impl=impl: batch_hvp_sum(module, params, batch, vector, "hessian", impl)[0]
        samples: dict[str, list[float]] = {name: [] for name in runners}
        for name, run in list(runners.items()):
            try:
                for _ in range(warmup):
                    run()
            except Exception as err:  # report and go on
                print(f"  {name}: failed: {type(err).__name__}: {err}")
                del runners[name], samples[name]
        for _ in range(repeats):
            for name, run in runners.items():
                t0 = time.perf_counter()
                out = run()
                samples[name].append(time.perf_counter() - t0)
                if out is not None:
                    results[name] = out
        times = {name: statistics.median(values) for name, values in samples.items()}
    base = times.get("autograd")
    for name, t in times.items():
        ratio = f"  ratio to autograd {t / base:.2f}" if base else ""
        print(f"  {name:>16}: {t * 1e3:9.2f} ms{ratio}")
    if "autograd" in results:
        for impl, out in results.items():
            if impl != "autograd":
                diff = tnorm(tadd(out, results["autograd"], -1.0)) / max(tnorm(results["autograd"]), 1e-30)
                print(f"  relative difference {impl} vs autograd: {diff:.2e}")
    fastest = min((i for i in times if i in HVP_IMPLS), key=times.get, default=None)
    print(f"  fastest: {fastest}")
    return times


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--factory", default=None,
                        help="toy (default), llara, tallrec (tiny presets on synthetic rows), or "
                             "'package.module:callable' returning (module, params, batch[, encode])")
    parser.add_argument("--impls", nargs="+", default=list(HVP_IMPLS), choices=list(HVP_IMPLS))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (be gentle on shared machines)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    bench(load_factory(args.factory), args.impls, args.repeats, args.warmup)


if __name__ == "__main__":
    main()
