"""The Trainer's own gradient step on a fixed global batch, for the equivalence tests of DDP and --accum-freq.

Run in-process (`step_result`) by tests/test_accum.py and under torchrun (`python -m torch.distributed.run ...
ddp_driver.py JOBS.json`) by tests/test_ddp.py: every job builds a real Trainer, reads the first `global_size`
samples of the release in file order (no shuffle, no augmentation), gives rank r its block of rows r*n... split
into the config's micro-batches, runs `Trainer.compute_gradients` (forward, loss, backward, gradient sync) and
returns or saves the averaged loss terms, the batch-graph stats and every parameter's gradient.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import torch

from trainer.config import TrainConfig
from trainer.data import StreamSpec, TrainBatches, resolve_shards
from trainer.loop import Trainer
from trainer.model import image_transforms, tokenizer_for


def fixed_batch(trainer: Trainer, size: int) -> dict[str, Any]:
    """The release's first `size` training samples, in file order, with the eval transform."""
    cfg = trainer.cfg
    _, val_tf = image_transforms(trainer.model)
    spec = StreamSpec(shards=resolve_shards(cfg.release, cfg.shards, cfg.split), batch_size=size, transform=val_tf,
                      tokenizer=tokenizer_for(trainer.model_name), seed=cfg.seed, shuffle_buffer=0,
                      shard_shuffle=False, augment=False)
    return next(iter(TrainBatches(spec, workers=0)))


def _rows(batch: dict[str, Any], start: int, stop: int) -> dict[str, Any]:
    return {key: batch[key][start:stop] for key in ("images", "tokens", "node_ids")}


def step_result(cfg_values: dict[str, Any], global_size: int) -> dict[str, Any]:
    """One optimizer step's gradients for `cfg_values` on the fixed global batch (this rank's rows); the loss
    terms are the first loss computation's (the only one but with --accum)."""
    trainer = Trainer(TrainConfig(**cfg_values))
    batch = fixed_batch(trainer, global_size)
    local, micro = global_size // trainer.world, trainer.cfg.batch_size
    start = trainer.rank * local
    batches = [_rows(batch, start + j * micro, start + (j + 1) * micro) for j in range(local // micro)]
    parts = trainer.compute_gradients(batches)  # one part per loss computation: several with --accum
    trainer.logger.close()
    return {"loss": parts[0]["loss"], "terms": parts[0]["terms"], "neighbor_frac": parts[0].get("neighbor_frac"),
            "edges_per_sample": parts[0].get("edges_per_sample"), "rank": trainer.rank, "world": trainer.world,
            "grads": {name: p.grad.detach().clone() for name, p in trainer.model.named_parameters()
                      if p.grad is not None}}


def compare(got: dict[str, Any], want: dict[str, Any], rel: float = 2e-4) -> None:
    """Loss terms, graph stats and every parameter's gradient of `got` equal `want`'s within `rel` (relative to
    each tensor's largest magnitude); names the first that differs."""
    assert got["terms"].keys() == want["terms"].keys()
    for name, value in want["terms"].items():
        assert abs(got["terms"][name] - value) <= rel * abs(value) + 1e-6, (name, got["terms"][name], value)
    assert got["neighbor_frac"] == want["neighbor_frac"] and got["edges_per_sample"] == want["edges_per_sample"]
    assert got["grads"].keys() == want["grads"].keys()
    for name, g in want["grads"].items():
        scale = float(g.abs().max()) + 1e-12
        diff = float((got["grads"][name] - g).abs().max())
        assert diff <= rel * scale + 1e-9, f"gradient of {name} differs: max |diff| {diff:.3g} vs max |g| {scale:.3g}"


def main(jobs_file: str) -> None:
    """Run every job of JOBS.json in one launch (a torchrun start costs more than the jobs): a gradient job
    {"cfg": {...}, "global_size": N, "out": DIR} makes rank r write DIR/rank{r}.pt; a training job {"train":
    {...}} trains that config with `trainer.loop.train` (which ends the process group, so it comes last)."""
    import torch.distributed as dist

    from trainer.loop import train

    torch.set_num_threads(1)
    for job in json.loads(Path(jobs_file).read_text()):
        if "train" in job:
            train(TrainConfig(**job["train"]))
            continue
        result = step_result(job["cfg"], job["global_size"])
        torch.save(result, Path(job["out"]) / f"rank{result['rank']}.pt")
    if dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
