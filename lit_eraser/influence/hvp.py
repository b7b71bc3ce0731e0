"""Curvature-vector products of the per-item-loss objective with respect to the adapter parameters θ only.

The module contract: ``module(batch)`` returns a 1-D tensor of per-item losses ℓ(z_i, θ); the objective is
their mean, L(θ) = (1/n) Σ ℓ(z_i, θ). θ is a dict ``{name: nn.Parameter}`` of the module's own trainable
adapter tensors (names as in ``module.named_parameters()``); nothing else is differentiated, and no ``.grad``
is ever written. Every product is computed in eval mode (no dropout) at the current θ = θ̂; the module's
previous train/eval mode (per submodule) is restored afterwards.

Curvatures
    ``"hessian"``       H_B = ∇²_θ mean_{i∈B} ℓ_i (exact, possibly indefinite), by Pearlmutter's double backward.
    ``"gauss_newton"``  G_B = mean_{i∈B} J_iᵀ ∇²_o ℓ_i J_i, the generalised Gauss–Newton matrix (PSD when each
                        ℓ_i is convex in the model outputs o, e.g. cross-entropy in logits): a JVP, an
                        output-space HVP and a VJP. Needs ``module.gauss_newton_outputs(batch)`` returning
                        ``(outputs, loss_fn)`` with ``loss_fn(outputs)`` the 1-D per-item losses and ``outputs``
                        a tensor computed from θ.

Implementations of the Hessian product (``impl``)
    ``"autograd"``  double backward with ``torch.autograd.grad`` (reverse over reverse). The default: fastest in
                    ``benchmarks/bench_hvp.py`` (CPU, 1 thread, interleaved medians; time relative to autograd:
                    toy LoRA transformer func 2.6×, func_vjp 1.2×; tiny LLaRA recommender 1.7× / 1.1×; tiny
                    TALLRec 1.7× / 1.1×; one autograd HVP ≈ 2.6–3.1 × one forward+backward) and the most robust
                    (any op with a double backward; eager attention needed, CPU SDPA has none).
    ``"func"``      ``torch.func.jvp`` over ``torch.func.grad`` of ``functional_call`` (forward over reverse).
    ``"func_vjp"``  ``torch.func.vjp`` over ``torch.func.grad`` (reverse over reverse, functorch transforms).
Gauss–Newton products always use autograd.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Literal

import torch
from torch import nn

from lit_eraser.influence._utils import (
    Encode,
    TensorDict,
    align,
    check_grad_possible,
    evaluation_mode,
    param_device,
    per_item_losses,
    prepare,
    requiring_grad,
    resolve_params,
    tadd,
    tdot,
    tnorm,
    tscale,
)

Curvature = Literal["hessian", "gauss_newton"]
HvpImpl = Literal["autograd", "func", "func_vjp"]
CURVATURES: tuple[str, ...] = ("hessian", "gauss_newton")
HVP_IMPLS: tuple[str, ...] = ("autograd", "func", "func_vjp")
DEFAULT_HVP_IMPL: HvpImpl = "autograd"
GAUSS_NEWTON_HOOK = "gauss_newton_outputs"


def check_curvature(curvature: str, impl: str = DEFAULT_HVP_IMPL) -> None:
    if curvature not in CURVATURES:
        raise ValueError(f"unknown curvature {curvature!r}; known: {', '.join(CURVATURES)}")
    if impl not in HVP_IMPLS:
        raise ValueError(f"unknown HVP implementation {impl!r}; known: {', '.join(HVP_IMPLS)}")


def check_gauss_newton_hook(module: nn.Module) -> None:
    if not callable(getattr(module, GAUSS_NEWTON_HOOK, None)):
        raise TypeError(
            f"curvature='gauss_newton' needs {type(module).__name__}.{GAUSS_NEWTON_HOOK}(batch) returning "
            "(outputs, loss_fn), where outputs (e.g. logits) depend on θ and loss_fn(outputs) gives the 1-D "
            "per-item losses; this module has no such method (use curvature='hessian')"
        )


def _zeros_for(params: Mapping[str, torch.Tensor]) -> TensorDict:
    return {k: torch.zeros_like(p, memory_format=torch.contiguous_format).detach() for k, p in params.items()}


def _fill(grads: Iterable[torch.Tensor | None], params: Mapping[str, torch.Tensor]) -> TensorDict:
    return {
        k: (torch.zeros_like(p).detach() if g is None else g.detach())
        for (k, p), g in zip(params.items(), grads, strict=True)
    }


class PreparedBatch:
    """One encoded batch whose first-order graph is built once and reused for many curvature products.

    ``apply(v)`` returns Σ_{i∈B} C_i v (a *sum* over the batch's items, C = ∇²ℓ_i or the Gauss–Newton block);
    ``count`` is the number of items. Must be created and used inside ``evaluation_mode``/``requiring_grad``
    (the public functions below do that). Holds the graph until dropped: one batch at a time.
    """

    def __init__(self, module: nn.Module, params: Mapping[str, nn.Parameter], batch: Any, curvature: str) -> None:
        self.params = params
        self.curvature = curvature
        plist = list(params.values())
        if curvature == "hessian":
            losses = per_item_losses(module, batch)
            self.count = int(losses.numel())
            grads = torch.autograd.grad(losses.sum(), plist, create_graph=True, allow_unused=True)
            self._grads = [g for g in grads]
        elif curvature == "gauss_newton":
            check_gauss_newton_hook(module)
            outputs, loss_fn = getattr(module, GAUSS_NEWTON_HOOK)(batch)
            if not isinstance(outputs, torch.Tensor) or not outputs.requires_grad:
                raise ValueError(f"{GAUSS_NEWTON_HOOK}(batch)[0] must be a tensor computed from θ")
            self._outputs = outputs
            # Jᵀw as a function of a dummy w: its derivative in w along v is Jv (the double-backward JVP trick).
            self._w = torch.zeros_like(outputs, requires_grad=True)
            jt_w = torch.autograd.grad(outputs, plist, grad_outputs=self._w, create_graph=True, allow_unused=True)
            # (name, Jᵀw block) for the tensors the outputs depend on
            self._jt_w = [(k, g) for k, g in zip(params, jt_w) if g is not None and g.requires_grad]
            z = outputs.detach().requires_grad_(True)
            losses = loss_fn(z)
            if not isinstance(losses, torch.Tensor) or losses.dim() != 1:
                raise ValueError(f"{GAUSS_NEWTON_HOOK}: loss_fn(outputs) must return a 1-D tensor of per-item losses")
            self.count = int(losses.numel())
            self._z = z
            (self._gz,) = torch.autograd.grad(losses.sum(), z, create_graph=True)
        else:
            check_curvature(curvature)

    def apply(self, vector: Mapping[str, torch.Tensor], retain_graph: bool = True) -> TensorDict:
        plist = list(self.params.values())
        vlist = [vector[k] for k in self.params]
        if self.curvature == "hessian":
            pairs = [(g, v) for g, v in zip(self._grads, vlist) if g is not None and g.requires_grad]
            if not pairs:  # loss linear in θ (or θ unused): zero curvature
                return _zeros_for(self.params)
            hv = torch.autograd.grad(
                [g for g, _ in pairs], plist, grad_outputs=[v for _, v in pairs],
                retain_graph=retain_graph, allow_unused=True,
            )
            return _fill(hv, self.params)
        # Gauss–Newton: u = J v, then h = ∇²_o ℓ u, then Jᵀ h.
        if not self._jt_w:
            return _zeros_for(self.params)
        (jv,) = torch.autograd.grad(
            [g for _, g in self._jt_w], self._w, grad_outputs=[vector[k] for k, _ in self._jt_w], retain_graph=True
        )
        if not self._gz.requires_grad:  # loss linear in the outputs
            return _zeros_for(self.params)
        (h,) = torch.autograd.grad(self._gz, self._z, grad_outputs=jv, retain_graph=True)
        jt_h = torch.autograd.grad(self._outputs, plist, grad_outputs=h, retain_graph=retain_graph, allow_unused=True)
        return _fill(jt_h, self.params)


def hessian_columns(prepared: PreparedBatch, start: int, stop: int) -> torch.Tensor:
    """Columns ``start:stop`` of Σ_{i∈B} ∇²ℓ_i as a float64 ``[p, stop − start]`` matrix, by one vmapped backward
    (``is_grads_batched``) over the unit vectors; θ flattened in dict order. Hessian curvature only."""
    if prepared.curvature != "hessian":
        raise ValueError("hessian_columns needs curvature='hessian'")
    params = prepared.params
    plist = list(params.values())
    sizes = [p.numel() for p in plist]
    total = sum(sizes)
    k = stop - start
    first = plist[0]
    unit = torch.zeros(k, total, dtype=first.dtype, device=first.device)
    unit[torch.arange(k), torch.arange(start, stop)] = 1.0
    blocks = [blk.reshape(k, *p.shape) for blk, p in zip(unit.split(sizes, dim=1), plist)]
    pairs = [(g, blk) for g, blk in zip(prepared._grads, blocks) if g is not None and g.requires_grad]
    if not pairs:
        return torch.zeros(total, k, dtype=torch.float64, device=first.device)
    cols = torch.autograd.grad(
        [g for g, _ in pairs], plist, grad_outputs=[blk for _, blk in pairs],
        retain_graph=True, allow_unused=True, is_grads_batched=True,
    )
    flat = torch.cat(
        [
            (torch.zeros(k, n, dtype=torch.float64, device=first.device) if c is None else c.reshape(k, n).double())
            for c, n in zip(cols, sizes)
        ],
        dim=1,
    )
    return flat.T


def _func_hvp_sum(
    module: nn.Module, params: Mapping[str, nn.Parameter], batch: Any, vector: Mapping[str, torch.Tensor], impl: str
) -> tuple[TensorDict, int]:
    """Σ_{i∈B} ∇²ℓ_i v with torch.func transforms over ``functional_call``."""
    from torch.func import functional_call, grad, jvp, vjp

    names = list(params)
    primals = tuple(p.detach() for p in params.values())
    tangents = tuple(vector[k] for k in names)
    count: list[int] = []

    def total_loss(*ps: torch.Tensor) -> torch.Tensor:
        losses = per_item_losses_functional(functional_call(module, dict(zip(names, ps)), (batch,)))
        count.append(losses.shape[0])
        return losses.sum()

    grad_fn = grad(total_loss, argnums=tuple(range(len(names))))
    if impl == "func":
        _, hv = jvp(grad_fn, primals, tangents)
    else:
        _, vjp_fn = vjp(grad_fn, *primals)
        hv = vjp_fn(tangents)
    return {k: h.detach() for k, h in zip(names, hv)}, int(count[0])


def per_item_losses_functional(losses: Any) -> torch.Tensor:
    if not isinstance(losses, torch.Tensor) or losses.dim() != 1:
        raise ValueError("module(batch) must return a 1-D tensor of per-item losses")
    return losses


def batch_hvp_sum(
    module: nn.Module,
    params: Mapping[str, nn.Parameter],
    batch: Any,
    vector: Mapping[str, torch.Tensor],
    curvature: str = "hessian",
    impl: str = DEFAULT_HVP_IMPL,
) -> tuple[TensorDict, int]:
    """(Σ_{i∈B} C_i v, |B|) for one *prepared* batch, inside eval mode with θ requiring grad."""
    if curvature == "hessian" and impl != "autograd":
        return _func_hvp_sum(module, params, batch, vector, impl)
    prepared = PreparedBatch(module, params, batch, curvature)
    return prepared.apply(vector, retain_graph=False), prepared.count


def hvp(
    module: nn.Module,
    params: Mapping[str, nn.Parameter],
    batch: Any,
    vector: Mapping[str, torch.Tensor],
    damping: float = 0.0,
    curvature: Curvature = "hessian",
    *,
    encode: Encode | None = None,
    impl: HvpImpl = DEFAULT_HVP_IMPL,
) -> TensorDict:
    """(C_B + λI) v for one batch B, C_B the Hessian (or Gauss–Newton matrix) of the batch-*mean* loss at θ̂.

    Args:
        module: returns per-item losses from ``module(batch)``.
        params: θ, ``{name: parameter}`` of the module's own parameters; only these are differentiated.
        batch: a raw batch; ``encode(batch)`` is applied first when ``encode`` is given, then tensors are
            moved to θ's device.
        vector: v, a tensor dict shaped like ``params`` (it is detached).
        damping: λ ≥ 0.
        curvature: ``"hessian"`` or ``"gauss_newton"``.
        encode: optional raw-batch encoder (e.g. ``recommender.encode``).
        impl: ``"autograd"`` (default), ``"func"`` or ``"func_vjp"`` (Hessian only).
    """
    return dataset_hvp(module, params, [batch], vector, damping, curvature, encode=encode, impl=impl)


def dataset_hvp(
    module: nn.Module,
    params: Mapping[str, nn.Parameter],
    batches: Iterable[Any],
    vector: Mapping[str, torch.Tensor],
    damping: float = 0.0,
    curvature: Curvature = "hessian",
    *,
    encode: Encode | None = None,
    impl: HvpImpl = DEFAULT_HVP_IMPL,
) -> TensorDict:
    """(C + λI) v with C averaged over *all items* of ``batches`` (so the result does not depend on batching)."""
    return CurvatureOperator(
        module, params, batches, encode=encode, damping=damping, curvature=curvature, impl=impl
    )(vector)


class CurvatureOperator:
    """The linear map v ↦ (C + λI) v, C the Hessian/GGN of the mean per-item loss over a fixed set of batches.

    Each call makes one pass over ``batches`` (re-iterated every call; give a list for a fixed sample), one
    batch at a time, summing per-batch products and dividing by the total item count. ``hvp_calls`` counts
    batch-level products, ``items`` the items of the last pass.
    """

    def __init__(
        self,
        module: nn.Module,
        params: Mapping[str, nn.Parameter],
        batches: Iterable[Any],
        *,
        encode: Encode | None = None,
        damping: float = 0.0,
        curvature: Curvature = "hessian",
        impl: HvpImpl = DEFAULT_HVP_IMPL,
    ) -> None:
        check_curvature(curvature, impl)
        if damping < 0:
            raise ValueError(f"damping must be >= 0, got {damping}")
        if curvature == "gauss_newton":
            check_gauss_newton_hook(module)
        self.module = module
        self.params = resolve_params(module, params)
        self.batches = batches
        self.encode = encode
        self.damping = float(damping)
        self.curvature = curvature
        self.impl = impl
        self.hvp_calls = 0
        self.items = 0

    def sum_and_count(self, vector: Mapping[str, torch.Tensor]) -> tuple[TensorDict, int]:
        """(Σ_i C_i v over every item, item count), no damping."""
        check_grad_possible()
        v = align(vector, self.params)
        device = param_device(self.params)
        total = _zeros_for(self.params)
        count = 0
        with evaluation_mode(self.module), requiring_grad(self.params):
            for raw in self.batches:
                batch = prepare(raw, self.encode, device)
                hv, n = batch_hvp_sum(self.module, self.params, batch, v, self.curvature, self.impl)
                total = tadd(total, hv)
                count += n
                self.hvp_calls += 1
        if count == 0:
            raise ValueError("no items: the batches given for the curvature are empty")
        self.items = count
        return total, count

    def __call__(self, vector: Mapping[str, torch.Tensor]) -> TensorDict:
        total, count = self.sum_and_count(vector)
        out = tscale(total, 1.0 / count)
        if self.damping:
            out = tadd(out, align(vector, self.params), self.damping)
        return out


def estimate_top_eigenvalue(operator: CurvatureOperator, iters: int = 20, seed: int = 0) -> float:
    """Largest-magnitude eigenvalue of the operator by power iteration (``iters`` operator calls)."""
    gen = torch.Generator().manual_seed(seed)
    v = {k: torch.randn(p.shape, generator=gen, dtype=torch.float64).to(p) for k, p in operator.params.items()}
    norm = tnorm(v)
    v = tscale(v, 1.0 / norm)
    eig = 0.0
    for _ in range(max(1, iters)):
        w = operator(v)
        eig = tdot(v, w)
        norm = tnorm(w)
        if norm == 0.0:
            return 0.0
        v = tscale(w, 1.0 / norm)
    return abs(eig) if eig != 0.0 else norm


__all__ = [
    "CURVATURES",
    "DEFAULT_HVP_IMPL",
    "HVP_IMPLS",
    "CurvatureOperator",
    "PreparedBatch",
    "batch_hvp_sum",
    "dataset_hvp",
    "estimate_top_eigenvalue",
    "hessian_columns",
    "hvp",
]
