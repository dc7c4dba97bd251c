"""AdamW with CLIP's weight-decay exclusions, and the warmup + cosine learning-rate schedule."""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from trainer.config import TrainConfig
from trainer.model import ContrastiveModel

# Parameters whose name contains one of these are not decayed: norms and their gains, biases, CLIP's logit scale
# and embedding tables (token / positional / class). A method adds markers for its own scales (`Method.no_decay`).
NO_DECAY_MARKERS = ("bias", "norm", "ln_", "bn", "gain", "logit_scale", "embedding")


def decays(name: str, param: nn.Parameter, extra_markers: Sequence[str] = ()) -> bool:
    """Whether weight decay applies: matrices and conv kernels only, minus the exclusions above and `extra_markers`."""
    return param.ndim >= 2 and not any(marker in name for marker in (*NO_DECAY_MARKERS, *extra_markers))


def param_groups(model: nn.Module, weight_decay: float, extra_markers: Sequence[str] = ()) -> list[dict]:
    """Two AdamW groups (decay / no decay) over the trainable parameters."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (decay if decays(name, param, extra_markers) else no_decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: ContrastiveModel, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW, fused (one kernel for all parameters) on CPU and CUDA: on CPU the per-tensor default's update is
    several times slower, a large share of a small CLIP's step."""
    device = next(model.parameters()).device
    fused = device.type in ("cpu", "cuda")
    return torch.optim.AdamW(param_groups(model, cfg.wd, model.no_decay_markers), lr=cfg.lr,
                             betas=(cfg.beta1, cfg.beta2), eps=cfg.eps, fused=fused or None)


def lr_at(step: int, cfg: TrainConfig) -> float:
    """LR of optimizer step `step` (0-based): linear warmup to cfg.lr, then cosine (or constant) to the floor."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    if cfg.schedule == "constant":
        return cfg.lr
    floor = cfg.lr * cfg.min_lr_ratio
    span = max(cfg.steps - cfg.warmup, 1)
    progress = min((step - cfg.warmup) / span, 1.0)
    return floor + 0.5 * (1.0 + math.cos(math.pi * progress)) * (cfg.lr - floor)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
