"""The stage registry: order, dependencies, and what each stage's fingerprint covers.

Each stage is a module `etl/stages/<name>.py` with `run(ctx) -> StageResult` and `VERSION`, the version of what it
writes: bump it whenever the stage's output bytes change for the same inputs and config (tests/test_stage_versions.py
fails until you do). Stage modules are imported only when a stage runs or its version is read, so `slip-etl --help`
stays fast.
"""
from __future__ import annotations

import importlib
from collections.abc import Callable
from types import ModuleType
from typing import Any

from etl.config import PipelineConfig
from etl.core.stage import RunOptions, StageContext, StageError, StageResult, StageSpec


def _module(name: str) -> ModuleType:
    return importlib.import_module(f"etl.stages.{name}")


def _stage(name: str, needs: tuple[str, ...], config_sections: tuple[str, ...] = (),
           fingerprint_extra: Callable[[PipelineConfig, RunOptions], dict[str, Any]] | None = None, *,
           help: str, force_resumes: bool = False) -> StageSpec:
    """The spec of `etl/stages/<name>.py`: its `run` and `VERSION` are looked up when first used."""

    def version() -> str:
        module = _module(name)
        if not hasattr(module, "VERSION"):
            raise StageError(f"{module.__name__} declares no VERSION (a string, bumped when its output changes)")
        return module.VERSION

    def run(ctx: StageContext) -> StageResult:
        return _module(name).run(ctx)

    run.__name__ = f"run_{name}"
    return StageSpec(name, version, run, needs, config_sections, fingerprint_extra, help=help,
                     force_resumes=force_resumes)


def _source_files(cfg: PipelineConfig, opts: RunOptions) -> dict[str, Any]:
    """What identifies the raw inputs: relative paths and format (not the base URL: mirrors serve the same bytes)."""
    src = cfg.source(opts.source)
    name = cfg.category_name(opts.category, opts.source)
    extra: dict[str, Any] = {"format": src.format,
                             "files": {k: v.format(Category=name) for k, v in sorted(src.files.items())}}
    if opts.source == "sample":
        extra["sample"] = {"products": src.sample_products, "seed": src.sample_seed}
        if src.sample_knobs:  # only when set, so default work folders keep their fingerprints
            extra["sample"]["knobs"] = dict(sorted(src.sample_knobs.items()))
    return extra


def _source_format(cfg: PipelineConfig, opts: RunOptions) -> dict[str, Any]:
    return {"format": cfg.source(opts.source).format}


# Keys of `images` that change what the stage produces; transport knobs (concurrency, rate limits, retries,
# workers, chunking, mirrors) do not, so changing them never re-downloads anything. Nor does the `executor`
# section (local or Ray, address, workers, partitions): no stage lists it, both executors write the same outputs.
IMAGE_OUTPUT_KEYS = ("max_bytes", "max_pixels", "shorter_side", "resize_mode", "jpeg_quality", "respect_robots")


def _image_output_config(cfg: PipelineConfig, opts: RunOptions) -> dict[str, Any]:
    section = cfg.section("images")
    return {k: section[k] for k in IMAGE_OUTPUT_KEYS}


STAGES: dict[str, StageSpec] = {
    spec.name: spec
    for spec in [
        _stage("fetch", (), ("fetch",), _source_files,
               help="Download the raw source files (resumable, sha256-checked)."),
        _stage("nodes", ("fetch",), ("nodes",), _source_format,
               help="Parse and clean product metadata into the node table; quarantine bad records."),
        _stage("edges", ("fetch", "nodes"), ("edges",), _source_format,
               help="Build the co-purchase graph (2023 projection / 2018 also_buy) and apply graph filters."),
        _stage("reviews", ("fetch", "nodes", "edges"), ("reviews",), _source_format,
               help="Keep up to K cleaned reviews per product."),
        _stage("labels", ("nodes", "edges"), ("labels",),
               help="Choose the label level, assign classes and stratified splits."),
        _stage("images", ("nodes", "edges"), (), _image_output_config,
               help="Download, validate and resize the main image of every kept node (resumable per sample; "
                    "--force retries only missing and retriable failures — delete work/images to start over).",
               force_resumes=True),
        _stage("shards", ("nodes", "edges", "labels", "images"), ("shards",),
               help="Write graph-ordered WebDataset shards per split."),
        _stage("release", ("fetch", "nodes", "edges", "reviews", "labels", "images", "shards"), ("release",),
               help="Assemble a versioned, self-describing release folder (manifest, stats, card, plots)."),
    ]
}
