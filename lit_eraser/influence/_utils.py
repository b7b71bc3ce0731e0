"""Small shared helpers of the influence engine: tensor-dict algebra, eval mode, batch preparation.

A *tensor dict* maps a parameter name (as in ``module.named_parameters()``) to a tensor shaped like that
parameter; Δ, b and every Hessian-vector product are tensor dicts. The helpers keep the dict order of their
first argument, accumulate inner products in float64 and never touch ``.grad`` of anything.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import torch
from torch import nn

TensorDict = dict[str, torch.Tensor]
Encode = Callable[[Any], Any]


# ------------------------------------------------------------------------------------------ tensor dicts
def tzeros_like(x: Mapping[str, torch.Tensor]) -> TensorDict:
    return {k: torch.zeros_like(v) for k, v in x.items()}


def tclone(x: Mapping[str, torch.Tensor]) -> TensorDict:
    return {k: v.detach().clone() for k, v in x.items()}


def tadd(x: Mapping[str, torch.Tensor], y: Mapping[str, torch.Tensor], alpha: float = 1.0) -> TensorDict:
    """x + alpha * y."""
    return {k: x[k] + alpha * y[k] for k in x}


def tscale(x: Mapping[str, torch.Tensor], alpha: float) -> TensorDict:
    return {k: alpha * v for k, v in x.items()}


def tdot(x: Mapping[str, torch.Tensor], y: Mapping[str, torch.Tensor]) -> float:
    """<x, y>, accumulated in float64."""
    total = torch.zeros((), dtype=torch.float64)
    for k, v in x.items():
        total = total + torch.sum(v.detach().double() * y[k].detach().double()).cpu()
    return float(total)


def tnorm(x: Mapping[str, torch.Tensor]) -> float:
    return tdot(x, x) ** 0.5


def flatten(x: Mapping[str, torch.Tensor], names: Iterable[str] | None = None) -> torch.Tensor:
    names = list(x) if names is None else list(names)
    return torch.cat([x[k].reshape(-1) for k in names])


def unflatten(flat: torch.Tensor, like: Mapping[str, torch.Tensor]) -> TensorDict:
    out: TensorDict = {}
    offset = 0
    for k, v in like.items():
        n = v.numel()
        out[k] = flat[offset : offset + n].reshape(v.shape).to(dtype=v.dtype, device=v.device)
        offset += n
    if offset != flat.numel():
        raise ValueError(f"flat vector has {flat.numel()} entries, the parameters {offset}")
    return out


def cosine(x: Mapping[str, torch.Tensor], y: Mapping[str, torch.Tensor]) -> float:
    nx, ny = tnorm(x), tnorm(y)
    if nx == 0.0 or ny == 0.0:
        return 0.0
    return tdot(x, y) / (nx * ny)


def relative_error(x: Mapping[str, torch.Tensor], reference: Mapping[str, torch.Tensor]) -> float:
    """‖x − reference‖ / ‖reference‖."""
    return tnorm(tadd(x, reference, -1.0)) / max(tnorm(reference), 1e-300)


# ------------------------------------------------------------------------------------------ parameters
def num_params(params: Mapping[str, torch.Tensor]) -> int:
    return sum(p.numel() for p in params.values())


def resolve_params(module: nn.Module, params: Mapping[str, nn.Parameter] | Iterable[str]) -> dict[str, nn.Parameter]:
    """θ as ``{name: parameter}`` taken from ``module`` itself, so the names are the ones ``functional_call`` uses.

    ``params`` is a dict (its tensors must be the module's own parameters under those names) or a list of names.
    """
    named = dict(module.named_parameters())
    names = list(params.keys()) if isinstance(params, Mapping) else list(params)
    if not names:
        raise ValueError("params is empty: the influence engine needs at least one trainable adapter tensor")
    missing = [n for n in names if n not in named]
    if missing:
        raise KeyError(
            f"{len(missing)} parameter name(s) are not in module.named_parameters(), e.g. {missing[:3]}; "
            "θ must be named exactly as the module names its parameters"
        )
    if isinstance(params, Mapping):
        foreign = [n for n in names if params[n] is not named[n]]
        if foreign:
            raise ValueError(
                f"params[{foreign[0]!r}] is not the module's own parameter of that name "
                "(pass the module's parameters, e.g. module.adapter_parameters())"
            )
    return {n: named[n] for n in names}


def check_like(x: Mapping[str, torch.Tensor], params: Mapping[str, torch.Tensor], what: str) -> None:
    """Raise a clear error unless ``x`` has exactly the keys and shapes of ``params``."""
    if list(x.keys()) != list(params.keys()):
        extra = sorted(set(x) - set(params))
        missing = sorted(set(params) - set(x))
        if extra or missing:
            raise KeyError(f"{what} must have the keys of params; missing {missing[:3]}, unexpected {extra[:3]}")
    for k, p in params.items():
        if tuple(x[k].shape) != tuple(p.shape):
            raise ValueError(f"{what}[{k!r}] has shape {tuple(x[k].shape)}, the parameter {tuple(p.shape)}")


def align(x: Mapping[str, torch.Tensor], params: Mapping[str, torch.Tensor]) -> TensorDict:
    """``x`` ordered like ``params``, on the parameters' devices and dtypes, detached."""
    return {k: x[k].detach().to(device=p.device, dtype=p.dtype) for k, p in params.items()}


# ------------------------------------------------------------------------------------------ modes
@contextlib.contextmanager
def evaluation_mode(module: nn.Module) -> Iterator[None]:
    """Every submodule in eval mode (no dropout); each submodule's own previous mode restored afterwards."""
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training


@contextlib.contextmanager
def requiring_grad(params: Mapping[str, nn.Parameter]) -> Iterator[None]:
    """θ requires grad inside the block (whatever it did before), and grad mode is on."""
    flags = {k: p.requires_grad for k, p in params.items()}
    try:
        for p in params.values():
            p.requires_grad_(True)
        with torch.enable_grad():
            yield
    finally:
        for k, p in params.items():
            p.requires_grad_(flags[k])


def check_grad_possible() -> None:
    if torch.is_inference_mode_enabled():
        raise RuntimeError(
            "influence computations need autograd but inference mode is on; build the lightning.Trainer with "
            "inference_mode=False (validation/test steps run under torch.inference_mode by default)"
        )


# ------------------------------------------------------------------------------------------ batches
def to_device(batch: Any, device: torch.device) -> Any:
    """Move every tensor inside nested dicts/lists/tuples to ``device``; leave everything else alone."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, Mapping):
        moved = {k: to_device(v, device) for k, v in batch.items()}
        if type(batch) is dict:
            return moved
        try:
            return type(batch)(moved)
        except Exception:  # a mapping type that cannot be rebuilt from a dict
            return moved
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):  # namedtuple
        return type(batch)(*(to_device(v, device) for v in batch))
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(v, device) for v in batch)
    return batch


def prepare(batch: Any, encode: Encode | None, device: torch.device) -> Any:
    """``encode(batch)`` (when an encoder is given), moved to ``device``."""
    if encode is not None:
        batch = encode(batch)
    return to_device(batch, device)


def param_device(params: Mapping[str, torch.Tensor]) -> torch.device:
    return next(iter(params.values())).device


def per_item_losses(module: nn.Module, batch: Any) -> torch.Tensor:
    """``module(batch)`` checked to be a 1-D tensor of per-item losses."""
    losses = module(batch)
    if not isinstance(losses, torch.Tensor) or losses.dim() != 1:
        shape = tuple(losses.shape) if isinstance(losses, torch.Tensor) else type(losses).__name__
        raise ValueError(
            f"module(batch) must return a 1-D tensor of per-item losses, got {shape}; the influence engine "
            "needs ℓ(z_i) for each item (the objective is their mean)"
        )
    return losses


def iterate(batches: Iterable[Any] | None) -> Iterator[Any]:
    if batches is None:
        return iter(())
    return iter(batches)
