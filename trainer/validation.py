"""Validation during training (`--val-every N`): the val split scored on the in-memory model, and the best so far.

What is scored: the first `--val-max-samples` valid samples of `REL/shards/{val_split}-*.tar` in shard order (the
same ones every time, so the values compare across steps), read, encoded and scored with slip-eval's own functions
(`trainer.evaluate.encode_shards`, `caption_positives`, `zeroshot_weights`, `trainer.metrics`): R@1/5/10, MRR,
mean and median rank both ways, `mean_R@1` (the mean of the two R@1), and zero-shot acc1 / macro-F1 with the
built-in prompts when the release has classes. Encoder-only: the graph-aware scores of a SLIP run need the
neighbours of every scored product encoded from all splits, a full slip-eval pass rather than a bounded one.

It never changes training: the model is put in eval mode and back (each module's own flag restored), and every RNG
(python, numpy, torch, CUDA) is forked around the pass, so a run with --val-every trains exactly as one without.
Under torchrun only rank 0 scores (the result is the same for every world size); the loop holds the other ranks
at a barrier meanwhile. A bank-trained method (SAIL) is refused by the config: it has no towers to encode shards.
"""
from __future__ import annotations

import math
import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import torch
from torch import nn

from trainer import metrics
from trainer.checkpoint import capture_rng_state, restore_rng_state
from trainer.config import VAL_METRICS, TrainConfig, TrainSetupError
from trainer.evaluate import caption_positives, encode_shards, zeroshot_weights
from trainer.release import Release
from trainer.run_io import LoadedRun

VAL_PREFIX = "val_"  # log.jsonl keys; TensorBoard / W&B `val/NAME`


@dataclass
class BestSoFar:
    """The best value of `metric` seen so far and its step; saved in every checkpoint so a resumed run picks the
    same best checkpoint as an uninterrupted one."""

    metric: str
    value: Optional[float] = None
    step: Optional[int] = None

    def improves(self, value: Optional[float]) -> bool:
        """Strictly better than the best so far (ties keep the earlier step); NaN or a missing value never is."""
        if value is None or not math.isfinite(value):
            return False
        if self.value is None:
            return True
        return value > self.value if VAL_METRICS[self.metric] else value < self.value

    def update(self, value: float, step: int) -> None:
        self.value, self.step = float(value), int(step)

    def state(self) -> Optional[dict[str, Any]]:
        """What checkpoints store (None before the first validation)."""
        return None if self.step is None else {"metric": self.metric, "value": self.value, "step": self.step}

    @classmethod
    def from_state(cls, metric: str, state: Optional[dict[str, Any]]) -> "BestSoFar":
        """The checkpoint's best so far; a checkpoint of another --best-metric (or none) starts over."""
        if not state or state.get("metric") != metric:
            return cls(metric)
        return cls(metric, float(state["value"]), int(state["step"]))


class Validator:
    """Scores `cfg.val_split` of `cfg.release` on a live model; build once at setup (bad input fails there)."""

    def __init__(self, cfg: TrainConfig, preprocess: Callable, tokenizer: Callable, device: torch.device):
        release = Release(cfg.release)
        self.shards = release.shards(cfg.val_split)  # none: a ReleaseError (exit 2) before training starts
        self.classnames = release.class_names()
        if cfg.best_metric.startswith("zeroshot_") and not self.classnames:
            raise TrainSetupError(f"--best-metric {cfg.best_metric}: {release} has no classes (labels.json); "
                                  "choose a retrieval metric such as mean_R@1")
        self.cfg, self.preprocess, self.tokenizer, self.device = cfg, preprocess, tokenizer, device

    def score(self, model: nn.Module, step: int) -> dict[str, float]:
        """`val_*` metrics of `model` now (module docstring); a NaN (acc5 below 5 classes) is left out."""
        t0 = time.perf_counter()
        run = LoadedRun(model=model, preprocess=self.preprocess, tokenizer=self.tokenizer, config=self.cfg,
                        method=self.cfg.method, run_dir=Path(self.cfg.out), step=step, checkpoint=None)
        skipped: Counter = Counter()
        with _evaluating(model), _forked_rng():
            nodes = encode_shards(run, self.shards, len(self.classnames), batch_size=64, device=str(self.device),
                                  skipped=skipped, limit=self.cfg.val_max_samples)
            if len(nodes) == 0:
                raise TrainSetupError(f"--val-split {self.cfg.val_split}: no valid sample in {len(self.shards)} "
                                      f"shard(s) (skipped: {dict(skipped)})")
            weights = zeroshot_weights(run, self.classnames, str(self.device)) if self.classnames else None
        out = metrics.retrieval_metrics(nodes.image_emb, nodes.text_emb, caption_positives(nodes.captions))
        out["mean_R@1"] = (out["i2t_R@1"] + out["t2i_R@1"]) / 2
        labels = torch.as_tensor(nodes.labels)
        if weights is not None and (labels >= 0).any():
            out.update(metrics.zeroshot_metrics(nodes.image_emb, weights, labels))
        out = {k: v for k, v in out.items() if not (isinstance(v, float) and math.isnan(v))}
        return {**{VAL_PREFIX + k: v for k, v in out.items()}, f"{VAL_PREFIX}n_samples": len(nodes),
                f"{VAL_PREFIX}time_s": time.perf_counter() - t0}


@contextmanager
def _evaluating(model: nn.Module) -> Iterator[None]:
    """Eval mode for the block, then each module's own training flag back (a frozen tower stays in eval)."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training


@contextmanager
def _forked_rng() -> Iterator[None]:
    """Every RNG the training reads, as it was before the block (validation consumes none of the training's)."""
    state = capture_rng_state()
    try:
        yield
    finally:
        restore_rng_state(state)
