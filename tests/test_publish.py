"""publish_release: local folder and fsspec memory:// round trips (files and hashes equal), dry runs that write
nothing, refusal of invalid releases and of destinations holding another release, and the hf:// argument handling
(no network here: the Hub itself is never contacted)."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import fsspec
import pytest

from etl.harness import run
from etl.release.publish import (
    Destination,
    PublishError,
    parse_destination,
    publish_release,
)
from etl.release.validate import validate_release
from helpers.upstream import make_upstream


@pytest.fixture(scope="module")
def release(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("publish")
    cfg, opts = make_upstream(tmp)
    return opts.dataset_root / run(cfg, opts, "release")["release"]["stats"]["release_dir"]  # relative to the root


def release_files(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in folder.rglob("*") if p.is_file()}


def test_local_folder_round_trip(release, tmp_path):
    dest = tmp_path / "published"
    lines = list(publish_release(release, str(dest), dry_run=False))
    assert release_files(dest) == release_files(release)
    assert validate_release(dest) == []
    assert lines[-1].startswith(f"published {len(release_files(release))} files")
    assert lines[-2].startswith("uploaded manifest.json"), "the manifest goes last"
    again = list(publish_release(release, str(dest), dry_run=False))  # same release again: idempotent
    assert again[-1] == lines[-1]


def test_fsspec_memory_round_trip(release):
    url = f"memory://slip-{uuid.uuid4().hex}/electronics"
    list(publish_release(release, url, dry_run=False))
    fs, root = fsspec.core.url_to_fs(url)
    expected = release_files(release)
    found = {p[len(root) + 1:]: hashlib.sha256(fs.cat_file(p)).hexdigest() for p in fs.find(root)}
    assert found == expected


def test_dry_run_lists_everything_and_writes_nothing(release, tmp_path):
    dest = tmp_path / "never"
    lines = list(publish_release(release, str(dest), dry_run=True))
    manifest = json.loads((release / "manifest.json").read_text())
    for rel, meta in manifest["files"].items():
        assert f"would upload {rel} ({meta['bytes']} bytes) -> {dest}/{rel}" in lines
    assert any(line.startswith("would upload manifest.json") for line in lines)
    assert "nothing was uploaded" in lines[-1]
    assert not dest.exists()
    url = f"memory://slip-{uuid.uuid4().hex}"
    list(publish_release(release, url, dry_run=True))
    assert not fsspec.filesystem("memory").exists(url[len("memory://"):])


def test_invalid_release_is_refused(release, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(release, broken)
    next((broken / "shards").glob("*.tar")).unlink()
    dest = tmp_path / "dest"
    with pytest.raises(PublishError, match="is not a valid release") as err:
        publish_release(broken, str(dest), dry_run=False)
    assert "listed in the manifest but missing" in str(err.value)
    with pytest.raises(PublishError):
        publish_release(broken, str(dest), dry_run=True)
    assert not dest.exists()


def test_destination_with_another_release_is_refused(release, tmp_path):
    dest = tmp_path / "taken"
    dest.mkdir()
    (dest / "manifest.json").write_text(json.dumps({"name": "other", "version": "9.9.9", "files": {}}))
    with pytest.raises(PublishError, match=r"already holds a different release \(other 9.9.9\)"):
        list(publish_release(release, str(dest), dry_run=False))
    assert sorted(p.name for p in dest.iterdir()) == ["manifest.json"]


def test_destination_parsing():
    assert parse_destination("hf://datasets/my-org/slip.electronics") == Destination("hf", "my-org/slip.electronics")
    assert parse_destination("hf://datasets/org/name/") == Destination("hf", "org/name")
    for bad in ("hf://models/org/name", "hf://datasets/org", "hf://datasets/org/name/extra", "hf://org/name"):
        with pytest.raises(PublishError, match="hf://datasets/ORG/NAME"):
            parse_destination(bad)
    assert parse_destination("memory://x/y") == Destination("fsspec", "memory://x/y")
    with pytest.raises(PublishError, match="unknown fsspec protocol"):
        parse_destination("nosuchproto://x")
    assert parse_destination("relative/dir").kind == "local"


def test_hf_without_token_is_a_clear_error(release, monkeypatch):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    with pytest.raises(PublishError, match="HF_TOKEN is not set"):
        publish_release(release, "hf://datasets/org/name", dry_run=False)


def test_hf_dry_run_lists_files_and_never_shows_the_token(release, monkeypatch):
    secret = "hf_" + "x" * 30
    monkeypatch.setenv("HF_TOKEN", secret)
    lines = list(publish_release(release, "hf://datasets/org/name", dry_run=True))
    assert any(line.startswith("would upload nodes.parquet") for line in lines)
    assert any(line.endswith("-> https://huggingface.co/datasets/org/name/shards/sizes.json") for line in lines)
    assert any("HF_TOKEN is set" in line for line in lines)
    assert not any(secret in line for line in lines)
    monkeypatch.delenv("HF_TOKEN")
    lines = list(publish_release(release, "hf://datasets/org/name", dry_run=True))
    assert any("HF_TOKEN is NOT set" in line for line in lines)


class RefusingHub(BaseHTTPRequestHandler):
    """A loopback stand-in for the Hub API that refuses every request with 403 and records the headers."""

    seen: list[dict[str, str]] = []

    def _refuse(self) -> None:
        RefusingHub.seen.append({k.lower(): v for k, v in self.headers.items()})
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        body = b'{"error": "You do not have write access to org/name"}'
        self.send_response(403)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_HEAD = _refuse

    def log_message(self, *args: object) -> None:
        pass


def test_hub_refusal_becomes_a_clear_error_without_the_token(release, tmp_path):
    """The real huggingface_hub client, pointed (HF_ENDPOINT) at a loopback server that refuses."""
    secret = "hf_" + "s3cr3t" * 6
    server = ThreadingHTTPServer(("127.0.0.1", 0), RefusingHub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        env = {**os.environ, "HF_TOKEN": secret, "HF_ENDPOINT": f"http://127.0.0.1:{server.server_port}",
               "HF_HUB_DISABLE_TELEMETRY": "1", "HF_HOME": str(tmp_path / "hf-home")}
        proc = subprocess.run([sys.executable, "-m", "etl.cli", "publish", str(release), "--to",
                               "hf://datasets/org/name"], capture_output=True, text=True, env=env, timeout=120,
                              cwd=Path(__file__).parent.parent)
    finally:
        server.shutdown()
        server.server_close()
    assert proc.returncode == 1
    assert "slip-etl: error: Hugging Face Hub (org/name)" in proc.stderr and "403" in proc.stderr, proc.stderr
    assert secret not in proc.stdout + proc.stderr
    assert RefusingHub.seen and RefusingHub.seen[0].get("authorization") == f"Bearer {secret}", \
        "the token comes from the environment"


def slip_etl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "etl.cli", *args], capture_output=True, text=True,
                          cwd=Path(__file__).parent.parent, env={**os.environ}, timeout=120)


def everything_under(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*"))


def test_manifest_paths_that_escape_are_refused_and_nothing_is_written(release, tmp_path):
    """'../secret.txt', an absolute host path and a listed symlink, each signed with its real hash: publish
    refuses the release and writes nothing, neither beside DEST (DEST/../secret.txt) nor inside it."""
    hostile = tmp_path / "hostile"
    shutil.copytree(release, hostile)
    secret = tmp_path / "secret.txt"
    secret.write_text("host secret")
    (hostile / "linked.bin").symlink_to(secret)
    manifest = json.loads((hostile / "manifest.json").read_text())
    for rel in ("../secret.txt", str(secret), "linked.bin"):
        manifest["files"][rel] = {"bytes": secret.stat().st_size,
                                  "sha256": hashlib.sha256(secret.read_bytes()).hexdigest()}
    (hostile / "manifest.json").write_text(json.dumps(manifest))
    published = tmp_path / "published"
    published.mkdir()
    before = release_files(hostile)
    for extra in ([], ["--dry-run"]):
        proc = slip_etl("publish", str(hostile), "--to", str(published / "dest"), *extra)
        assert proc.returncode == 1, proc.stderr
        assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, proc.stderr
        assert "is not a valid release" in proc.stderr
        for rel in ("../secret.txt", str(secret), "linked.bin"):
            assert f"lists {rel!r}, which is not a safe release path" in proc.stderr, proc.stderr
    assert everything_under(published) == []
    assert release_files(hostile) == before


@pytest.mark.parametrize("where", ["itself", "inside", "shards", "contains", "file", "file_on_the_way", "file_url"])
def test_destinations_that_overlap_the_release_or_are_files(release, tmp_path, where):
    """Each is refused as bad input (exit 2, one line, no traceback) before anything is written anywhere."""
    source = tmp_path / "data" / "releases" / release.name
    shutil.copytree(release, source)
    (tmp_path / "a-file").write_text("not a folder")
    dest, message = {
        "itself": (str(source), "is the release itself"),
        "inside": (str(source / "copy"), "lies inside the release"),
        "shards": (str(source / "shards"), "lies inside the release"),
        "contains": (str(tmp_path / "data"), "contains the release"),
        "file": (str(tmp_path / "a-file"), "is an existing file, not a folder"),
        "file_on_the_way": (str(tmp_path / "a-file" / "dest"), "has a file on its way"),
        "file_url": (f"file://{source / 'copy'}", "lies inside the release"),
    }[where]
    before = release_files(source)
    outside = everything_under(tmp_path)
    for extra in ([], ["--dry-run"]) if where == "inside" else ([],):
        proc = slip_etl("publish", str(source), "--to", dest, *extra)
        assert proc.returncode == 2, (proc.returncode, proc.stderr)
        assert proc.stderr.startswith(f"slip-etl: error: --to {dest}: {message}"), proc.stderr
        assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, proc.stderr
        assert proc.stdout == ""
    assert release_files(source) == before and validate_release(source) == []
    assert everything_under(tmp_path) == outside
