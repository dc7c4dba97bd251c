"""`slip-train encode`: run frozen encoders once over every node of a release and store an embedding bank.

Every node gets a text embedding (from the node table: `--text-field`); every node with a shard sample gets an
image embedding (from the release's shards, all splits), the others a zero row and `image_mask` false. The work is
done in chunks of `--chunk-size` rows, each written atomically under `OUT/.partial/` as it finishes: a killed
encode started again with the same settings skips the finished chunks and ends with the same bytes as one that
was never stopped (chunk and batch boundaries are fixed by the settings, and every chunk is computed alone). The
settings are recorded in `.partial/state.json`, so a resume with other settings is refused instead of mixing two
encodings. The finished bank is assembled from the chunks, bank.json written last, `.partial/` removed.

The config is pydantic only at import (the CLI builds it before torch loads); torch and the encoders come with
`encode_bank`.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import sys
from collections import Counter
from pathlib import Path
from typing import Any, Iterator, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from slipio.inputs import InputError, read_mapping

PARTIAL = ".partial"
STATE = "state.json"
TextField = Literal["title", "caption", "title+features", "reviews"]


class EncodeConfig(BaseModel):
    """Every choice of one encode; recorded in the bank (created_with) and fingerprinted for resume."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    release: str = Field(..., description="Release folder (or URL) to encode: nodes.parquet + shards/ (all splits).",
                         json_schema_extra={"panel": "Input"})
    image_encoder: str = Field(
        ..., description="Image encoder: open_clip:MODEL, run:RUN_DIR (a slip-train run), timm:MODEL, or a bare "
        "name/path (see trainer/encoders.py).", json_schema_extra={"panel": "Encoders"})
    image_pretrained: Optional[str] = Field(
        None, description="Image weights: an open_clip/timm pretrained tag or a local file; none = random init "
        "seeded by --seed (only useful for tests and plumbing).", json_schema_extra={"panel": "Encoders"})
    text_encoder: str = Field(
        ..., description="Text encoder: open_clip:MODEL, run:RUN_DIR, st:NAME_OR_PATH (sentence-transformers), or "
        "a bare name/path.", json_schema_extra={"panel": "Encoders"})
    text_pretrained: Optional[str] = Field(
        None, description="open_clip text weights (tag or file); none = random init. Not for st: or run: encoders.",
        json_schema_extra={"panel": "Encoders"})
    text_field: TextField = Field(
        "title", description="Text per node: title; caption (the shard's .txt, the title for nodes without a "
        "sample); title+features ('title. f1; f2; ...'); reviews (the node's first --max-reviews review texts by "
        "rank, the title for nodes without reviews). Title by default: every node has one.",
        json_schema_extra={"panel": "Encoders"})
    max_reviews: int = Field(3, ge=1, description="Reviews joined per node with --text-field reviews (by rank; "
                             "3 keeps the text within a MiniLM/CLIP context).", json_schema_extra={"panel": "Encoders"})
    normalize: bool = Field(
        True, description="L2-normalise every embedding before the fp16 cast: the cosine form CLIP-PING and SAIL "
        "read, and unit rows lose least to fp16.", json_schema_extra={"panel": "Encoders"})
    batch_size: int = Field(64, ge=1, description="Items per encoder call (larger is faster on a GPU until its "
                            "memory runs out).", json_schema_extra={"panel": "Run"})
    chunk_size: int = Field(
        4096, ge=1, description="Rows per resumable chunk: a killed encode redoes at most one chunk; smaller "
        "chunks cost one small file each.", json_schema_extra={"panel": "Run"})
    device: str = Field("cpu", description="torch device for the encoders (cpu, cuda, cuda:1, mps).",
                        json_schema_extra={"panel": "Run"})
    seed: int = Field(0, description="Seed of random-init encoders (no --*-pretrained): the same bank each time.",
                      json_schema_extra={"panel": "Run"})
    progress: bool = Field(True, description="Progress with items/s on stderr (a bar on a terminal, a line every "
                           "SLIP_PROGRESS_INTERVAL_S seconds in a log).", json_schema_extra={"panel": "Run"})
    out: str = Field(..., description="Bank folder to write (REL/embeddings/NAME/ attaches it to the release).",
                     json_schema_extra={"panel": "Output"})

    def fingerprint(self) -> dict[str, Any]:
        """The settings that decide the bank's bytes (not where it goes, whether a bar is drawn, or the device
        name's spelling beyond its type)."""
        return self.model_dump(exclude={"out", "progress"})


