"""Read and write a run folder; `load_run` is what evaluation uses.

RUN layout:
    config.json              resolved TrainConfig
    open_clip_config.json    {"model_cfg", "preprocess_cfg"} (open_clip's local-dir format: the run is
                             self-contained even when --model was a JSON path that no longer exists)
    log.jsonl                one line per logged step (--val-every: the val_* keys on that step's line, or a line
                             of their own when the step is not a log step)
    tb/                      TensorBoard events (--report-to tensorboard: train/*, val/*, skipped/*)
    wandb.json               --report-to wandb: the W&B run id a resumed run continues
    checkpoints/step-NNNNNNNN.pt
    checkpoints/best.pt      --val-every: the step best by --best-metric (a full checkpoint; no rotation)
    open_clip_state_dict.pt  plain open_clip state dict (encoders + logit scale, no GATs)
    bank_ref.json            bank-trained runs (SAIL) instead of open_clip_config.json: the bank trained on (path,
                             bank.json's sha256, dims, encoders); slip-eval finds it again through it
    alignment_state_dict.pt  bank-trained runs instead of the open_clip export: the alignment layers' state dict
    summary.json             final figures ("status": "done", or "failed" with the "error")

A run folder is read as untrusted input: its files are opened only as regular files inside it (no symlinks out,
slipio.paths), a log line torn by a kill mid-write is dropped, a damaged checkpoint is one clear error.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from torch import Tensor

from slipio import atomic
from slipio.paths import UnsafePath, resolve_inside
from trainer.checkpoint import CheckpointError, load_checkpoint, load_newest, resolve_checkpoint
from trainer.config import TrainConfig, TrainSetupError, config_class
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
BANK_REF_FILE = "bank_ref.json"


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
    bank: Any = None  # trainer.bank.Bank of a bank-trained run (SAIL; preprocess and tokenizer are then None)


def atomic_write_json(path: Path, obj: Any) -> None:
    """A run folder's JSON files (config, summary, eval results): sorted keys, written atomically (slipio)."""
    atomic.write_json(Path(path), obj, sort_keys=True)


def write_run_config(run_dir: Path, cfg: TrainConfig, model_name: str, model: ContrastiveModel) -> None:
    """config.json + open_clip_config.json at the start of a run."""
    atomic_write_json(Path(run_dir) / CONFIG_FILE, cfg.model_dump(mode="json"))
    atomic_write_json(Path(run_dir) / OPEN_CLIP_CONFIG_FILE, {
        "model_name": model_name, "model_cfg": model_config_of(model_name),
        "preprocess_cfg": dict(model.clip.visual.preprocess_cfg)})


def write_bank_run_config(run_dir: Path, cfg: TrainConfig, bank: Any) -> None:
    """config.json + bank_ref.json at the start of a bank-trained run (no open_clip config: it has no towers)."""
    from schemas.bank import MANIFEST, sha256_file

    atomic_write_json(Path(run_dir) / CONFIG_FILE, cfg.model_dump(mode="json"))
    atomic_write_json(Path(run_dir) / BANK_REF_FILE, {
        "path": str(Path(bank.path).resolve()), "name": Path(bank.path).name,
        "manifest_sha256": sha256_file(Path(bank.path) / MANIFEST), "image_dim": bank.image_dim,
        "text_dim": bank.text_dim, "image_encoder": bank.manifest.get("image_encoder"),
        "text_encoder": bank.manifest.get("text_encoder")})


def run_file(run_dir: Path, rel: str) -> Path:
    """`run_dir / rel` for reading; a symlink or a non-regular file there is a TrainSetupError naming it."""
    try:
        return resolve_inside(Path(run_dir), rel)
    except UnsafePath as exc:
        raise TrainSetupError(f"run folder {run_dir}: {exc}") from None


def read_run_config(run_dir: Path) -> TrainConfig:
    path = run_file(run_dir, CONFIG_FILE)
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir} is not a run folder: {CONFIG_FILE} missing")
    return config_class()(**json.loads(path.read_text()))  # a plug-in registered after import reads too


def load_run(run_dir: Path, checkpoint: str = "latest", device: str = "cpu", release: Any = None) -> LoadedRun:
    """Model (eval mode) + val preprocess + tokenizer of a finished or running run.

    `checkpoint`: 'latest', 'best' (--val-every's pick), a step number ('100') or a checkpoint path. The
    architecture comes from the run's own open_clip_config.json, so no download and no original config path is
    needed. A bank-trained run (SAIL) comes with its bank opened for `release` (a trainer.release.Release;
    default: the run's own --release) instead.
    """
    run_dir = Path(run_dir)
    cfg = read_run_config(run_dir)
    ckpt_path = resolve_checkpoint(run_dir, checkpoint)
    state = _load_for_eval(run_dir, ckpt_path, checkpoint, device)  # before the model: a bad file fails at once
    from trainer.methods import get_method

    if get_method(cfg.method).trains_on_bank:
        return _load_bank_run(run_dir, cfg, ckpt_path, state, device, release)
    run_file(run_dir, OPEN_CLIP_CONFIG_FILE)  # open_clip reads it by name from the folder
    model_name = f"local-dir:{run_dir.resolve()}"
    model = build_model(cfg, device=device, load_pretrained=False, model_name=model_name)
    model.load_state_dict(state["model"])
    model.eval()
    _, preprocess = image_transforms(model)
    return LoadedRun(model=model, preprocess=preprocess, tokenizer=tokenizer_for(model_name), config=cfg,
                     method=cfg.method, run_dir=run_dir, step=int(state["step"]), checkpoint=ckpt_path)


