"""Test helpers for stage authors: options for a temporary dataset root, and adopting fixture files as a finished
upstream stage (with the fingerprint the framework would compute), so one stage can be run on hand-made inputs."""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from etl.config import PipelineConfig, load_config
from etl.core.stage import (
    Counts,
    RunOptions,
    describe_output,
    fingerprint,
    load_record,
    record_path,
    run_stages,
)
from etl.stages import STAGES
from slipio import atomic


def make_opts(tmp_path: Path, source: str = "amazon-2023", category: str = "electronics", **kw: Any) -> RunOptions:
    return RunOptions(category=category, source=source, out=tmp_path, progress=False, **kw)


def adopt_stage(cfg: PipelineConfig, opts: RunOptions, stage: str, outputs: dict[str, Path],
                stats: dict[str, Any] | None = None) -> dict[str, Any]:
    """Copy `outputs` into work/<stage>/ and write the record a finished run of `stage` would have written."""
    spec = STAGES[stage]
    upstream = {dep: load_record(opts, dep) for dep in spec.needs}
    missing = [d for d, r in upstream.items() if r is None]
    if missing:
        raise RuntimeError(f"adopt {stage}: upstream {missing} not adopted/run yet")
    out_dir = opts.work_dir / stage
    out_dir.mkdir(parents=True, exist_ok=True)
    placed = {}
    for name, src in outputs.items():
        dst = out_dir / Path(src).name
        if Path(src).resolve() != dst.resolve():
            (shutil.copytree if Path(src).is_dir() else shutil.copy2)(src, dst)
        placed[name] = dst
    fp = fingerprint(spec, cfg, opts, upstream)
    (out_dir / ".fingerprint").write_text(fp + "\n")
    record = {"stage": stage, "version": spec.version, "fingerprint": fp, "config": {}, "inputs": {},
              "outputs": {k: describe_output(opts.dataset_root, p) for k, p in placed.items()},
              "counts": Counts(0, 0).__dict__, "stats": stats or {}, "provenance": {"adopted": True},
              "duration_s": 0.0, "started_at": "", "finished_at": ""}
    atomic.write_json(record_path(opts, stage), record)
    return record


def run(cfg: PipelineConfig, opts: RunOptions, *targets: str, force: tuple[str, ...] = ()) -> dict[str, Any]:
    return run_stages(list(targets), STAGES, cfg, opts, force=force)


__all__ = ["make_opts", "adopt_stage", "run", "load_config"]