def build_encode_config(file: Optional[Path] = None, **given: Any) -> EncodeConfig:
    """EncodeConfig from an optional config file with the flags given on top; InputError names the bad flag."""
    values: dict[str, Any] = read_mapping(file) if file is not None else {}
    values.update(given)
    try:
        return EncodeConfig(**values)
    except ValidationError as exc:
        problems = "; ".join(f"--{str(err['loc'][0]).replace('_', '-') if err['loc'] else 'config'}: {err['msg']}"
                             for err in exc.errors())
        raise InputError(f"invalid encode settings: {problems}") from None


# ---------------------------------------------------------------------------------------------------- the job

def encode_bank(cfg: EncodeConfig) -> dict[str, Any]:
    """Encode (or finish encoding) the bank `cfg` describes; returns a summary (rows, dims, chunks resumed)."""
    import numpy as np

    from trainer.bank import BankError, release_nodes_sha256
    from trainer.release import Release

    release = Release(cfg.release)
    out, partial = Path(cfg.out), Path(cfg.out) / PARTIAL
    nodes = release.nodes()
    order = np.argsort(nodes["node_id"], kind="stable")
    node_ids = nodes["node_id"][order].astype(np.int64)
    if len(np.unique(node_ids)) != len(node_ids):
        raise BankError(f"release {release}: nodes.parquet has duplicate node ids")
    identity = {"release_name": str(release.manifest.get("name")),
                "release_version": str(release.manifest.get("version")),
                "release_nodes_sha256": release_nodes_sha256(release)}
    state = {"settings": cfg.fingerprint(), **identity}
    done = _finished(out, state)
    if done is not None:
        return done
    _claim(out, partial, state, create=False)  # a bad --out is refused before any model loads
    from slipio.progress import progress_bar
    from trainer.encoders import build_encoders

    image_enc, text_enc = build_encoders(cfg.image_encoder, cfg.image_pretrained, cfg.text_encoder,
                                         cfg.text_pretrained, cfg.device, cfg.seed)
    _claim(out, partial, state)  # after the encoders load: a bad spec leaves no unfinished encode behind
    n_images_total = sum(release.sizes().values())
    texts, text_notes = node_texts(release, cfg, node_ids)
    chunk = cfg.chunk_size
    text_chunks = range(0, len(node_ids), chunk)
    resumed = Counter()
    bar = progress_bar(total=len(node_ids) + n_images_total, unit="item", desc="encode", disable=not cfg.progress,
                       file=sys.stderr, dynamic_ncols=True, smoothing=0.1)  # a tqdm bar, or lines in a log
    with bar:
        for k, start in enumerate(text_chunks):
            path = partial / f"text-{k:06d}.npy"
            rows = texts[start:start + chunk]
            if path.is_file():
                resumed["text"] += 1
            else:
                _save(path, _encode_texts(text_enc, rows, cfg))
            bar.update(len(rows))
        image_notes = _encode_images(release, image_enc, cfg, partial, bar, resumed)
    bank = _assemble(partial, node_ids, len(text_chunks), image_enc.dim, text_enc.dim)
    fields = {**identity, "n_nodes": int(len(node_ids)), "n_images": int(bank["image_mask.npy"].sum()),
              "image_encoder": cfg.image_encoder, "image_pretrained": cfg.image_pretrained,
              "image_dim": int(image_enc.dim), "text_encoder": cfg.text_encoder,
              "text_pretrained": cfg.text_pretrained, "text_field": cfg.text_field, "text_dim": int(text_enc.dim),
              "dtype": "float16", "normalized": cfg.normalize,
              "created_with": {"settings": cfg.fingerprint(), "fingerprint": _digest(state), "notes":
                               {**text_notes, **image_notes}, "versions": _versions()}}
    from trainer.bank import write_bank

    write_bank(out, bank, fields)
    shutil.rmtree(partial)
    return _summary(out, fields, resumed)


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def _finished(out: Path, state: dict[str, Any]) -> Optional[dict[str, Any]]:
    """The summary of a bank already finished at `out` with these settings; BankError if it has others."""
    from schemas.bank import MANIFEST, check_bank, read_manifest
    from trainer.bank import BankError

    if not (out / MANIFEST).exists():
        return None
    manifest, problems = read_manifest(out)
    if manifest is None:
        raise BankError(f"--out {out}: holds a damaged bank ({'; '.join(problems)}); remove it or give another --out")
    if manifest.get("created_with", {}).get("fingerprint") != _digest(state):
        raise BankError(f"--out {out}: already holds a bank encoded with other settings or from another release; "
                        f"give another --out (or remove it)")
    problems = check_bank(out, verify_hashes=False)  # sizes only: a manifest whose arrays are gone is not done
    if problems:
        raise BankError(f"--out {out}: holds a damaged bank ({'; '.join(problems)}); remove it or give another --out")
    return _summary(out, manifest, Counter(), already=True)


