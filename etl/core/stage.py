"""The stage framework: fingerprints, skip-if-done, records, and the accounting invariant.

A stage is a plain function `run(ctx) -> StageResult`. The framework decides whether it must run at all: its
fingerprint hashes the stage's code version, the config slice it reads and its upstream stages' output hashes, so a
second `build` with nothing changed does no work, and a change anywhere upstream re-runs exactly what depends on it.
When a stage runs, its folder is kept if the fingerprint matches the partial state there (so fetch/images/shards
resume) and wiped otherwise (a changed config never mixes with stale partial output).
"""
from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from etl.config import PipelineConfig
from slipio import atomic
from slipio.hashing import file_sha256
from slipio.paths import UnsafePath, resolve_inside
from slipio.progress import progress_bar

log = logging.getLogger("slip_etl")

FINGERPRINT_FILE = ".fingerprint"


class StageError(RuntimeError):
    """A stage cannot go on (missing input, unreachable source, broken invariant); the message says what to do."""


@dataclass
class Counts:
    """kept + rejected + filtered == input, for every stage (checked before its record is written)."""

    input: int
    kept: int
    rejected: dict[str, int] = field(default_factory=dict)
    filtered: dict[str, int] = field(default_factory=dict)

    def check(self, stage: str) -> None:
        total = self.kept + sum(self.rejected.values()) + sum(self.filtered.values())
        if total != self.input:
            raise StageError(
                f"stage {stage}: accounting broken: input {self.input} != kept {self.kept} + rejected "
                f"{sum(self.rejected.values())} + filtered {sum(self.filtered.values())}"
            )


@dataclass
class StageResult:
    outputs: dict[str, Path]
    counts: Counts
    stats: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    # Hashes the stage computed while writing, so multi-GB outputs are not read again: (sha256, bytes) for a file
    # output, {relative path: (sha256, bytes)} for a folder output.
    known_hashes: dict[str, tuple[str, int] | dict[str, tuple[str, int]]] = field(default_factory=dict)


@dataclass(frozen=True)
class RunOptions:
    """What a single invocation adds to the config: where, what, and transport details.

    Transport details (mirror, image URL rewrites, allowed hosts) are deliberately *not* part of fingerprints:
    the same bytes fetched from a mirror are the same input, and every fetched file is checked by sha256.
    """

    category: str
    source: str
    out: Path
    mirror: str | None = None
    allow_hosts: tuple[str, ...] = ()
    image_url_rewrite: tuple[tuple[str, str], ...] = ()
    progress: bool = True

    @property
    def dataset_root(self) -> Path:
        return Path(self.out) / f"{self.source}-{self.category}"

    @property
    def work_dir(self) -> Path:
        return self.dataset_root / "work"


@dataclass
class StageContext:
    name: str
    cfg: PipelineConfig
    opts: RunOptions
    out_dir: Path
    upstream: dict[str, dict[str, Any]]
    forced: bool = False
    log: logging.Logger = log

    @property
    def work_dir(self) -> Path:
        return self.opts.work_dir

    def input(self, stage: str, output: str) -> Path:
        """Path of an upstream stage's output (as recorded when it finished, relative to the dataset root)."""
        try:
            return output_path(self.opts.dataset_root, self.upstream[stage], output)
        except KeyError as exc:
            raise StageError(f"stage {self.name}: upstream output {stage}.{output} is not available") from exc

    def recorded(self, stage: str, output: str) -> dict[str, Any]:
        """What the upstream stage recorded about one output: {path, bytes, sha256[, files, members]}."""
        try:
            return self.upstream[stage]["outputs"][output]
        except KeyError as exc:
            raise StageError(f"stage {self.name}: upstream output {stage}.{output} is not available") from exc

    def upstream_stats(self, stage: str) -> dict[str, Any]:
        return self.upstream[stage].get("stats", {})

    def progress(self, total: int | None = None, desc: str | None = None, unit: str = "it", **kw: Any) -> Any:
        """A progress bar on stderr (stdout is reserved for the paths scripts read); not a terminal: a line every
        ~10 s (slipio.progress)."""
        return progress_bar(total=total, desc=desc or self.name, unit=unit, disable=not self.opts.progress,
                            dynamic_ncols=True, leave=False, **kw)


