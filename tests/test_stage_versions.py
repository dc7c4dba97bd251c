"""Stage versions that cannot be forgotten: each stage's output on the embedded sample is digested and compared with
a golden table keyed by (stage, VERSION) in tests/golden_stage_hashes.json.

A stage whose output changed while its VERSION did not fails here, naming the stage to bump: without the bump, a
work folder built by older code would be skipped as done (the fingerprint covers VERSION, not the code). Stages
that changed only because a stage they read changed are listed as such, not blamed.

When a change of output is intended: bump `VERSION` in etl/stages/<stage>.py, then refresh the table with

    SLIP_UPDATE_GOLDEN=1 python -m pytest -q tests/test_stage_versions.py

which writes the digests of the current versions (entries of other versions are kept) and passes. A change that
comes from the inputs, not from a stage's code (the sample generator, a pipelines.yaml default), is refreshed the
same way, without a bump.

Digests are of a canonical form, deterministic across runs and machines: Parquet by schema and column values (not
file bytes, which carry the writer's version), the image chunks merged and sorted by node_id without their timings
(`fetched_at`, `attempts`) and with object addresses masked in error texts, tars by member names and bytes, JSON
without timings, creation times, loopback URLs and raw-byte hashes, the card without its seconds column.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from etl.stages import STAGES

GOLDEN = Path(__file__).with_name("golden_stage_hashes.json")
UPDATE_ENV = "SLIP_UPDATE_GOLDEN"
SMALL = ["--set", "sources.sample.sample_products=400", "--set", "labels.min_class_size=5",
         "--set", "shards.max_samples=64"]
VOLATILE_COLUMNS = {"fetched_at", "attempts"}  # per-attempt timings of the image chunks and status table
# JSON keys whose values are timings, creation times, absolute paths, loopback URLs (a random port) or hashes of
# raw file bytes (which carry timings or the Parquet writer's version); everything else is compared.
VOLATILE_KEYS = {"created_at", "started_at", "finished_at", "duration_s", "timings_s", "this_run", "elapsed_s",
                 "release_dir", "base", "url", "url_rewrite", "fingerprints", "stage_versions",
                 "executor"}  # where images/shards ran (local or Ray, how many workers): not what they wrote
ADDRESS = re.compile(r"0x[0-9a-fA-F]+|127\.0\.0\.1:\d+")


# ---------------------------------------------------------------------------------------------- canonical digests

def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def table_digest(table: pa.Table) -> str:
    """Schema (names, types, nullability) and every column's values, in row order; binary values by their sha256."""
    h = hashlib.sha256()
    for f in table.schema:
        h.update(f"{f.name}:{f.type}:{f.nullable}\n".encode())
    for name in table.column_names:
        values = table.column(name).to_pylist()
        if pa.types.is_binary(table.schema.field(name).type) or pa.types.is_large_binary(
                table.schema.field(name).type):
            values = [None if v is None else _sha(v) for v in values]
        h.update(json.dumps(values, ensure_ascii=False).encode())
    return h.hexdigest()


def _without_volatile(table: pa.Table) -> pa.Table:
    table = table.drop_columns([c for c in table.column_names if c in VOLATILE_COLUMNS])
    if "error" in table.column_names:
        errors = [None if e is None else ADDRESS.sub("ADDR", e) for e in table.column("error").to_pylist()]
        table = table.set_column(table.column_names.index("error"), "error", pa.array(errors, pa.string()))
    return table


def parquet_digest(path: Path) -> str:
    return table_digest(_without_volatile(pq.read_table(path)))


def chunks_digest(folder: Path) -> str:
    """The image chunks as one table: crawl order and chunk boundaries depend on timing, the rows do not."""
    parts = sorted(folder.glob("part-*.parquet"))
    table = pa.concat_tables([pq.read_table(p) for p in parts]) if parts else pa.table({})
    if table.num_rows:
        table = table.sort_by([("node_id", "ascending")])
    return table_digest(_without_volatile(table))


def _json_canonical(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _json_canonical(v) for k, v in value.items() if k not in VOLATILE_KEYS}
    if isinstance(value, list):
        return [_json_canonical(v) for v in value]
    return value


def json_digest(path: Path) -> str:
    data = _json_canonical(json.loads(path.read_text(encoding="utf-8")))
    if path.name == "manifest.json":  # hashes of raw bytes: the files themselves are digested one by one
        data["files"] = sorted(data.get("files", {}))
    return _sha(json.dumps(data, sort_keys=True, ensure_ascii=False).encode())


def tar_digest(path: Path) -> str:
    h = hashlib.sha256()
    with tarfile.open(path) as tar:
        for member in tar:
            h.update(f"{member.name}\0{_sha(tar.extractfile(member).read())}\n".encode())
    return h.hexdigest()


def card_digest(path: Path) -> str:
    """README.md without the accounting table's `seconds` column (stage run times)."""
    out, in_table = [], False
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("| stage |") and line.rstrip().endswith("| seconds |"):
            in_table = True
        elif not line.startswith("|"):
            in_table = False
        out.append(line.rsplit("|", 2)[0] + "|" if in_table else line)
    return _sha("\n".join(out).encode())


