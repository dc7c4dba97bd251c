"""The embedded sample source: a deterministic Amazon-format mini catalog and a loopback file server."""

from etl.sample.generator import SAMPLE_GENERATOR_VERSION, generate_catalog
from etl.sample.knobs import SampleKnobs
from etl.sample.server import serve_directory

__all__ = ["SAMPLE_GENERATOR_VERSION", "SampleKnobs", "generate_catalog", "serve_directory"]
