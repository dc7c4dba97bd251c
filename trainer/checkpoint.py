"""Step checkpoints (atomic, keep-last-K), RNG capture, and the plain open_clip export.

A checkpoint is everything needed to continue a run bit-for-bit on CPU: weights, optimizer, scaler, step,
samples seen, RNG states, the data position and the resolved config. It holds only tensors and plain Python
values, so it loads with `torch.load(weights_only=True)`.

A run folder is untrusted input: a checkpoint may be truncated (copied while written, a full disk) or not a
checkpoint at all, and a name in RUN/checkpoints may be a planted symlink. `load_checkpoint` turns every such file
into one `CheckpointError` naming it, the listing skips entries that are not regular files inside the run, and
`load_newest` falls back past unreadable newer checkpoints (for `--resume latest`).
"""
from __future__ import annotations

import logging
import random
import re
import zipfile
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from slipio import atomic
from slipio.paths import UnsafePath, resolve_inside
from trainer.config import TrainSetupError

FORMAT_VERSION = 1
CHECKPOINT_DIR = "checkpoints"
EXPORT_NAME = "open_clip_state_dict.pt"
ALIGNMENT_EXPORT_NAME = "alignment_state_dict.pt"  # a bank-trained run's export (SAIL: no CLIP part)
BEST_NAME = "best.pt"  # --val-every's best checkpoint: beside the step files, outside keep-last rotation
_STEP_FILE = re.compile(r"^step-(\d{8})\.pt$")
UNREADABLE_SUFFIX = ".unreadable"  # an unreadable checkpoint set aside by a fallback resume (kept to inspect)
_ZIP_MAGIC = b"PK\x03\x04"  # torch.save writes a zip archive

log = logging.getLogger("slip-train")


class CheckpointError(TrainSetupError):
    """A checkpoint that cannot be used: truncated, not a checkpoint, another format, or an unsafe path."""