def _claim(out: Path, partial: Path, state: dict[str, Any], create: bool = True) -> None:
    """Check `out` can take this encode (a new or empty folder, or the `.partial/` a killed run with the same
    settings left); then, with `create`, start `.partial/`."""
    from slipio import atomic
    from trainer.bank import BankError

    if out.exists() and not out.is_dir():
        raise BankError(f"--out {out}: is a file; give a folder")
    state_path = partial / STATE
    if state_path.is_file():
        try:
            previous = json.loads(state_path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            previous = None
        if previous != json.loads(json.dumps(state, default=str)):
            changed = _changed(previous, state)
            raise BankError(f"--out {out}: holds an unfinished encode with other settings ({changed}); resume with "
                            f"the same flags, or remove {partial} to start over")
        if create:
            atomic.remove_stale_temps(partial)
        return
    if out.is_dir() and any(p.name != PARTIAL for p in out.iterdir()):
        raise BankError(f"--out {out}: is a folder with other files; give a new or empty folder")
    if not create:
        return
    partial.mkdir(parents=True, exist_ok=True)
    atomic.write_json(state_path, state, sort_keys=True)


def _changed(previous: Any, state: dict[str, Any]) -> str:
    if not isinstance(previous, dict):
        return "its state.json is unreadable"
    old, new = previous.get("settings") or {}, state["settings"]
    keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    keys += sorted(k for k in state if k != "settings" and previous.get(k) != state[k])
    return ", ".join(f"{k}: {old.get(k, previous.get(k))!r} -> {new.get(k, state.get(k))!r}" for k in keys) or "?"


def _save(path: Path, array: Any) -> None:
    from trainer.bank import save_npy

    save_npy(path, array)


def _encode_texts(encoder: Any, texts: list[str], cfg: EncodeConfig) -> Any:
    import numpy as np
    import torch

    from trainer.encoders import l2_normalise

    parts = []
    for start in range(0, len(texts), cfg.batch_size):
        rows = encoder.encode(texts[start:start + cfg.batch_size])
        parts.append(l2_normalise(rows) if cfg.normalize else rows)
    out = torch.cat(parts) if parts else torch.zeros(0, encoder.dim)
    return _fp16(out.numpy(), np)


def _fp16(rows: Any, np: Any) -> Any:
    from trainer.bank import BankError

    if not np.isfinite(rows).all():
        raise BankError("the encoder produced non-finite embeddings (inf/nan); check the weights")
    half = rows.astype(np.float16)
    if not np.isfinite(half).all():
        raise BankError("embeddings overflow float16 (|x| > 65504); encode with --normalize")
    return half


def _raw_samples(release: Any) -> Iterator[dict[str, Any]]:
    from trainer.data import tar_samples

    skipped: Counter = Counter()
    yield from tar_samples(release.all_shards(), skipped)
    if skipped:
        from trainer.bank import BankError

        raise BankError(f"release {release}: unreadable shards ({dict(skipped)}); run slip-etl validate on it")


def _encode_images(release: Any, encoder: Any, cfg: EncodeConfig, partial: Path, bar: Any,
                   resumed: Counter) -> dict[str, int]:
    """Image chunks: consecutive runs of `chunk_size` shard samples (train, val, test shards in name order)."""
    import numpy as np
    import torch

    from trainer.data import decode_samples
    from trainer.encoders import l2_normalise

    skipped: Counter = Counter()
    samples = _raw_samples(release)
    k = 0
    while True:
        batch = [s for _, s in zip(range(cfg.chunk_size), samples)]
        if not batch:
            break
        path = partial / f"image-{k:06d}.npz"
        if path.is_file():
            resumed["image"] += 1
        else:
            decoded = list(decode_samples(batch, skipped))
            ids, parts = [], []
            for start in range(0, len(decoded), cfg.batch_size):
                group = decoded[start:start + cfg.batch_size]
                rows = encoder.encode([s["image"] for s in group])
                parts.append(l2_normalise(rows) if cfg.normalize else rows)
                ids += [s["node_id"] for s in group]
            emb = torch.cat(parts).numpy() if parts else np.zeros((0, encoder.dim), np.float32)
            _save_npz(path, np.asarray(ids, np.int64), _fp16(emb, np))
        bar.update(len(batch))
        k += 1
    return {f"image_{reason}": n for reason, n in sorted(skipped.items())}


def _save_npz(path: Path, ids: Any, emb: Any) -> None:
    import numpy as np

    from slipio import atomic

    with atomic.atomic_open(path, "wb") as fh:
        np.savez(fh, node_id=ids, image=emb)


def _assemble(partial: Path, node_ids: Any, n_text_chunks: int, image_dim: int, text_dim: int) -> dict[str, Any]:
    import numpy as np

    from trainer.bank import BankError

    text = np.concatenate([np.load(partial / f"text-{k:06d}.npy") for k in range(n_text_chunks)]) \
        if n_text_chunks else np.zeros((0, text_dim), np.float16)
    image = np.zeros((len(node_ids), image_dim), np.float16)
    mask = np.zeros(len(node_ids), bool)
    for path in sorted(partial.glob("image-*.npz")):
        with np.load(path) as part:
            ids, emb = part["node_id"], part["image"]
        rows = np.searchsorted(node_ids, ids)
        rows = np.minimum(rows, max(len(node_ids) - 1, 0))
        unknown = ids[node_ids[rows] != ids] if len(node_ids) else ids
        if len(unknown):
            raise BankError(f"shard samples of node ids that are not nodes: {unknown[:5].tolist()}; run slip-etl "
                            f"validate on the release")
        if mask[rows].any():
            raise BankError(f"node ids with two shard samples: {ids[mask[rows]][:5].tolist()}")
        image[rows], mask[rows] = emb, True
    return {"node_id.npy": node_ids, "text.npy": text, "image.npy": image, "image_mask.npy": mask}


def _summary(out: Path, fields: dict[str, Any], resumed: Counter, already: bool = False) -> dict[str, Any]:
    return {"bank": str(out), "n_nodes": fields["n_nodes"], "n_images": fields["n_images"],
            "image_dim": fields["image_dim"], "text_dim": fields["text_dim"], "text_field": fields["text_field"],
            "resumed_chunks": dict(resumed), "already_done": already}


def _versions() -> dict[str, str]:
    """Library versions that decide the floats (a bank re-encoded with others may differ in the last bits)."""
    import importlib.metadata as md

    found = {}
    for name in ("torch", "open_clip_torch", "timm", "sentence-transformers", "numpy"):
        try:
            found[name] = md.version(name)
        except md.PackageNotFoundError:
            continue
    return found


# ---------------------------------------------------------------------------------------------------- texts

def node_texts(release: Any, cfg: EncodeConfig, node_ids: Any) -> tuple[list[str], dict[str, int]]:
    """The text of every node in `node_ids` order for `cfg.text_field`, and how many fell back to the title."""
    import numpy as np

    from trainer.release import NODES

    table = release.table(NODES, ["node_id", "title", "features"])
    ids = table.column("node_id").to_numpy(zero_copy_only=False)
    where = {int(i): r for r, i in enumerate(ids)}
    titles = table.column("title").to_pylist()
    title = [titles[where[int(i)]] or "" for i in node_ids]
    notes: dict[str, int] = {}
    if cfg.text_field == "title":
        return title, notes
    if cfg.text_field == "title+features":
        feats = table.column("features").to_pylist()
        out = []
        for t, i in zip(title, node_ids):
            f = [x for x in (feats[where[int(i)]] or []) if x]
            out.append(f"{t}. {'; '.join(f)}" if f else t)
        return out, notes
    if cfg.text_field == "caption":
        captions: dict[int, str] = {}
        for sample in _raw_samples(release):
            try:
                node = int(json.loads(sample["json"])["node_id"])
                captions[node] = sample["txt"].decode("utf-8").strip()
            except (KeyError, ValueError, TypeError, UnicodeDecodeError):
                continue
        out = [captions.get(int(i)) or t for t, i in zip(title, node_ids)]
        notes["caption_from_title"] = int(sum(int(i) not in captions or not captions[int(i)] for i in node_ids))
        return out, notes
    reviews = release.table("reviews.parquet", ["node_id", "rank", "text"])
    by_node: dict[int, list[tuple[int, str]]] = {}
    for node, rank, text in zip(reviews.column("node_id").to_pylist(), reviews.column("rank").to_pylist(),
                                reviews.column("text").to_pylist()):
        if text:
            by_node.setdefault(int(node), []).append((int(rank), text))
    out = []
    for t, i in zip(title, np.asarray(node_ids).tolist()):
        picked = [text for _, text in sorted(by_node.get(i, []))[:cfg.max_reviews]]
        out.append(" | ".join(picked) if picked else t)
    notes["reviews_from_title"] = int(sum(i not in by_node for i in np.asarray(node_ids).tolist()))
    return out, notes