def _load_bank_run(run_dir: Path, cfg: TrainConfig, ckpt_path: Path, state: dict[str, Any], device: str,
                   release: Any) -> LoadedRun:
    """A SAIL run: its bank (found again, checked against `release` and against the bank it trained on), then the
    alignment layers on top of it."""
    from schemas.bank import MANIFEST, sha256_file
    from trainer.bank import BankError, load_bank
    from trainer.bank_model import BankModel
    from trainer.release import Release

    ref_path = run_file(run_dir, BANK_REF_FILE)
    if not ref_path.is_file():
        raise TrainSetupError(f"run folder {run_dir}: {BANK_REF_FILE} missing (a {cfg.method} run records its bank)")
    ref = json.loads(ref_path.read_text())
    release = release if release is not None else Release(cfg.release)
    path = _find_bank(cfg, ref, release)
    bank = load_bank(path, release)
    if sha256_file(path / MANIFEST) != ref.get("manifest_sha256"):
        raise BankError(f"bank {path} is not the bank run {run_dir} was trained on (its {MANIFEST} differs from "
                        f"the one recorded in {BANK_REF_FILE}); evaluate with the release that bank belongs to")
    model = BankModel(cfg, bank.image_dim, bank.text_dim).to(device)
    model.load_state_dict(state["model"])
    model.eval()
    return LoadedRun(model=model, preprocess=None, tokenizer=None, config=cfg, method=cfg.method, run_dir=run_dir,
                     step=int(state["step"]), checkpoint=ckpt_path, bank=bank)


def _find_bank(cfg: TrainConfig, ref: dict[str, Any], release: Any) -> Path:
    """The run's bank for evaluating on `release`: attached to it (REL/embeddings/NAME), else where it was."""
    names = dict.fromkeys(n for n in (cfg.bank, ref.get("name")) if n and "/" not in n and "\\" not in n)
    tried: list[Path] = []
    for candidate in [Path(release.path) / "embeddings" / n for n in names] + [Path(p) for p in (
            ref.get("path"), cfg.bank) if p]:
        if candidate.is_dir():
            return candidate
        tried.append(candidate)
    raise TrainSetupError(f"the bank run {cfg.method} was trained on is not found (tried "
                          f"{', '.join(map(str, tried))}); attach it to the release as REL/embeddings/NAME")


def _load_for_eval(run_dir: Path, path: Path, which: str, device: str) -> dict[str, Any]:
    """The checkpoint's state; when 'latest' does not load, the error names the newest step that does."""
    try:
        return load_checkpoint(path, map_location=device)
    except CheckpointError as exc:
        if which != "latest":
            raise
        try:
            older, state, _ = load_newest(run_dir, map_location=device)
        except (CheckpointError, FileNotFoundError):
            raise exc from None
        raise CheckpointError(f"{exc}; the newest checkpoint that loads is step {int(state['step'])}: pass "
                              f"--checkpoint {int(state['step'])} ({older.name})") from None


def read_log(run_dir: Path) -> list[dict[str, Any]]:
    """Parsed log.jsonl lines; a torn last line (the run was killed while writing it) is dropped.

    Any other line that is not a JSON object with a step is damage, not a kill: a TrainSetupError naming it."""
    path = run_file(run_dir, LOG_FILE)
    if not path.is_file():
        return []
    lines = path.read_text(encoding="utf-8", errors="replace").split("\n")
    records: list[dict[str, Any]] = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            record = None
        if isinstance(record, dict) and isinstance(record.get("step"), int):
            records.append(record)
        elif number != len(lines):  # only the last piece (no newline after it) can be torn by a kill
            raise TrainSetupError(f"{path}: line {number} is not a log record (expected a JSON object with a "
                                  "step); the log is damaged: remove that line")
    return records


def truncate_log(run_dir: Path, last_step: int) -> None:
    """Drop log lines after `last_step` (a killed run may have logged past its last checkpoint) and a torn last
    line, so the log the resumed run appends to is valid JSONL."""
    kept = [line for line in read_log(run_dir) if line["step"] <= last_step]
    atomic.write_text(Path(run_dir) / LOG_FILE, "".join(json.dumps(line) + "\n" for line in kept))
