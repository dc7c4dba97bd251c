"""The stage framework: skip when done, redo on change or --force, wipe stale partial output, accounting."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from etl.config import load_config
from etl.core.stage import (
    Counts,
    RunOptions,
    StageContext,
    StageError,
    StageResult,
    StageSpec,
    load_record,
    resolve_order,
    run_stages,
)
from slipio import atomic

CALLS: list[str] = []


def _produce(ctx: StageContext) -> StageResult:
    CALLS.append(ctx.name)
    out = ctx.out_dir / "a.txt"
    atomic.write_text(out, f"{ctx.name}:{ctx.cfg.edges.min_weight}\n")
    return StageResult({"a": out}, Counts(input=3, kept=2, rejected={"bad": 1}))


def _consume(ctx: StageContext) -> StageResult:
    CALLS.append(ctx.name)
    text = ctx.input("up", "a").read_text()
    out = ctx.out_dir / "b.txt"
    atomic.write_text(out, text.upper())
    # partial state a resumable stage would keep between runs
    (ctx.out_dir / "partial.txt").write_text("x")
    return StageResult({"b": out}, Counts(input=2, kept=1, filtered={"small": 1}))


STAGES = {
    "up": StageSpec("up", "1", _produce, (), ("edges",)),
    "down": StageSpec("down", "1", _consume, ("up",), ()),
}


@pytest.fixture()
def env(tmp_path: Path):
    CALLS.clear()
    return load_config(), RunOptions(category="electronics", source="sample", out=tmp_path, progress=False)


def test_second_run_does_no_work(env):
    cfg, opts = env
    first = run_stages(["down"], STAGES, cfg, opts)
    assert CALLS == ["up", "down"]
    second = run_stages(["down"], STAGES, cfg, opts)
    assert CALLS == ["up", "down"], "a second run must not execute any stage"
    assert first["down"]["fingerprint"] == second["down"]["fingerprint"]
    assert (opts.work_dir / "down" / "b.txt").read_text() == "UP:2\n"


def test_config_change_reruns_dependents_and_wipes_stale_output(env):
    cfg, opts = env
    run_stages(["down"], STAGES, cfg, opts)
    stale = opts.work_dir / "up" / "stale.bin"
    stale.write_text("left over")
    cfg2 = load_config(overrides=["edges.min_weight=5"])
    run_stages(["down"], STAGES, cfg2, opts)
    assert CALLS == ["up", "down", "up", "down"]
    assert not stale.exists()
    assert (opts.work_dir / "down" / "b.txt").read_text() == "UP:5\n"


def test_unrelated_config_change_skips(env):
    cfg, opts = env
    run_stages(["down"], STAGES, cfg, opts)
    run_stages(["down"], STAGES, load_config(overrides=["images.concurrency=3"]), opts)
    assert CALLS == ["up", "down"]


def test_force_redoes_only_that_stage_when_output_identical(env):
    cfg, opts = env
    run_stages(["down"], STAGES, cfg, opts)
    run_stages(["down"], STAGES, cfg, opts, force=["up"])
    # `up` rewrote identical bytes, so `down`'s fingerprint is unchanged and it is skipped
    assert CALLS == ["up", "down", "up"]


def test_missing_output_reruns(env):
    cfg, opts = env
    run_stages(["down"], STAGES, cfg, opts)
    (opts.work_dir / "down" / "b.txt").unlink()
    run_stages(["down"], STAGES, cfg, opts)
    assert CALLS == ["up", "down", "down"]


def test_record_contents(env):
    cfg, opts = env
    run_stages(["down"], STAGES, cfg, opts)
    rec = load_record(opts, "up")
    assert rec["counts"] == {"input": 3, "kept": 2, "rejected": {"bad": 1}, "filtered": {}}
    assert rec["config"]["edges"]["min_weight"] == 2
    assert rec["outputs"]["a"]["path"] == "work/up/a.txt"
    assert len(rec["outputs"]["a"]["sha256"]) == 64
    assert json.loads((opts.work_dir / "records" / "down.json").read_text())["counts"]["filtered"] == {"small": 1}


def test_broken_accounting_is_refused(env):
    cfg, opts = env

    def bad(ctx: StageContext) -> StageResult:
        return StageResult({}, Counts(input=5, kept=2, rejected={"x": 1}))

    with pytest.raises(StageError, match="accounting broken"):
        run_stages(["bad"], {"bad": StageSpec("bad", "1", bad)}, cfg, opts)
    assert load_record(opts, "bad") is None


def test_failed_stage_leaves_no_record(env):
    cfg, opts = env

    def boom(ctx: StageContext) -> StageResult:
        raise StageError("input missing")

    with pytest.raises(StageError):
        run_stages(["boom"], {"boom": StageSpec("boom", "1", boom)}, cfg, opts)
    assert load_record(opts, "boom") is None


def test_order_and_unknown_stage():
    assert resolve_order(["down"], STAGES) == ["up", "down"]
    with pytest.raises(StageError, match="unknown stage"):
        resolve_order(["nope"], STAGES)


def test_atomic_write_leaves_nothing_on_failure(tmp_path: Path):
    target = tmp_path / "x.bin"
    with pytest.raises(RuntimeError):
        with atomic.atomic_open(target) as fh:
            fh.write(b"partial")
            raise RuntimeError("killed")
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []


def test_known_hashes_are_used_only_while_the_size_matches(tmp_path: Path):
    from etl.core.stage import describe_output

    f = tmp_path / "raw.bin"
    f.write_bytes(b"abc")
    assert describe_output(tmp_path, f, ("f" * 64, 3))["sha256"] == "f" * 64
    real = describe_output(tmp_path, f, ("f" * 64, 99))["sha256"]
    assert real == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


def test_force_on_a_resuming_stage_keeps_its_partial_state(env):
    cfg, opts = env
    seen: list[bool] = []

    def resumable(ctx: StageContext) -> StageResult:
        keep = ctx.out_dir / "done.txt"
        seen.append(keep.exists())
        atomic.write_text(keep, "x")
        return StageResult({"done": keep}, Counts(input=1, kept=1))

    stages = {"r": StageSpec("r", "1", resumable, force_resumes=True)}
    run_stages(["r"], stages, cfg, opts)
    run_stages(["r"], stages, cfg, opts, force=["r"])
    assert seen == [False, True], "--force re-runs a resuming stage over what it already has"
    plain = {"p": StageSpec("p", "1", _produce)}
    run_stages(["p"], plain, cfg, opts)
    (opts.work_dir / "p" / "extra.txt").write_text("old")
    run_stages(["p"], plain, cfg, opts, force=["p"])
    assert not (opts.work_dir / "p" / "extra.txt").exists(), "--force wipes an ordinary stage's folder"


def test_known_folder_hashes_give_the_same_description(tmp_path: Path):
    from etl.core.stage import describe_output
    from slipio.hashing import file_sha256

    folder = tmp_path / "rel"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.txt").write_text("alpha")
    (folder / "sub" / "b.txt").write_text("beta")
    hashed = describe_output(tmp_path, folder)
    known = {rel: file_sha256(folder / rel) for rel in ("a.txt", "sub/b.txt")}
    assert describe_output(tmp_path, folder, known) == hashed
    (folder / "a.txt").write_text("changed size")  # a stale hint is not trusted
    assert describe_output(tmp_path, folder, known)["sha256"] != hashed["sha256"]


def test_registry_reads_each_stage_modules_version_lazily():
    import subprocess
    import sys

    probe = ("import sys; from etl.stages import STAGES; import etl.cli; "
             "assert not any(m.split('.')[0] in ('polars', 'pyarrow', 'httpx') for m in sys.modules), 'eager'; "
             "print(STAGES['images'].version, 'etl.stages.images' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.split()
    import etl.stages.images

    assert out == [etl.stages.images.VERSION, "True"], "the version is the module's, read on first use"


def test_a_stage_version_must_be_a_non_empty_string():
    assert StageSpec("x", lambda: "3", _produce).version == "3"
    for bad in ("", None, 3):
        with pytest.raises(StageError, match="VERSION must be a non-empty string"):
            StageSpec("x", lambda bad=bad: bad, _produce).version


def test_an_in_place_edit_reruns_a_stage_a_touch_or_a_copy_does_not(env):
    """Same size is not the same bytes: an edited output re-runs its stage; a new mtime alone (a copy, `touch`)
    costs one hash and no run."""
    cfg, opts = env
    run_stages(["down"], STAGES, cfg, opts)
    out = opts.work_dir / "up" / "a.txt"
    original = out.read_bytes()
    os.utime(out, ns=(0, 1_000_000_000))  # touched: same bytes
    run_stages(["down"], STAGES, cfg, opts)
    assert CALLS == ["up", "down"]
    out.write_bytes(original.replace(b"up", b"UP"))  # edited in place, same size
    run_stages(["down"], STAGES, cfg, opts)
    assert CALLS == ["up", "down", "up"], "only the edited stage runs; it wrote the same bytes again"
    assert out.read_bytes() == original


def test_a_record_path_outside_the_dataset_root_is_never_followed(env, tmp_path):
    cfg, opts = env
    run_stages(["down"], STAGES, cfg, opts)
    outside = tmp_path / "elsewhere.txt"
    outside.write_text("up:1.0\n")
    record = load_record(opts, "up")
    record["outputs"]["a"]["path"] = "../elsewhere.txt"
    atomic.write_json(opts.work_dir / "records" / "up.json", record)
    run_stages(["down"], STAGES, cfg, opts)
    assert CALLS == ["up", "down", "up"], "a record naming an unsafe path is not done"
    ctx = StageContext("down", cfg, opts, opts.work_dir / "down", {"up": record})
    with pytest.raises(StageError, match=r"unsafe path .*'\.\.' segments.*rerun that stage with --force"):
        ctx.input("up", "a")
