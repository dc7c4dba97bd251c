"""Where a run's logged scalars go: RUN/log.jsonl always, plus the `--report-to` backends (TensorBoard, W&B).

log.jsonl is the record the run itself reads back (resume truncates it, compare plots it); the backends are views.
Training keys go to `train/KEY`, validation keys (`val_KEY`) to `val/KEY`, skipped-sample counts to `skipped/REASON`.
W&B: the run's id is kept in RUN/wandb.json, so a resumed run continues the same W&B run; `WANDB_MODE=offline`
writes it locally (under WANDB_DIR, default RUN/wandb/) for a later `wandb sync`.
"""
from __future__ import annotations

import importlib.util
import json
import os
import secrets
from pathlib import Path
from typing import Any, Optional

from trainer.config import TrainConfig, TrainSetupError
from trainer.run_io import LOG_FILE, TB_DIR, atomic_write_json

WANDB_ID_FILE = "wandb.json"
VAL_KEY_PREFIX = "val_"


def check_report_to(report_to: list[str]) -> None:
    """Refuse a backend whose package is missing before anything heavy is built."""
    if "wandb" in report_to and importlib.util.find_spec("wandb") is None:
        raise TrainSetupError("--report-to wandb needs the wandb package: pip install 'slip-kit[wandb]' (or drop "
                              "wandb from --report-to)")


def scalar_name(key: str) -> str:
    """The backends' name of a log.jsonl key: `val/NAME` for `val_NAME`, else `train/KEY`."""
    if key.startswith(VAL_KEY_PREFIX):
        return f"val/{key[len(VAL_KEY_PREFIX):]}"
    return f"train/{key}"


class RunLogger:
    """log.jsonl (one line per logged step) + the --report-to backends; silent on ranks other than 0."""

    def __init__(self, run_dir: Path, enabled: bool, purge_step: Optional[int], cfg: TrainConfig,
                 resumed: bool = False):
        self.enabled = enabled
        self._jsonl = None
        self._tb = None
        self._wandb = None
        if not enabled:
            return
        run_dir = Path(run_dir)
        self._jsonl = open(run_dir / LOG_FILE, "a")
        if "tensorboard" in cfg.report_to:
            from torch.utils.tensorboard import SummaryWriter
            self._tb = SummaryWriter(str(run_dir / TB_DIR), purge_step=purge_step)
        if "wandb" in cfg.report_to:
            self._wandb = _start_wandb(run_dir, cfg, resumed)

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self._jsonl.write(json.dumps(record) + "\n")
        self._jsonl.flush()
        step = record["step"]
        scalars = {scalar_name(k): v for k, v in record.items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "step"}
        scalars.update({f"skipped/{reason}": n for reason, n in record.get("skipped", {}).items()})
        if self._tb is not None:
            for name, value in scalars.items():
                self._tb.add_scalar(name, value, step)
        if self._wandb is not None:
            self._wandb.log(scalars, step=step)

    def close(self) -> None:
        if not self.enabled:
            return
        self._jsonl.close()
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()


def _start_wandb(run_dir: Path, cfg: TrainConfig, resumed: bool) -> Any:
    """A W&B run for this run folder: a new id for a fresh run, the recorded one for a resumed run."""
    import wandb

    id_file = run_dir / WANDB_ID_FILE
    run_id = None
    if resumed and id_file.is_file() and not id_file.is_symlink():
        run_id = json.loads(id_file.read_text()).get("id")
    if not isinstance(run_id, str) or not run_id:
        run_id = secrets.token_hex(4)  # W&B ids: lowercase letters and digits
        atomic_write_json(id_file, {"id": run_id, "project": cfg.wandb_project})
    directory = None if os.environ.get("WANDB_DIR") else str(run_dir)
    return wandb.init(project=cfg.wandb_project, name=run_dir.name, id=run_id, resume="allow", dir=directory,
                      config=cfg.model_dump(mode="json"))
