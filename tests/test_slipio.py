"""slipio, the file I/O both wings share: atomic writes leave either the old file or the new one and never a temp
file, whoever writes (ETL JSON/Parquet, the trainer's run files and checkpoints); file hashing."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from slipio import atomic
from slipio.hashing import file_sha256
from trainer.checkpoint import atomic_torch_save
from trainer.run_io import atomic_write_json, truncate_log


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if atomic.TMP_MARK in p.name)


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path: Path):
    target = tmp_path / "data.bin"
    atomic.write_bytes(target, b"old")
    with pytest.raises(RuntimeError, match="disk full"):
        with atomic.atomic_open(target) as fh:
            fh.write(b"half of the new")
            raise RuntimeError("disk full")
    assert target.read_bytes() == b"old" and leftovers(tmp_path) == []
    looped: dict = {}
    looped["self"] = looped
    with pytest.raises(ValueError, match="Circular reference"):
        atomic.write_json(tmp_path / "new.json", looped)
    with pytest.raises(pa.ArrowException, match="no-such-codec"):
        atomic.write_parquet(tmp_path / "t.parquet", pa.table({"a": [1]}), compression="no-such-codec")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.bin"]


def test_json_and_parquet_round_trip(tmp_path: Path):
    atomic.write_json(tmp_path / "a.json", {"b": 1, "a": "ü"})
    assert (tmp_path / "a.json").read_text(encoding="utf-8") == '{\n  "b": 1,\n  "a": "ü"\n}\n'
    atomic.write_json(tmp_path / "s.json", {"b": 1, "a": 2}, sort_keys=True)
    assert list(json.loads((tmp_path / "s.json").read_text())) == ["a", "b"]
    table = pa.table({"x": pa.array([3, 1, 2], pa.int64())})
    atomic.write_parquet(tmp_path / "deep" / "t.parquet", table)
    assert pq.read_table(tmp_path / "deep" / "t.parquet").equals(table)
    assert leftovers(tmp_path) == [] and leftovers(tmp_path / "deep") == []


def test_stale_temps_are_removed(tmp_path: Path):
    (tmp_path / f"x.json{atomic.TMP_MARK}abc").write_text("torn")
    (tmp_path / "keep.json").write_text("{}")
    assert atomic.remove_stale_temps(tmp_path) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.json"]


def test_trainer_run_files_use_the_same_atomic_writes(tmp_path: Path):
    atomic_write_json(tmp_path / "summary.json", {"z": 1, "a": [1, 2]})
    assert list(json.loads((tmp_path / "summary.json").read_text())) == ["a", "z"]
    (tmp_path / "log.jsonl").write_text("".join(json.dumps({"step": s}) + "\n" for s in (1, 2, 3, 4)))
    truncate_log(tmp_path, last_step=2)
    assert (tmp_path / "log.jsonl").read_text() == '{"step": 1}\n{"step": 2}\n'
    looped: dict = {}
    looped["self"] = looped
    with pytest.raises(ValueError, match="Circular reference"):
        atomic_write_json(tmp_path / "summary.json", looped)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["log.jsonl", "summary.json"]  # no temp file of any name
    assert json.loads((tmp_path / "summary.json").read_text()) == {"a": [1, 2], "z": 1}


def test_a_failed_checkpoint_save_keeps_the_previous_one(tmp_path: Path):
    path = tmp_path / "checkpoints" / "step-00000001.pt"
    atomic_torch_save({"w": torch.arange(4)}, path)
    assert torch.equal(torch.load(path, weights_only=True)["w"], torch.arange(4))
    with pytest.raises(TypeError, match="pickle 'generator'"):  # fails half-way, after the tensor
        atomic_torch_save({"w": torch.zeros(4), "g": (x for x in ())}, path)
    assert torch.equal(torch.load(path, weights_only=True)["w"], torch.arange(4))
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]


def test_file_sha256_of_a_known_file(tmp_path: Path):
    path = tmp_path / "abc.txt"
    path.write_bytes(b"abc")
    # the FIPS 180-2 test vector for "abc"
    assert file_sha256(path) == ("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad", 3)
    big = tmp_path / "big.bin"
    data = bytes(range(256)) * 5000
    big.write_bytes(data)
    assert file_sha256(big, chunk=4096) == (hashlib.sha256(data).hexdigest(), len(data))  # many blocks
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    assert file_sha256(empty) == (hashlib.sha256(b"").hexdigest(), 0)
