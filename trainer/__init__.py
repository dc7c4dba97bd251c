"""SLIP trainer: `slip-train` (CLIP + graph attention + structural loss) and `slip-eval`; reads only the release
contract (shards, edges.parquet, labels.json, nodes.parquet)."""