@dataclass(frozen=True)
class StageSpec:
    """A registered stage. `code_version` is the stage's VERSION, or a function returning it (the registry reads it
    from the stage's module only when asked, so listing stages imports none of them)."""

    name: str
    code_version: str | Callable[[], str]
    run: Callable[[StageContext], StageResult]
    needs: tuple[str, ...] = ()
    config_sections: tuple[str, ...] = ()
    fingerprint_extra: Callable[[PipelineConfig, RunOptions], dict[str, Any]] | None = None
    help: str = ""
    # `--force` re-runs the stage over its kept partial state instead of wiping it (images: retry only what is
    # missing or failed with a retriable status, never re-download what succeeded).
    force_resumes: bool = False

    @property
    def version(self) -> str:
        """The stage code's VERSION: part of the fingerprint, the record and the manifest's `stage_versions`."""
        version = self.code_version() if callable(self.code_version) else self.code_version
        if not isinstance(version, str) or not version:
            raise StageError(f"stage {self.name}: VERSION must be a non-empty string, got {version!r}")
        return version


def record_path(opts: RunOptions, stage: str) -> Path:
    return opts.work_dir / "records" / f"{stage}.json"


def load_record(opts: RunOptions, stage: str) -> dict[str, Any] | None:
    path = record_path(opts, stage)
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None  # an unreadable record means "not done"


def output_path(root: Path, record: dict[str, Any], output: str) -> Path:
    """The absolute path of a recorded output: its relative path checked to stay inside the dataset root.

    Records hold paths relative to the dataset root, so a root that was moved or copied still finds its outputs.
    """
    out = record["outputs"][output]
    try:
        return resolve_inside(Path(root), out["path"], kind="dir" if "files" in out else "file")
    except UnsafePath as exc:
        raise StageError(f"the {record.get('stage', '?')} stage's record lists output {output!r} at an unsafe "
                         f"path ({exc}); rerun that stage with --force") from None


