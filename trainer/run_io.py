"""Read and write a run folder; `load_run` is what evaluation uses.

RUN layout:
    config.json              resolved TrainConfig
    open_clip_config.json    {"model_cfg", "preprocess_cfg"} (open_clip's local-dir format: the run is
                             self-contained even when --model was a JSON path that no longer exists)
    log.jsonl                one line per logged step
    tb/                      TensorBoard events
    checkpoints/step-NNNNNNNN.pt
    open_clip_state_dict.pt  plain open_clip state dict (encoders + logit scale, no GATs)
    summary.json             final figures
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from torch import Tensor

from slipio import atomic
from trainer.checkpoint import load_checkpoint, resolve_checkpoint
from trainer.config import TrainConfig, config_class
from trainer.model import (
    ContrastiveModel,
    build_model,
    image_transforms,
    model_config_of,
    tokenizer_for,
)

CONFIG_FILE = "config.json"
OPEN_CLIP_CONFIG_FILE = "open_clip_config.json"
LOG_FILE = "log.jsonl"
SUMMARY_FILE = "summary.json"
TB_DIR = "tb"


@dataclass
class LoadedRun:
    model: ContrastiveModel  # eval mode, on `device`
    preprocess: Callable  # PIL image -> Tensor[3, H, W] (open_clip val transform)
    tokenizer: Callable[[list[str]], Tensor]  # -> LongTensor[N, context_length]
    config: TrainConfig
    method: str  # "slip" | "clip"
    run_dir: Path
    step: int
    checkpoint: Path


def atomic_write_json(path: Path, obj: Any) -> None:
    """A run folder's JSON files (config, summary, eval results): sorted keys, written atomically (slipio)."""
    atomic.write_json(Path(path), obj, sort_keys=True)


def write_run_config(run_dir: Path, cfg: TrainConfig, model_name: str, model: ContrastiveModel) -> None:
    """config.json + open_clip_config.json at the start of a run."""
    atomic_write_json(Path(run_dir) / CONFIG_FILE, cfg.model_dump(mode="json"))
    atomic_write_json(Path(run_dir) / OPEN_CLIP_CONFIG_FILE, {
        "model_name": model_name, "model_cfg": model_config_of(model_name),
        "preprocess_cfg": dict(model.clip.visual.preprocess_cfg)})


def read_run_config(run_dir: Path) -> TrainConfig:
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir} is not a run folder: {CONFIG_FILE} missing")
    return config_class()(**json.loads(path.read_text()))  # a plug-in registered after import reads too


def load_run(run_dir: Path, checkpoint: str = "latest", device: str = "cpu") -> LoadedRun:
    """Model (eval mode) + val preprocess + tokenizer of a finished or running run.

    `checkpoint`: 'latest', a step number ('100') or a checkpoint path. The architecture comes from the run's own
    open_clip_config.json, so no download and no original config path is needed.
    """
    run_dir = Path(run_dir)
    cfg = read_run_config(run_dir)
    ckpt_path = resolve_checkpoint(run_dir, checkpoint)
    model_name = f"local-dir:{run_dir.resolve()}"
    model = build_model(cfg, device=device, load_pretrained=False, model_name=model_name)
    state = load_checkpoint(ckpt_path, map_location=device)
    model.load_state_dict(state["model"])
    model.eval()
    _, preprocess = image_transforms(model)
    return LoadedRun(model=model, preprocess=preprocess, tokenizer=tokenizer_for(model_name), config=cfg,
                     method=cfg.method, run_dir=run_dir, step=int(state["step"]), checkpoint=ckpt_path)


def read_log(run_dir: Path) -> list[dict[str, Any]]:
    """Parsed log.jsonl lines."""
    path = Path(run_dir) / LOG_FILE
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def truncate_log(run_dir: Path, last_step: int) -> None:
    """Drop log lines after `last_step` (a killed run may have logged past its last checkpoint)."""
    kept = [line for line in read_log(run_dir) if line["step"] <= last_step]
    atomic.write_text(Path(run_dir) / LOG_FILE, "".join(json.dumps(line) + "\n" for line in kept))
