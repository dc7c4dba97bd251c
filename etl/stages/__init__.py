"""The stage registry: order, dependencies, and what each stage's fingerprint covers.

Stage modules are imported only when a stage runs, so `slip-etl --help` stays fast.
"""
from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from etl.config import PipelineConfig
from etl.core.stage import RunOptions, StageContext, StageResult, StageSpec


def _lazy(target: str) -> Callable[[StageContext], StageResult]:
    module, _, func = target.partition(":")

    def run(ctx: StageContext) -> StageResult:
        return getattr(importlib.import_module(module), func)(ctx)

    run.__name__ = f"run_{func}"
    return run


def _source_files(cfg: PipelineConfig, opts: RunOptions) -> dict[str, Any]:
    """What identifies the raw inputs: relative paths and format (not the base URL: mirrors serve the same bytes)."""
    src = cfg.source(opts.source)
    name = cfg.category_name(opts.category, opts.source)
    extra: dict[str, Any] = {"format": src.format,
                             "files": {k: v.format(Category=name) for k, v in sorted(src.files.items())}}
    if opts.source == "sample":
        extra["sample"] = {"products": src.sample_products, "seed": src.sample_seed}
    return extra


def _source_format(cfg: PipelineConfig, opts: RunOptions) -> dict[str, Any]:
    return {"format": cfg.source(opts.source).format}


# Keys of `images` that change what the stage produces; transport knobs (concurrency, rate limits, retries,
# workers, chunking, mirrors) do not, so changing them never re-downloads anything.
IMAGE_OUTPUT_KEYS = ("max_bytes", "max_pixels", "shorter_side", "resize_mode", "jpeg_quality", "respect_robots")


def _image_output_config(cfg: PipelineConfig, opts: RunOptions) -> dict[str, Any]:
    section = cfg.section("images")
    return {k: section[k] for k in IMAGE_OUTPUT_KEYS}


STAGES: dict[str, StageSpec] = {
    spec.name: spec
    for spec in [
        StageSpec("fetch", "1", _lazy("etl.stages.fetch:run"), (), ("fetch",), _source_files,
                  help="Download the raw source files (resumable, sha256-checked)."),
        StageSpec("nodes", "1", _lazy("etl.stages.nodes:run"), ("fetch",), ("nodes",), _source_format,
                  help="Parse and clean product metadata into the node table; quarantine bad records."),
        StageSpec("edges", "1", _lazy("etl.stages.edges:run"), ("fetch", "nodes"), ("edges",), _source_format,
                  help="Build the co-purchase graph (2023 projection / 2018 also_buy) and apply graph filters."),
        StageSpec("reviews", "1", _lazy("etl.stages.reviews:run"), ("fetch", "nodes", "edges"), ("reviews",),
                  _source_format, help="Keep up to K cleaned reviews per product."),
        StageSpec("labels", "1", _lazy("etl.stages.labels:run"), ("nodes", "edges"), ("labels",),
                  help="Choose the label level, assign classes and stratified splits."),
        StageSpec("images", "1", _lazy("etl.stages.images:run"), ("nodes", "edges"), (), _image_output_config,
                  help="Download, validate and resize the main image of every kept node (resumable per sample; "
                       "--force retries only missing and retriable failures — delete work/images to start over).",
                  force_resumes=True),
        StageSpec("shards", "1", _lazy("etl.stages.shards:run"), ("nodes", "edges", "labels", "images"), ("shards",),
                  help="Write graph-ordered WebDataset shards per split."),
        StageSpec("release", "1", _lazy("etl.stages.release:run"),
                  ("fetch", "nodes", "edges", "reviews", "labels", "images", "shards"), ("release",),
                  help="Assemble a versioned, self-describing release folder (manifest, stats, card, plots)."),
    ]
}
