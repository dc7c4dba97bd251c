"""Fixtures shared by several test files (test files never import each other): `servers` (a loopback HTTP server
with per-path faults), `upstream` (hand-made upstream stage outputs for the shards / release / validate / publish
tests), `tables` (valid node and quarantine tables), `training` (a micro model config and run arguments for the
trainer tests). `tests/conftest.py` puts tests/ on sys.path, so test files import them as `helpers.<module>`. What
benches also use lives in the packages: `etl.harness` (run one stage on fixture tables) and `trainer.synthetic` (a
tiny valid release)."""