def checkpoint_path(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / CHECKPOINT_DIR / f"step-{step:08d}.pt"


def _inside(run_dir: Path, rel: str, kind: Literal["file", "dir"] = "file") -> Path:
    """`run_dir / rel`, refused (CheckpointError) when it is a symlink, not a regular file, or escapes the run."""
    try:
        return resolve_inside(Path(run_dir), rel, kind=kind)
    except UnsafePath as exc:
        raise CheckpointError(f"run folder {run_dir}: {exc}") from None


def list_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """(step, path) of the run's step checkpoints, oldest first; a step name that is not a regular file inside
    the run (a symlink, a folder) is logged and left out."""
    folder = _inside(run_dir, CHECKPOINT_DIR, kind="dir")
    if not folder.is_dir():
        return []
    found = []
    for entry in folder.iterdir():
        if (m := _STEP_FILE.match(entry.name)) is None:
            continue
        try:
            found.append((int(m.group(1)), _inside(run_dir, f"{CHECKPOINT_DIR}/{entry.name}")))
        except CheckpointError as exc:
            log.warning("%s: not used as a checkpoint", exc)
    return sorted(found)


def resolve_checkpoint(run_dir: Path, which: str = "latest") -> Path:
    """'latest' (highest step in RUN/checkpoints), 'best' (--val-every's pick), a step number (a file inside the
    run), or a path."""
    if which == "latest":
        found = list_checkpoints(run_dir)
        if not found:
            raise FileNotFoundError(f"no step checkpoint in {Path(run_dir) / CHECKPOINT_DIR}")
        return found[-1][1]
    if which == "best":
        path = _inside(run_dir, f"{CHECKPOINT_DIR}/{BEST_NAME}")
        if not path.is_file():
            raise FileNotFoundError(f"no best checkpoint in {Path(run_dir) / CHECKPOINT_DIR} (it is kept only by "
                                    "runs trained with --val-every); pass --checkpoint latest or a step")
        return path
    if which.isdigit():
        path = _inside(run_dir, f"{CHECKPOINT_DIR}/{checkpoint_path(run_dir, int(which)).name}")
    else:
        path = Path(which)  # a path the user typed: theirs to choose
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    return path


def load_newest(run_dir: Path, map_location: str | torch.device = "cpu"
                ) -> tuple[Path, dict[str, Any], list[tuple[Path, str]]]:
    """(path, state, skipped): the newest step checkpoint that loads, and each newer one with why it did not.

    A run killed while a checkpoint was copied, or a disk that filled up, leaves the newest one unreadable; the
    one before it is the run's last good state. No checkpoint that loads is a CheckpointError listing each."""
    found = list_checkpoints(run_dir)
    if not found:
        raise FileNotFoundError(f"no step checkpoint in {Path(run_dir) / CHECKPOINT_DIR}")
    skipped: list[tuple[Path, str]] = []
    for _, path in reversed(found):
        try:
            return path, load_checkpoint(path, map_location=map_location), skipped
        except CheckpointError as exc:
            skipped.append((path, str(exc)))
    raise CheckpointError(f"no checkpoint in {Path(run_dir) / CHECKPOINT_DIR} loads: "
                          f"{'; '.join(problem for _, problem in skipped)}")


def set_aside(path: Path) -> Path:
    """Rename an unreadable checkpoint to `NAME.unreadable`: kept to inspect, out of the listing (so keep-last
    pruning never keeps it in place of a good one, and a resumed run can write that step again)."""
    target = Path(path).with_name(Path(path).name + UNREADABLE_SUFFIX)
    Path(path).replace(target)
    return target


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


def save_best(run_dir: Path, step: int, state: dict[str, Any]) -> Path:
    """Write `checkpoints/best.pt` atomically: a full checkpoint (resumable, evaluable) whose `state["best"]`
    names the metric, its value and the step. Step-checkpoint rotation never touches it."""
    path = Path(run_dir) / CHECKPOINT_DIR / BEST_NAME
    atomic_torch_save({"format_version": FORMAT_VERSION, "step": step, **state}, path)
    return path


def reconcile_best(run_dir: Path, best: dict[str, Any] | None) -> None:
    """Keep `checkpoints/best.pt` only when it is the best-so-far `best` the run (re)starts from.

    A fresh run starts with none; a run resumed from an older checkpoint may find a best.pt written after that
    checkpoint (killed between the two writes, or resumed from further back): the resumed run would pick it
    again only by recomputing it, so it is removed and the resumed run writes it when that step is best again."""
    path = Path(run_dir) / CHECKPOINT_DIR / BEST_NAME
    if path.is_symlink():  # planted: never read through it, never kept
        path.unlink()
        return
    if not path.is_file():
        return
    if best is not None:
        try:
            if load_checkpoint(path).get("best") == best:
                return
        except CheckpointError as exc:
            log.warning("%s: removed", exc)
    path.unlink()
    if best is not None:
        log.info("%s does not hold the best-so-far step %s this run resumes with: removed", path, best.get("step"))


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """The checkpoint's state; a file that is truncated, not a checkpoint or of another format is a
    CheckpointError naming it (slip-train / slip-eval print it as one line and exit 2)."""
    path = Path(path)
    problem = _file_problem(path)
    if problem is not None:
        raise CheckpointError(f"checkpoint {path}: {problem}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # damaged bytes fail anywhere in the unpickler (IndexError, EOFError, RuntimeError...)
        detail = next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
        raise CheckpointError(f"checkpoint {path}: cannot be read ({detail[:200]}); it is damaged or not a "
                              "slip-train checkpoint") from None
    version = state.get("format_version") if isinstance(state, dict) else None
    if version != FORMAT_VERSION:
        raise CheckpointError(f"checkpoint {path}: format {version!r}, this trainer reads {FORMAT_VERSION} (not a "
                              "slip-train checkpoint, or one of another version)")
    return state


def _file_problem(path: Path) -> str | None:
    """Why `path` cannot be a checkpoint, judged from its bytes before torch reads them (None = try to load)."""
    if not path.is_file():
        return "not a file"
    with open(path, "rb") as f:
        head = f.read(len(_ZIP_MAGIC))
    if not head:
        return "empty file (the write was cut short); use an older checkpoint"
    if head != _ZIP_MAGIC:
        return "not a slip-train checkpoint (not a torch zip archive)"
    if not zipfile.is_zipfile(path):
        return "truncated (the zip archive's end is missing: the write or copy was cut short); use an older " \
               "checkpoint"
    return None


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


def export_alignment(model: nn.Module, run_dir: Path) -> Path:
    """`RUN/alignment_state_dict.pt`: a bank-trained run's (SAIL's) whole state dict, its alignment layers and loss
    scales; there are no towers, so no open_clip export. The layers' shapes follow RUN/config.json and the bank."""
    path = Path(run_dir) / ALIGNMENT_EXPORT_NAME
    atomic_torch_save({k: v.detach().cpu() for k, v in model.state_dict().items()}, path)
    return path
