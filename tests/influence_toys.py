"""Tiny per-item-loss modules and data for the influence-engine tests (CPU, float64 unless stated).

Every module's ``forward(batch)`` returns a 1-D tensor of per-item losses, ``adapter_parameters()`` returns θ
(the trainable tensors), and some parameters are frozen (requires_grad=False) and must never change.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lit_eraser.influence._utils import flatten, unflatten

DTYPE = torch.float64


class LogReg(nn.Module):
    """Logistic regression with an optional per-item L2 term (so a fitted θ̂ is a strict minimum)."""

    def __init__(self, dim: int = 6, reg: float = 0.0, dropout: float = 0.0) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.linspace(0.5, 1.5, dim), requires_grad=False)  # frozen
        self.linear = nn.Linear(dim, 1)
        self.dropout = nn.Dropout(dropout)
        self.reg = reg

    def adapter_parameters(self) -> dict[str, nn.Parameter]:
        return {"linear.weight": self.linear.weight, "linear.bias": self.linear.bias}

    def logits(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.linear(self.dropout(batch["x"] * self.scale)).squeeze(-1)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        loss = F.binary_cross_entropy_with_logits(self.logits(batch), batch["y"], reduction="none")
        if self.reg:
            loss = loss + 0.5 * self.reg * (self.linear.weight.pow(2).sum() + self.linear.bias.pow(2).sum())
        return loss

    def gauss_newton_outputs(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, Any]:
        y = batch["y"]
        return self.logits(batch), lambda z: F.binary_cross_entropy_with_logits(z, y, reduction="none")


class MLP(nn.Module):
    """Frozen input projection → tanh MLP (trainable) → cross-entropy; non-convex in θ. Has dropout."""

    def __init__(self, dim: int = 5, hidden: int = 6, classes: int = 3, dropout: float = 0.3) -> None:
        super().__init__()
        self.proj = nn.Linear(dim, dim)
        self.proj.requires_grad_(False)
        self.fc1 = nn.Linear(dim, hidden)
        self.drop = nn.Dropout(dropout)
        self.fc2 = nn.Linear(hidden, classes)

    def adapter_parameters(self) -> dict[str, nn.Parameter]:
        return {k: p for k, p in self.named_parameters() if not k.startswith("proj.")}

    def logits(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.fc2(self.drop(torch.tanh(self.fc1(self.proj(batch["x"])))))

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return F.cross_entropy(self.logits(batch), batch["y"], reduction="none")

    def gauss_newton_outputs(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, Any]:
        y = batch["y"]
        return self.logits(batch), lambda z: F.cross_entropy(z, y, reduction="none")


class LoRALinear(nn.Module):
    """A frozen linear layer plus a trainable low-rank update B A (peft-like names ``lora_A``/``lora_B``)."""

    def __init__(self, d_in: int, d_out: int, rank: int = 2, alpha: float = 4.0, dropout: float = 0.1) -> None:
        super().__init__()
        self.base = nn.Linear(d_in, d_out)
        self.base.requires_grad_(False)
        self.lora_A = nn.Linear(d_in, rank, bias=False)
        self.lora_B = nn.Linear(rank, d_out, bias=False)
        nn.init.normal_(self.lora_B.weight, std=0.3)  # a "trained" adapter: B != 0
        self.lora_dropout = nn.Dropout(dropout)
        self.scaling = alpha / rank

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.scaling * self.lora_B(self.lora_A(self.lora_dropout(x)))


class TinyAttentionLM(nn.Module):
    """One causal self-attention block (eager softmax) with LoRA on q and v; loss = mean NLL over response tokens.

    A batch is ``{"tokens": [B, T], "labels": [B, T]}`` with ``-100`` outside the response, like the recommenders.
    """

    def __init__(self, vocab: int = 11, dim: int = 8, rank: int = 2, dropout: float = 0.1) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.q = LoRALinear(dim, dim, rank, dropout=dropout)
        self.k = nn.Linear(dim, dim)
        self.v = LoRALinear(dim, dim, rank, dropout=dropout)
        self.o = nn.Linear(dim, dim)
        self.head = nn.Linear(dim, vocab)
        self.attn_drop = nn.Dropout(dropout)
        for name, p in self.named_parameters():
            p.requires_grad_(".lora_" in name)

    def adapter_parameters(self) -> dict[str, nn.Parameter]:
        return {k: p for k, p in self.named_parameters() if ".lora_" in k}

    def logits(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        h = self.embed(batch["tokens"])
        q, k, v = self.q(h), self.k(h), self.v(h)
        t = h.shape[1]
        scores = q @ k.transpose(-1, -2) / math.sqrt(h.shape[-1])
        mask = torch.ones(t, t, dtype=torch.bool, device=h.device).triu(1)
        attn = self.attn_drop(scores.masked_fill(mask, float("-inf")).softmax(-1))
        return self.head(h + self.o(attn @ v))

    @staticmethod
    def _loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        shift_logits, shift_labels = logits[:, :-1], labels[:, 1:]
        nll = F.cross_entropy(shift_logits.transpose(1, 2), shift_labels, reduction="none", ignore_index=-100)
        mask = (shift_labels != -100).to(nll.dtype)
        return (nll * mask).sum(1) / mask.sum(1).clamp_min(1)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self._loss(self.logits(batch), batch["labels"])

    def gauss_newton_outputs(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, Any]:
        labels = batch["labels"]
        return self.logits(batch), lambda z: self._loss(z, labels)


# ------------------------------------------------------------------------------------------ data
def regression_rows(n: int, dim: int, classes: int | None = None, seed: int = 0) -> list[dict[str, Any]]:
    """Raw rows ``{"id", "x": list[float], "y": float|int}`` (binary labels when ``classes`` is None)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, dim, generator=gen, dtype=DTYPE)
    if classes is None:
        w = torch.randn(dim, generator=gen, dtype=DTYPE)
        p = torch.sigmoid(x @ w)
        y = (torch.rand(n, generator=gen, dtype=DTYPE) < p).to(DTYPE)
        return [{"id": i, "x": x[i].tolist(), "y": float(y[i])} for i in range(n)]
    y = torch.randint(0, classes, (n,), generator=gen)
    return [{"id": i, "x": x[i].tolist(), "y": int(y[i])} for i in range(n)]


