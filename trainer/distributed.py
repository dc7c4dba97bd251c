"""What training under torchrun needs besides DDP itself: the process group, gathers that keep gradients, the
gradient all-reduce of the cached-feature path, and the agreement of every rank on the logged values.

Every rank computes the loss over the global batch (or, with --local-loss, its own rows of it) from gathered
embeddings; the gather's backward sums the gradients of every rank's loss into each rank's local rows, and the
gradient average over ranks (DDP's, or `average_gradients`) then gives every parameter the gradient of the
single-process global batch.
"""
from __future__ import annotations

import datetime
import os
from typing import Any, Iterable

import torch
import torch.distributed as dist
from torch import Tensor


def init_distributed(timeout_s: float, device: str = "auto") -> tuple[int, int, int]:
    """(rank, world_size, local_rank); initialises torch.distributed under torchrun (WORLD_SIZE > 1): NCCL for a
    CUDA `device` (auto = CUDA when available), gloo otherwise.

    `timeout_s` bounds every collective: a rank that hangs (rather than exits, which torchrun notices by itself)
    makes the others fail after it instead of waiting forever."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, 0
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        cuda = torch.cuda.is_available() and (device == "auto" or device.startswith("cuda"))
        if cuda:
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend="nccl" if cuda else "gloo",
                                timeout=datetime.timedelta(seconds=timeout_s))
    return dist.get_rank(), dist.get_world_size(), local_rank


class _GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward sums every rank's gradient of the gathered tensor and keeps this rank's rows
    (torch.distributed.nn.functional.all_gather does the same and is deprecated as of torch 2.x)."""

    @staticmethod
    def forward(ctx: Any, t: Tensor) -> Tensor:
        ctx.rows = len(t)
        return all_gather_ids(t)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)  # embeddings are small next to the towers: a full all-reduce beats a reduce-scatter
        start = dist.get_rank() * ctx.rows
        return grad[start:start + ctx.rows]


def all_gather_with_grad(t: Tensor) -> Tensor:
    """Concatenate a tensor over ranks (rank order) keeping the autograd path: the backward sums every rank's
    gradient for this rank's rows, so every rank's loss reaches every encoder."""
    return _GatherWithGrad.apply(t)


def all_gather_ids(t: Tensor) -> Tensor:
    """Concatenate a tensor over ranks, in rank order, without gradient (node ids: the global batch's ids)."""
    parts = [torch.empty_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, t.contiguous())
    return torch.cat(parts)


def mean_over_ranks(values: list[float], device: torch.device) -> list[float]:
    """The mean of each value over ranks, the same list on every rank.

    Used for the logged loss terms (per rank under --local-loss) and as the non-finite check: a nan or inf on any
    rank makes the mean non-finite on every rank, so all ranks stop at the same step instead of one rank leaving
    the others waiting in the next collective."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return (t / dist.get_world_size()).tolist()


def average_gradients(params: Iterable[torch.nn.Parameter]) -> None:
    """All-reduce (mean) the gradients of `params` in one flat buffer per dtype: DDP's sync, done once per
    optimizer step by the cached-feature path (which runs the model outside DDP's forward)."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return
    world = dist.get_world_size()
    by_dtype: dict[torch.dtype, list[Tensor]] = {}
    for p in params:
        if p.requires_grad:
            if p.grad is None:  # a part no loss reached on this rank: zeros, so every rank reduces the same buffer
                p.grad = torch.zeros_like(p)
            by_dtype.setdefault(p.grad.dtype, []).append(p.grad)
    for grads in by_dtype.values():
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat /= world
        offset = 0
        for g in grads:
            g.copy_(flat[offset:offset + g.numel()].view_as(g))
            offset += g.numel()


def broadcast_state(module: torch.nn.Module) -> None:
    """Rank 0's parameters and buffers on every rank (what DDP does when it wraps a model), for the path that
    trains without the DDP wrapper."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return
    with torch.no_grad():
        for t in list(module.parameters()) + list(module.buffers()):
            dist.broadcast(t.data, src=0)