def fingerprint(spec: StageSpec, cfg: PipelineConfig, opts: RunOptions, upstream: dict[str, dict[str, Any]]) -> str:
    payload = {
        "stage": spec.name,
        "version": spec.version,
        "category": opts.category,
        "source": opts.source,
        "config": {s: cfg.section(s) for s in spec.config_sections},
        "extra": spec.fingerprint_extra(cfg, opts) if spec.fingerprint_extra else {},
        "upstream": {
            name: {"fingerprint": rec["fingerprint"],
                   "outputs": {k: v["sha256"] for k, v in sorted(rec["outputs"].items())}}
            for name, rec in sorted(upstream.items())
        },
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def describe_output(root: Path, path: Path,
                    known: tuple[str, int] | dict[str, tuple[str, int]] | None = None) -> dict[str, Any]:
    """bytes + sha256 of a file, or of a folder (hash over its files' relative paths and hashes, and each file's
    own {bytes, sha256, mtime_ns} under `members`); the path is relative to `root`, so the root can move.

    `known` holds hashes the stage computed while writing — (sha256, bytes) for a file, {relative path: (sha256,
    bytes)} for a folder; each is trusted only while the size on disk still matches. `mtime_ns` lets the skip check
    notice an in-place edit without hashing (see `outputs_intact`).
    """
    path = Path(path)
    rel = path.relative_to(root).as_posix()
    if path.is_dir():
        per_file = known if isinstance(known, dict) else {}
        h = hashlib.sha256()
        total = 0
        members: dict[str, dict[str, Any]] = {}
        for p in _folder_files(path):
            name = p.relative_to(path).as_posix()
            st = p.stat()
            hint = per_file.get(name)
            digest, size = hint if hint and st.st_size == hint[1] else file_sha256(p)
            total += size
            h.update(f"{name}\0{digest}\n".encode())
            members[name] = {"bytes": size, "sha256": digest, "mtime_ns": st.st_mtime_ns}
        return {"path": rel, "bytes": total, "sha256": h.hexdigest(), "files": len(members), "members": members}
    st = path.stat()
    if isinstance(known, tuple) and st.st_size == known[1]:
        digest, size = known
    else:
        digest, size = file_sha256(path)
    return {"path": rel, "bytes": size, "sha256": digest, "mtime_ns": st.st_mtime_ns}


def _folder_files(folder: Path) -> list[Path]:
    """The files a folder output consists of (temp files and the fingerprint marker are not part of it)."""
    return sorted(p for p in folder.rglob("*") if p.is_file() and atomic.TMP_MARK not in p.name
                  and p.name != FINGERPRINT_FILE)


def _file_intact(path: Path, want: dict[str, Any]) -> bool:
    """Same size, and either the recorded mtime (no write since) or, when the mtime moved, the recorded sha256."""
    try:
        st = path.stat()
    except OSError:
        return False
    if st.st_size != want.get("bytes"):
        return False
    if "mtime_ns" not in want or st.st_mtime_ns == want["mtime_ns"]:
        return True
    return file_sha256(path)[0] == want.get("sha256")  # touched or copied: intact only if the bytes are ours


def outputs_intact(root: Path, record: dict[str, Any]) -> bool:
    """Whether a finished stage's outputs are still the bytes it recorded.

    Cheap when nothing changed (a stat per file); a file whose mtime moved (an in-place edit, a copy without
    timestamps) is hashed, so a skip decision never blesses bytes the stage did not produce. An unsafe recorded
    path counts as not intact.
    """
    for name, out in record.get("outputs", {}).items():
        try:
            p = output_path(root, record, name)
        except StageError:
            return False
        if not p.exists():
            return False
        if p.is_dir():
            files = _folder_files(p)
            members = out.get("members")
            if members is not None:
                names = {f.relative_to(p).as_posix(): f for f in files}
                if names.keys() != members.keys():
                    return False
                if not all(_file_intact(f, members[n]) for n, f in names.items()):
                    return False
            elif len(files) != out.get("files", len(files)) or sum(f.stat().st_size for f in files) != out["bytes"]:
                return False
        elif not _file_intact(p, out):
            return False
    return True


def resolve_order(targets: Iterable[str], stages: dict[str, StageSpec]) -> list[str]:
    """Targets and everything they need, dependencies first."""
    order: list[str] = []
    seen: set[str] = set()

    def visit(name: str, chain: tuple[str, ...]) -> None:
        if name not in stages:
            raise StageError(f"unknown stage {name!r}; stages: {', '.join(stages)}")
        if name in chain:
            raise StageError(f"stage dependency cycle: {' -> '.join(chain + (name,))}")
        if name in seen:
            return
        for dep in stages[name].needs:
            visit(dep, chain + (name,))
        seen.add(name)
        order.append(name)

    for t in targets:
        visit(t, ())
    return order


def run_stages(targets: Iterable[str], stages: dict[str, StageSpec], cfg: PipelineConfig, opts: RunOptions,
               force: Iterable[str] = ()) -> dict[str, dict[str, Any]]:
    """Run `targets` and what they need; skip what is done; return every record by stage name."""
    force = set(force)
    unknown = force - set(stages)
    if unknown:
        raise StageError(f"--force names unknown stage(s) {sorted(unknown)}; stages: {', '.join(stages)}")
    records: dict[str, dict[str, Any]] = {}
    for name in resolve_order(targets, stages):
        spec = stages[name]
        upstream = {dep: records[dep] for dep in spec.needs}
        fp = fingerprint(spec, cfg, opts, upstream)
        previous = load_record(opts, name)
        if (name not in force and previous is not None and previous.get("fingerprint") == fp
                and outputs_intact(opts.dataset_root, previous)):
            log.info("%-8s done already (fingerprint %s), skipped", name, fp[:12])
            records[name] = previous
            continue
        records[name] = _run_one(spec, cfg, opts, upstream, fp, forced=name in force)
    return records


def _run_one(spec: StageSpec, cfg: PipelineConfig, opts: RunOptions, upstream: dict[str, dict[str, Any]],
             fp: str, forced: bool) -> dict[str, Any]:
    out_dir = opts.work_dir / spec.name
    marker = out_dir / FINGERPRINT_FILE
    stale = not marker.is_file() or marker.read_text().strip() != fp
    if out_dir.exists() and (stale or (forced and not spec.force_resumes)):
        shutil.rmtree(out_dir)  # stale partial output from another config: never mix it in
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic.remove_stale_temps(out_dir)
    marker.write_text(fp + "\n")
    record_path(opts, spec.name).unlink(missing_ok=True)

    started = datetime.now(timezone.utc)
    t0 = time.perf_counter()
    log.info("%-8s running", spec.name)
    ctx = StageContext(name=spec.name, cfg=cfg, opts=opts, out_dir=out_dir, upstream=upstream, forced=forced)
    result = spec.run(ctx)
    result.counts.check(spec.name)
    duration = time.perf_counter() - t0
    record = {
        "stage": spec.name,
        "version": spec.version,
        "fingerprint": fp,
        "config": {s: cfg.section(s) for s in spec.config_sections},
        "inputs": {dep: {"fingerprint": rec["fingerprint"]} for dep, rec in upstream.items()},
        "outputs": {k: describe_output(opts.dataset_root, p, result.known_hashes.get(k))
                    for k, p in result.outputs.items()},
        "counts": asdict(result.counts),
        "stats": result.stats,
        "provenance": result.provenance,
        "duration_s": round(duration, 3),
        "started_at": started.isoformat(timespec="seconds"),
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    atomic.write_json(record_path(opts, spec.name), record)
    c = result.counts
    log.info("%-8s done in %.1fs: input %d, kept %d, rejected %d, filtered %d", spec.name, duration, c.input,
             c.kept, sum(c.rejected.values()), sum(c.filtered.values()))
    return record