def encode_regression(rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """Raw rows → a tensor batch (like ``RecommenderModule.encode``)."""
    x = torch.tensor([r["x"] for r in rows], dtype=DTYPE)
    ys = [r["y"] for r in rows]
    y = torch.tensor(ys, dtype=DTYPE) if isinstance(ys[0], float) else torch.tensor(ys, dtype=torch.long)
    return {"x": x, "y": y}


def sequence_batches(n: int, batch_size: int, vocab: int = 11, length: int = 7, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    """Encoded token batches: prompt of random length, response = the last 2–3 tokens."""
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, vocab, (n, length), generator=gen)
    labels = torch.full_like(tokens, -100)
    for i in range(n):
        start = length - 2 - (i % 2)
        labels[i, start:] = tokens[i, start:]
    return [
        {"tokens": tokens[s : s + batch_size], "labels": labels[s : s + batch_size]} for s in range(0, n, batch_size)
    ]


def chunk(rows: list[Any], batch_size: int) -> list[list[Any]]:
    return [rows[s : s + batch_size] for s in range(0, len(rows), batch_size)]


# ------------------------------------------------------------------------------------------ references
def full_loss_fn(module: nn.Module, params: dict[str, nn.Parameter], batches: list[Any], encode: Any = None):
    """f(flat θ) = mean per-item loss over all batches, via torch.func.functional_call (eval mode expected)."""
    from torch.func import functional_call

    like = {k: p.detach() for k, p in params.items()}
    prepared = [encode(b) if encode is not None else b for b in batches]

    def f(flat: torch.Tensor) -> torch.Tensor:
        ps = unflatten(flat, like)
        losses = torch.cat([functional_call(module, ps, (b,)) for b in prepared])
        return losses.mean()

    return f, flatten(like)


def dense_hessian(module: nn.Module, params: dict[str, nn.Parameter], batches: list[Any], encode: Any = None) -> torch.Tensor:
    """The reference Hessian of the mean loss (torch.autograd.functional.hessian), eval mode."""
    was = module.training
    module.eval()
    try:
        f, x0 = full_loss_fn(module, params, batches, encode)
        return torch.autograd.functional.hessian(f, x0).double()
    finally:
        module.train(was)


def fit(module: nn.Module, params: dict[str, nn.Parameter], batches: list[Any], encode: Any = None, steps: int = 200) -> None:
    """Fit θ (LBFGS, eval mode) so θ̂ is close to a stationary point."""
    was = module.training
    module.eval()
    prepared = [encode(b) if encode is not None else b for b in batches]
    opt = torch.optim.LBFGS(list(params.values()), lr=1, max_iter=steps, tolerance_grad=1e-12, tolerance_change=1e-14,
                            line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.cat([module(b) for b in prepared]).mean()
        loss.backward()
        return loss

    opt.step(closure)
    for p in params.values():
        p.grad = None
    module.train(was)


def snapshot(module: nn.Module) -> dict[str, Any]:
    """The module's state and, per parameter, its ``.grad`` object (usually None)."""
    return {
        "state": {k: v.detach().clone() for k, v in module.state_dict().items()},
        "grads": {k: (None if p.grad is None else p.grad.detach().clone()) for k, p in module.named_parameters()},
        "requires_grad": {k: p.requires_grad for k, p in module.named_parameters()},
    }


def assert_unchanged(module: nn.Module, before: dict[str, Any]) -> None:
    """No weight, buffer, ``.grad`` or ``requires_grad`` flag changed."""
    after = module.state_dict()
    for k, v in before["state"].items():
        assert torch.equal(after[k], v), f"{k} changed"
    for k, p in module.named_parameters():
        old = before["grads"][k]
        if old is None:
            assert p.grad is None, f"{k}.grad was written"
        else:
            assert p.grad is not None and torch.equal(p.grad, old), f"{k}.grad was changed"
        assert p.requires_grad == before["requires_grad"][k], f"{k}.requires_grad changed"


# ------------------------------------------------------------------------------------------ fixtures
import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def one_thread():
    """Tests share 2 cores with other work: one intra-op thread each (restored afterwards)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def logreg_setup(n: int = 48, dim: int = 6, batch_size: int = 12, reg: float = 0.01, seed: int = 0, fitted: bool = True):
    """(module, θ, raw row batches, rows) for a fitted L2-regularised logistic regression (convex)."""
    torch.manual_seed(seed)
    module = LogReg(dim, reg=reg).to(DTYPE)
    rows = regression_rows(n, dim, seed=seed)
    batches = chunk(rows, batch_size)
    if fitted:
        fit(module, module.adapter_parameters(), batches, encode_regression)
    return module, module.adapter_parameters(), batches, rows


def attention_setup(n: int = 32, batch_size: int = 8, seed: int = 0, dropout: float = 0.1):
    """(module, θ, encoded batches) for the tiny LoRA attention LM (non-convex; θ̂ not a minimum)."""
    torch.manual_seed(seed)
    module = TinyAttentionLM(dropout=dropout).to(DTYPE)
    return module, module.adapter_parameters(), sequence_batches(n, batch_size, seed=seed)
