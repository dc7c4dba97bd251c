"""Test helpers for trainer runs: a micro open_clip config (real towers, seconds per step on a CPU) and a tiny
synthetic release to train it on, shared by the training and method tests."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from trainer.synthetic import make_synthetic_release

MICRO_CONFIG = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "head_width": 32, "patch_size": 8},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}


def make_train_assets(root: Path, n_nodes: int = 300) -> dict[str, Path]:
    """{'root', 'release', 'model'}: a synthetic release (32 px images, 48-sample shards) and the micro config JSON."""
    release = make_synthetic_release(root / "release", n_nodes=n_nodes, shard_size=48, image_size=32)
    model_json = root / "slip-micro.json"
    model_json.write_text(json.dumps(MICRO_CONFIG))
    return {"root": root, "release": release, "model": model_json}


def train_args(assets: dict[str, Path], out: Path, **overrides: Any) -> dict[str, Any]:
    """TrainConfig values for a short seeded SLIP run on `assets`; `overrides` on top."""
    args: dict[str, Any] = dict(
        release=str(assets["release"]), model=str(assets["model"]), method="slip", batch_size=24, workers=2,
        steps=24, seed=3, lr=1e-3, warmup=3, shuffle_buffer=100, ckpt_every=12, keep_last=5, out=str(out))
    args.update(overrides)
    return args
