"""Where raw bytes come from for one invocation: the configured base, a `--mirror`, or the embedded sample.

`--source sample` generates the deterministic mini catalog once per dataset root and serves it from an in-process
loopback server for the duration of the build, so the sample goes through exactly the same fetch and crawl code
as a real source; only the base URL (and an image-host rewrite onto the same server) differs.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import shutil
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

from etl.config import ConfigError, PipelineConfig
from etl.core.stage import RunOptions

log = logging.getLogger("slip_etl")

# The image CDN the sample's metadata points at (as real Amazon metadata does); rewritten onto the sample server.
SAMPLE_IMAGE_HOST = "https://m.media-amazon.com/"


@contextlib.contextmanager
def open_source(cfg: PipelineConfig, opts: RunOptions) -> Iterator[RunOptions]:
    """Yield the run options to use while the source is reachable (a sample server stops on exit)."""
    if opts.source != "sample" or opts.mirror:
        yield opts
        return
    from etl.sample import serve_directory

    catalog = ensure_sample_catalog(cfg, opts)
    with serve_directory(catalog, renditions=True) as base_url:  # sized renditions, like the CDN
        host = urlparse(base_url).hostname or "127.0.0.1"
        log.info("sample source served at %s for this build", base_url)
        yield dataclasses.replace(
            opts,
            mirror=base_url,
            allow_hosts=tuple(dict.fromkeys(opts.allow_hosts + (host,))),
            image_url_rewrite=opts.image_url_rewrite + ((SAMPLE_IMAGE_HOST, base_url),),
        )


def ensure_sample_catalog(cfg: PipelineConfig, opts: RunOptions) -> Path:
    """Generate the sample catalog under the dataset root unless the same one is already there."""
    from etl.sample import SAMPLE_GENERATOR_VERSION, generate_catalog
    from etl.sample.knobs import parse_knobs

    src = cfg.source("sample")
    try:
        knobs = parse_knobs(src.sample_knobs, "sources.sample.sample_knobs")
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    folder = opts.dataset_root / "sample_src"
    marker = folder / "generated.json"
    want = {"generator": SAMPLE_GENERATOR_VERSION, "seed": src.sample_seed, "products": src.sample_products,
            "category": cfg.category_name(opts.category, "sample"),
            **({"knobs": knobs.changed()} if knobs.changed() else {})}
    if marker.is_file():
        with contextlib.suppress(json.JSONDecodeError):
            if json.loads(marker.read_text()) == want:
                return folder
    if folder.exists():
        shutil.rmtree(folder)
    log.info("generating the sample catalog (%d products, seed %d)", src.sample_products, src.sample_seed)
    generate_catalog(folder, category=want["category"], seed=src.sample_seed, n_products=src.sample_products,
                     knobs=knobs)
    marker.write_text(json.dumps(want) + "\n")
    return folder
