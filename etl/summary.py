"""`slip-etl stats`: a readable summary of a dataset root (its stage records) or of a release (stats + manifest).

Everything printed comes from files the pipeline already wrote; nothing is recomputed, so it is instant on any
size and works on a release folder copied elsewhere.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from etl.core.stage import outputs_intact
from etl.release.card import format_reasons
from etl.stages import STAGES


def print_summary(path: Path) -> None:
    """Print the summary of `path`: a release folder (stats.json) or a dataset root (work/records/*.json)."""
    path = Path(path)
    if (path / "stats.json").is_file():
        print(release_summary(path))
    elif any((path / "work" / "records").glob("*.json")):
        print(dataset_summary(path))
    else:
        raise FileNotFoundError(f"{path}: neither a release folder (stats.json) nor a dataset root "
                                f"(work/records/*.json)")


def dataset_summary(root: Path) -> str:
    records = {}
    for p in (root / "work" / "records").glob("*.json"):
        try:
            records[p.stem] = json.loads(p.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            records[p.stem] = None
    lines = [f"dataset {root}", "", _stage_table(root, records), ""]
    lines += _headlines({name: rec.get("stats", {}) for name, rec in records.items() if rec})
    releases = sorted(p.name for p in (root / "releases").glob("*") if p.is_dir() and not p.name.startswith("."))
    if releases:
        lines.append(f"releases: {', '.join(releases)} (in {root / 'releases'})")
    return "\n".join(lines)


def _stage_table(root: Path, records: dict[str, Any]) -> str:
    rows = [("stage", "status", "seconds", "input", "kept", "rejected", "filtered")]
    reasons: list[str] = []
    for name in [*STAGES, *sorted(set(records) - set(STAGES))]:
        rec = records.get(name, "absent")
        if rec == "absent":
            rows.append((name, "not run", "", "", "", "", ""))
            continue
        if rec is None:
            rows.append((name, "unreadable record", "", "", "", "", ""))
            continue
        c = rec.get("counts", {})
        status = "done" if outputs_intact(root, rec) else "done, outputs changed since"
        rows.append((name, status, f"{rec.get('duration_s', 0):.1f}", str(c.get("input", "")),
                     str(c.get("kept", "")), _total(c.get("rejected")), _total(c.get("filtered"))))
        reasons += _reason_lines(name, c)
    return _columns(rows, numeric=(2, 3, 4, 5, 6)) + _reasons_block(reasons)


def _total(reasons: dict[str, int] | None) -> str:
    """The count in a table cell; the reasons go below the table (one long cell would widen the whole column)."""
    return str(sum(reasons.values())) if reasons else "0"


def _reason_lines(stage: str, counts: dict[str, Any]) -> list[str]:
    return [f"  {stage} {kind}: {format_reasons(counts[kind])}" for kind in ("rejected", "filtered")
            if counts.get(kind)]


def _reasons_block(lines: list[str]) -> str:
    return "\n\nby reason:\n" + "\n".join(lines) if lines else ""


def _headlines(stats: dict[str, dict[str, Any]]) -> list[str]:
    lines = []
    if "release" in stats:
        lines.append(f"release: {stats['release'].get('release_dir')}")
    if stats.get("images", {}).get("status_counts"):
        s = stats["images"]
        lines.append(f"images: success rate {100 * s.get('success_rate', 0):.1f}%, status {s.get('status_counts')}")
    if "shards" in stats:
        s = stats["shards"]
        per_split = ", ".join(f"{k}: {v['shards']} shards / {v['samples']} samples"
                              for k, v in s.get("splits", {}).items())
        lines.append(f"shards: {per_split}; {s.get('bytes', 0) / 1e6:.1f} MB")
        lines += _ordering_lines(s.get("ordering", {}))
    return lines


def _ordering_lines(ordering: dict[str, Any]) -> list[str]:
    out = []
    for batch, entry in ordering.items():
        if not isinstance(entry, dict) or "written" not in entry:
            continue
        w, r = entry["written"]["no_shuffle"], entry["random"]["no_shuffle"]
        out.append(f"  batch {batch}: samples with an in-batch neighbour {100 * w['frac_with_neighbor']:.1f}% "
                   f"(random {100 * r['frac_with_neighbor']:.1f}%), labels per batch {w['labels_per_batch']}")
    return out


def release_summary(folder: Path) -> str:
    stats = json.loads((folder / "stats.json").read_text(encoding="utf-8"))
    manifest_path = folder / "manifest.json"
    manifest = json.loads(manifest_path.read_text(encoding="utf-8")) if manifest_path.is_file() else {}
    files = manifest.get("files", {})
    degree = stats.get("degree", {})
    lines = [
        f"release {manifest.get('name', stats.get('name'))} {manifest.get('version', stats.get('version'))} "
        f"({folder})",
        f"created {manifest.get('created_at', '?')}; source {stats.get('source')}, category {stats.get('category')}; "
        f"{len(files)} files, {sum(f['bytes'] for f in files.values()) / 1e6:.1f} MB",
        "",
        f"nodes {stats.get('nodes')}; edges {stats.get('edges', {}).get('total')} "
        f"{stats.get('edges', {}).get('by_kind', {})}",
        f"degree mean {degree.get('mean')}, median {degree.get('median')}, max {degree.get('max')}, "
        f"isolated {degree.get('isolated')}",
        f"images: success rate {100 * stats.get('images', {}).get('success_rate', 0):.1f}%, "
        f"status {stats.get('images', {}).get('status_counts')}",
        f"splits: {stats.get('splits')}",
        "shards: " + ", ".join(f"{k}: {v['shards']} shards / {v['samples']} samples"
                               for k, v in stats.get("shards", {}).items()),
        f"classes: {stats.get('classes', {}).get('n_classes')} (level {stats.get('classes', {}).get('level')}), "
        f"unlabeled {stats.get('classes', {}).get('unlabeled')}",
        f"reviews: {stats.get('reviews', {}).get('rows')} rows for "
        f"{stats.get('reviews', {}).get('products_with_reviews')} products",
        "",
    ]
    rows = [("stage", "seconds", "input", "kept", "rejected", "filtered")]
    reasons: list[str] = []
    for name, rec in stats.get("stages", {}).items():
        c = rec.get("counts") or {}
        rows.append((name, f"{rec.get('duration_s') or 0:.1f}", str(c.get("input", "")), str(c.get("kept", "")),
                     _total(c.get("rejected")), _total(c.get("filtered"))))
        reasons += _reason_lines(name, c)
    lines.append(_columns(rows, numeric=(1, 2, 3, 4, 5)) + _reasons_block(reasons))
    return "\n".join(lines)


def _columns(rows: list[tuple[str, ...]], numeric: tuple[int, ...] = ()) -> str:
    """Columns as wide as their longest cell, two spaces apart; `numeric` columns right-aligned."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.rjust(w) if i in numeric else cell.ljust(w)
                               for i, (cell, w) in enumerate(zip(row, widths))).rstrip() for row in rows)
