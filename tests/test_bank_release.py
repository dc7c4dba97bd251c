"""Embedding banks attached to an ETL-built release (`REL/embeddings/NAME/`): `slip-etl validate` checks them
against their bank.json and the release's nodes (and refuses a bank of another release, naming it), `publish`
uploads them, and the published card lists them. The release has nodes without images: their image rows are
masked, their text rows exist."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from etl.harness import run
from etl.release.publish import publish_release
from etl.release.validate import validate_release
from helpers.training import MICRO_CONFIG
from helpers.upstream import make_upstream
from schemas import bank as contract
from trainer.encode import EncodeConfig, encode_bank, node_texts
from trainer.release import Release
from trainer.synthetic import make_synthetic_release

ROOT = Path(__file__).resolve().parents[1]


def encode(release: Path, micro: Path, out: Path, **overrides) -> dict:
    values = dict(release=str(release), image_encoder=f"open_clip:{micro}", text_encoder=str(micro), out=str(out),
                  batch_size=16, chunk_size=64, progress=False)
    values.update(overrides)
    return encode_bank(EncodeConfig(**values))


@pytest.fixture(scope="module")
def built(tmp_path_factory, one_torch_thread) -> dict[str, Path]:
    """An ETL release and two banks encoded outside it: one of it (reviews as text), one of another release."""
    tmp = tmp_path_factory.mktemp("bank_release")
    cfg, opts = make_upstream(tmp)
    release = opts.dataset_root / run(cfg, opts, "release")["release"]["stats"]["release_dir"]
    micro = tmp / "micro.json"
    micro.write_text(json.dumps(MICRO_CONFIG))
    encode(release, micro, tmp / "ours", text_field="reviews")
    other = make_synthetic_release(tmp / "synthetic", n_nodes=60, shard_size=30, image_size=32)
    encode(other, micro, tmp / "theirs")
    return {"release": release, "ours": tmp / "ours", "theirs": tmp / "theirs"}


@pytest.fixture()
def release(built, tmp_path) -> Path:
    copy = tmp_path / "release"
    shutil.copytree(built["release"], copy)
    return copy


def attach(release: Path, bank: Path, name: str) -> Path:
    target = release / contract.EMBEDDINGS / name
    shutil.copytree(bank, target)
    return target


def files_of(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in folder.rglob("*") if p.is_file()}


def test_attached_bank_validates_and_masks_nodes_without_images(built, release):
    bank = attach(release, built["ours"], "micro")
    assert validate_release(release) == []
    nodes = pq.read_table(release / "nodes.parquet", columns=["node_id", "image_status"]).sort_by("node_id")
    has_image = np.asarray(nodes.column("image_status").to_pylist()) == "ok"
    assert 0 < has_image.sum() < len(has_image), "the release must have nodes without images"
    mask = np.load(bank / "image_mask.npy")
    image, text = np.load(bank / "image.npy"), np.load(bank / "text.npy")
    assert np.load(bank / "node_id.npy").tolist() == nodes.column("node_id").to_pylist()
    assert mask.tolist() == has_image.tolist()
    assert not image[~mask].any() and (np.abs(image[mask]).sum(axis=1) > 0).all()
    assert (np.abs(text).sum(axis=1) > 0).all(), "every node has a text embedding"
    manifest = json.loads((bank / contract.MANIFEST).read_text())
    assert manifest["n_images"] == int(has_image.sum()) and manifest["text_field"] == "reviews"
    assert manifest["created_with"]["notes"]["reviews_from_title"] > 0  # nodes without reviews: their title


def test_bank_of_another_release_is_refused_by_validate(built, release):
    attach(release, built["theirs"], "other")
    problems = validate_release(release)
    assert any(p.startswith("embeddings/other: node ids do not match") for p in problems), problems
    done = subprocess.run([sys.executable, "-m", "etl.cli", "validate", str(release)], capture_output=True,
                          text=True, cwd=ROOT, env={**os.environ}, timeout=120)
    assert done.returncode == 1 and "embeddings/other: node ids do not match" in done.stdout


def test_changed_or_extra_bank_files_are_reported(built, release):
    bank = attach(release, built["ours"], "micro")
    data = bytearray((bank / "text.npy").read_bytes())
    data[-1] ^= 0x01
    (bank / "text.npy").write_bytes(bytes(data))
    (bank / "notes.txt").write_text("hand-written")
    (release / contract.EMBEDDINGS / "loose.npy").write_bytes(b"x")
    problems = validate_release(release)
    assert "embeddings/micro: text.npy: sha256 mismatch with bank.json (the file changed after encoding)" in problems
    assert any(p.startswith("embeddings/micro: notes.txt: not part of a bank") for p in problems), problems
    assert "embeddings/loose.npy: not listed in the manifest" in problems


def test_publish_uploads_the_bank_and_the_card_lists_it(built, release, tmp_path):
    attach(release, built["ours"], "micro")
    dest = tmp_path / "published"
    lines = list(publish_release(release, str(dest), dry_run=False))
    assert lines[-2].startswith("uploaded manifest.json"), "the manifest still goes last"
    assert files_of(dest) == files_of(release)
    assert {f"embeddings/micro/{name}" for name in [contract.MANIFEST, *contract.ARRAYS]} <= set(files_of(dest))
    card = (dest / "README.md").read_text()
    assert "## Embedding banks" in card and "`embeddings/micro/`" in card and "reviews" in card
    assert validate_release(dest) == [] and validate_release(release) == []  # the card was re-signed
    assert card.index("## Embedding banks") < card.index("## License")
    again = list(publish_release(release, str(dest), dry_run=False))  # listing twice changes nothing
    assert again[-1] == lines[-1] and (dest / "README.md").read_text() == card


def test_text_fields(built):
    release = Release(built["release"])
    ids = np.sort(release.nodes()["node_id"])
    has_image = dict(zip(release.nodes()["node_id"].tolist(), release.nodes()["has_image"].tolist()))

    def texts(field: str) -> tuple[list[str], dict]:
        cfg = EncodeConfig(release=str(built["release"]), image_encoder="x", text_encoder="x", out="x",
                           text_field=field)
        return node_texts(release, cfg, ids)

    titles, _ = texts("title")
    with_features, _ = texts("title+features")
    i = next(k for k, node in enumerate(ids) if node % 5 == 2)  # helpers.upstream: node i has i % 5 features
    assert with_features[i] == f"{titles[i]}. feature {ids[i]}.0; feature {ids[i]}.1"
    bare = next(k for k, node in enumerate(ids) if node % 5 == 0)  # no features: the title alone
    assert with_features[bare] == titles[bare]
    captions, notes = texts("caption")
    assert notes["caption_from_title"] == sum(not has_image[int(n)] for n in ids)
    assert all(c == t for c, t, n in zip(captions, titles, ids) if not has_image[int(n)])
    reviews, notes = texts("reviews")
    j = next(k for k, node in enumerate(ids) if node % 3 == 0 and node % 2 == 1)  # two reviews, by rank
    assert reviews[j] == f"Works well with product {ids[j]}. | Works well with product {ids[j]}."
    assert notes["reviews_from_title"] == sum(int(n) % 3 != 0 for n in ids)
