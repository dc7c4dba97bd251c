"""Step checkpoints (atomic, keep-last-K), RNG capture, and the plain open_clip export.

A checkpoint is everything needed to continue a run bit-for-bit on CPU: weights, optimizer, scaler, step,
samples seen, RNG states, the data position and the resolved config. It holds only tensors and plain Python
values, so it loads with `torch.load(weights_only=True)`.
"""
from __future__ import annotations

import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from slipio import atomic

FORMAT_VERSION = 1
CHECKPOINT_DIR = "checkpoints"
EXPORT_NAME = "open_clip_state_dict.pt"
_STEP_FILE = re.compile(r"^step-(\d{8})\.pt$")


def checkpoint_path(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / CHECKPOINT_DIR / f"step-{step:08d}.pt"


def list_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """(step, path) of the run's step checkpoints, oldest first."""
    folder = Path(run_dir) / CHECKPOINT_DIR
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _STEP_FILE.match(p.name))]
    return sorted(found)


def resolve_checkpoint(run_dir: Path, which: str = "latest") -> Path:
    """'latest' (highest step in RUN/checkpoints), a step number, or a path."""
    if which == "latest":
        found = list_checkpoints(run_dir)
        if not found:
            raise FileNotFoundError(f"no step checkpoint in {Path(run_dir) / CHECKPOINT_DIR}")
        return found[-1][1]
    if which.isdigit():
        path = checkpoint_path(run_dir, int(which))
    else:
        path = Path(which)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    return path


def atomic_torch_save(obj: Any, path: Path) -> None:
    """torch.save to a temp file in the same folder, fsync, rename (slipio): a crash never leaves a torn
    checkpoint, and a failed save leaves no temp file."""
    with atomic.atomic_path(Path(path)) as tmp:
        torch.save(obj, tmp)


def save_checkpoint(run_dir: Path, step: int, state: dict[str, Any], keep_last: int) -> Path:
    """Write `step-NNNNNNNN.pt` atomically, then delete all but the newest `keep_last`."""
    path = checkpoint_path(run_dir, step)
    atomic_torch_save({"format_version": FORMAT_VERSION, "step": step, **state}, path)
    for _, old in list_checkpoints(run_dir)[:-keep_last]:
        old.unlink(missing_ok=True)
    return path


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    state = torch.load(path, map_location=map_location, weights_only=True)
    version = state.get("format_version") if isinstance(state, dict) else None
    if version != FORMAT_VERSION:
        raise ValueError(f"{path}: checkpoint format {version!r}, this trainer reads {FORMAT_VERSION}")
    return state


def capture_rng_state() -> dict[str, Any]:
    """Python, numpy and torch RNG states as tensors/plain values (weights_only-loadable)."""
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    npy = state["numpy"]
    np.random.set_state(("MT19937", npy["keys"].numpy().astype(np.uint32), npy["pos"], npy["has_gauss"],
                         npy["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def export_open_clip(clip: nn.Module, run_dir: Path) -> Path:
    """`RUN/open_clip_state_dict.pt`: the bare open_clip state dict (no GATs), loadable by open_clip."""
    path = Path(run_dir) / EXPORT_NAME
    atomic_torch_save({k: v.detach().cpu() for k, v in clip.state_dict().items()}, path)
    return path