def file_digest(path: Path) -> str:
    if path.suffix == ".parquet":
        return parquet_digest(path)
    if path.suffix == ".json":
        return json_digest(path)
    if path.suffix == ".tar":
        return tar_digest(path)
    if path.name == "README.md":
        return card_digest(path)
    return _sha(path.read_bytes())


def output_digest(path: Path) -> str:
    if path.is_file():
        return file_digest(path)
    if path.name == "chunks":
        return chunks_digest(path)
    files = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
    return _sha("".join(f"{p.relative_to(path).as_posix()}\0{file_digest(p)}\n" for p in files).encode())


def stage_digests(root: Path) -> dict[str, tuple[str, str]]:
    """{stage: (the VERSION its record names, digest of all its outputs)} of a built dataset root."""
    out = {}
    for stage in STAGES:
        record = json.loads((root / "work" / "records" / f"{stage}.json").read_text(encoding="utf-8"))
        parts = "".join(f"{name}\0{output_digest(root / o['path'])}\n"
                        for name, o in sorted(record["outputs"].items()))
        out[stage] = (record["version"], _sha(parts.encode()))
    return out


# ---------------------------------------------------------------------------------------------- the check

def compare(digests: dict[str, tuple[str, str]], golden: dict[str, dict[str, str]]) -> list[str]:
    """Problem lines: stages to bump first, then stages without a golden entry, then knock-on changes."""
    changed = {s for s, (v, d) in digests.items() if golden.get(s, {}).get(v) not in (None, d)}
    refresh = f"{UPDATE_ENV}=1 python -m pytest -q tests/{Path(__file__).name}"
    lines = []
    for stage in STAGES:
        version, _ = digests[stage]
        upstream_changed = [d for d in STAGES[stage].needs if d in changed]
        if stage in changed and not upstream_changed:
            lines.append(f"stage {stage!r} writes different output at VERSION {version!r}: bump VERSION in "
                         f"etl/stages/{stage}.py (a work folder built by the old code would be skipped as done), "
                         f"then refresh the golden table: {refresh}")
        elif stage in changed:
            lines.append(f"stage {stage!r} changed because {', '.join(upstream_changed)} changed (refresh the "
                         f"table once the stage(s) named above are bumped)")
        elif version not in golden.get(stage, {}):
            lines.append(f"no golden digest for stage {stage!r} VERSION {version!r}: refresh the table: {refresh}")
    return lines


def update(digests: dict[str, tuple[str, str]], golden: dict[str, dict[str, str]]) -> dict[str, dict[str, str]]:
    table = {s: dict(golden.get(s, {})) for s in sorted(set(golden) | set(digests))}
    for stage, (version, digest) in digests.items():
        table[stage][version] = digest
    return table


def build_sample(out: Path) -> Path:
    proc = subprocess.run([sys.executable, "-m", "etl.cli", "build", "--category", "electronics", "--source",
                           "sample", "--out", str(out), "--no-progress", *SMALL],
                          capture_output=True, text=True, timeout=900, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert proc.returncode == 0, proc.stderr[-4000:]
    return out / "sample-electronics"


@pytest.fixture(scope="module")
def digests(tmp_path_factory) -> dict[str, tuple[str, str]]:
    return stage_digests(build_sample(tmp_path_factory.mktemp("stage-versions")))


def test_records_carry_each_modules_version(digests):
    assert {s: v for s, (v, _) in digests.items()} == {s: spec.version for s, spec in STAGES.items()}
    assert digests["images"][0] != "1" and digests["shards"][0] != "1", "images and shards changed their bytes"


def test_stage_outputs_match_the_golden_digests_of_their_version(digests):
    golden = json.loads(GOLDEN.read_text(encoding="utf-8")) if GOLDEN.is_file() else {}
    if os.environ.get(UPDATE_ENV) == "1":
        GOLDEN.write_text(json.dumps(update(digests, golden), indent=2, sort_keys=True) + "\n", encoding="utf-8")
        return
    problems = compare(digests, golden)
    assert not problems, "\n".join(problems)


def test_the_check_names_the_stage_to_bump(digests):
    """A changed stage is blamed, what reads it is not; a new version asks for a refresh."""
    golden = update(digests, {})
    assert compare(digests, golden) == []
    tampered = {s: dict(v) for s, v in golden.items()}
    tampered["edges"][digests["edges"][0]] = "0" * 64
    for stage in ("reviews", "labels", "images", "shards", "release"):  # everything downstream of edges
        tampered[stage][digests[stage][0]] = "1" * 64
    lines = compare(digests, tampered)
    assert len(lines) == 6 and "bump VERSION in etl/stages/edges.py" in lines[0]
    assert all("changed because" in line for line in lines[1:])
    del tampered["nodes"][digests["nodes"][0]]
    assert any("no golden digest for stage 'nodes'" in line for line in compare(digests, tampered))
