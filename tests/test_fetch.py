"""Stage `fetch` through the real framework against real loopback servers, folders and a killed subprocess."""
from __future__ import annotations

import hashlib
import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from etl.core.stage import StageError, record_path
from etl.harness import load_config, make_opts, run
from helpers.servers import (
    Cut,
    FaultServer,
    Redirect,
    Serve,
    Status,
    Trickle,
    closed_port_url,
    fail_then,
)

M = "amazon_2023/raw/meta_categories/meta_Electronics.jsonl.gz"
R = "amazon_2023/raw/review_categories/Electronics.jsonl.gz"
META = random.Random(1).randbytes(300_000)
REVIEWS = random.Random(2).randbytes(120_000)
LOCAL = ("127.0.0.1",)
FAST = ["fetch.retries=2", "fetch.backoff_base_s=0.01", "fetch.backoff_max_s=0.05"]


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def config(*extra: str):
    return load_config(overrides=FAST + list(extra))


def routes(meta=None, reviews=None) -> dict:
    return {"/" + M: meta or Serve(META), "/" + R: reviews or Serve(REVIEWS)}


def fetched(opts, rel: str) -> Path:
    return opts.work_dir / "fetch" / rel


def record(opts) -> dict:
    return json.loads(record_path(opts, "fetch").read_text())


def test_fetch_end_to_end_then_nothing_downloaded_again(tmp_path: Path) -> None:
    cfg = config()
    with FaultServer(routes(meta=Serve(META, etag='"m1"'))) as server:
        opts = make_opts(tmp_path, mirror=server.base_url, allow_hosts=LOCAL)
        rec = run(cfg, opts, "fetch")["fetch"]
        assert fetched(opts, M).read_bytes() == META and fetched(opts, R).read_bytes() == REVIEWS
        assert rec["counts"] == {"input": 2, "kept": 2, "rejected": {}, "filtered": {}}
        meta_out = rec["outputs"]["metadata"]
        assert meta_out == {"path": f"work/fetch/{M}", "bytes": len(META), "sha256": sha(META),
                            "mtime_ns": fetched(opts, M).stat().st_mtime_ns}
        assert rec["outputs"]["reviews"]["sha256"] == sha(REVIEWS)
        assert rec["provenance"]["raw"] == [
            {"name": "metadata", "url": server.url(M), "path": M, "bytes": len(META), "sha256": sha(META)},
            {"name": "reviews", "url": server.url(R), "path": R, "bytes": len(REVIEWS), "sha256": sha(REVIEWS)}]
        assert rec["stats"]["downloaded_bytes"] == len(META) + len(REVIEWS)
        leftovers = [p.name for p in fetched(opts, M).parent.iterdir() if p.name.endswith((".part", ".json"))]
        assert leftovers == []
        done = json.loads(fetched(opts, M).with_name(Path(M).name + ".done").read_text())
        assert (done["bytes"], done["sha256"]) == (len(META), sha(META))
        assert [r.headers["accept-encoding"] for r in server.requests] == ["identity", "identity"]

        server.clear_log()
        run(cfg, opts, "fetch")  # finished stage: skipped by the framework
        record_path(opts, "fetch").unlink()
        rec = run(cfg, opts, "fetch")["fetch"]  # the stage runs, but both files are complete (.done)
        assert server.requests == []
        assert rec["stats"]["reused"] == 2 and rec["stats"]["downloaded_bytes"] == 0
        assert rec["outputs"]["metadata"]["sha256"] == sha(META)


def test_killed_fetch_resumes_to_identical_bytes(tmp_path: Path) -> None:
    """SIGKILL `slip-etl fetch` mid-file; the rerun asks for the rest with Range and ends byte-identical."""
    big = random.Random(3).randbytes(800_000)
    cmd = [sys.executable, "-m", "etl.cli", "fetch", "--source", "amazon-2023", "--category", "electronics",
           "--allow-host", "127.0.0.1", "--out", str(tmp_path), "--no-progress"]
    for item in FAST:
        cmd += ["--set", item]
    stage_dir = tmp_path / "amazon-2023-electronics" / "work" / "fetch"
    part = stage_dir / (M + ".part")
    with FaultServer(routes(meta=Trickle(big, chunk=8192, delay_s=0.02, etag='"big-1"'))) as server:
        cmd += ["--mirror", server.base_url]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            deadline = time.monotonic() + 30
            while not (part.exists() and part.stat().st_size >= 64 * 1024):
                assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
                assert time.monotonic() < deadline, "the download never started"
                time.sleep(0.01)
            proc.send_signal(signal.SIGKILL)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.communicate(timeout=10)
        killed_at = part.stat().st_size
        assert 0 < killed_at < len(big)

        server.set_route("/" + M, Serve(big, etag='"big-1"'))
        server.clear_log()
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip().splitlines()[-1] == str(stage_dir)
        [resume] = server.hits("/" + M)
        assert (resume.range, resume.headers.get("if-range")) == (f"bytes={killed_at}-", '"big-1"')
        final = stage_dir / M
        assert sha(final.read_bytes()) == sha(big) and not part.exists()
        stats = json.loads((tmp_path / "amazon-2023-electronics/work/records/fetch.json").read_text())["stats"]
        assert stats["files"]["metadata"]["resumed_from"] == killed_at
        assert stats["files"]["metadata"]["downloaded_bytes"] == len(big) - killed_at


def test_dropped_and_truncated_connections_resume(tmp_path: Path) -> None:
    with FaultServer(routes(meta=[Cut(META, after=100_000), Cut(META, after=50_000), Serve(META)],
                            reviews=[Cut(REVIEWS, after=30_000, reset=False), Serve(REVIEWS)])) as server:
        opts = make_opts(tmp_path, mirror=server.base_url, allow_hosts=LOCAL)
        rec = run(config("fetch.retries=1"), opts, "fetch")["fetch"]
        assert [r.range for r in server.hits("/" + M)] == [None, "bytes=100000-", "bytes=150000-"]
        assert [r.range for r in server.hits("/" + R)] == [None, "bytes=30000-"]
    assert fetched(opts, M).read_bytes() == META and fetched(opts, R).read_bytes() == REVIEWS
    files = rec["stats"]["files"]
    assert files["metadata"]["attempts"] == 3 and files["metadata"]["downloaded_bytes"] == len(META)


def test_5xx_and_429_are_retried_honouring_retry_after(tmp_path: Path) -> None:
    cfg = config("fetch.backoff_max_s=5")
    with FaultServer(routes(meta=fail_then(2, Status(503), Serve(META)),
                            reviews=[Status(429, {"Retry-After": "1"}), Serve(REVIEWS)])) as server:
        opts = make_opts(tmp_path, mirror=server.base_url, allow_hosts=LOCAL)
        run(cfg, opts, "fetch")
        assert len(server.hits("/" + M)) == 3
        first, second = server.hits("/" + R)
        assert second.at - first.at >= 0.95
    assert fetched(opts, R).read_bytes() == REVIEWS

    with FaultServer(routes(meta=Status(503))) as server:
        opts = make_opts(tmp_path / "down", mirror=server.base_url, allow_hosts=LOCAL)
        with pytest.raises(StageError, match=r"cannot download .*meta_Electronics.*HTTP 503 \(after 3 attempts\)"):
            run(config(), opts, "fetch")


def _fail_midway(opts) -> None:
    """Run fetch against a server that drops the metadata after 100 kB and then fails: a .part is left."""
    with pytest.raises(StageError, match="HTTP 500"):
        run(config(), opts, "fetch")
    assert fetched(opts, M + ".part").stat().st_size == 100_000


def test_server_ignoring_range_restarts(tmp_path: Path) -> None:
    with FaultServer(routes(meta=[Cut(META, after=100_000), Status(500)])) as server:
        opts = make_opts(tmp_path, mirror=server.base_url, allow_hosts=LOCAL)
        _fail_midway(opts)
        server.set_route("/" + M, Serve(META, ranges=False))
        server.clear_log()
        rec = run(config(), opts, "fetch")["fetch"]
        assert server.hits("/" + M)[0].range == "bytes=100000-"
    assert fetched(opts, M).read_bytes() == META  # not the 100 kB prefix + the whole file
    assert rec["stats"]["files"]["metadata"]["resumed_from"] == 0


def test_file_changed_upstream_is_not_spliced(tmp_path: Path) -> None:
    new = random.Random(9).randbytes(250_000)
    with FaultServer(routes(meta=[Cut(META, after=100_000, etag='"v1"'), Status(500)])) as server:
        opts = make_opts(tmp_path, mirror=server.base_url, allow_hosts=LOCAL)
        _fail_midway(opts)
        server.set_route("/" + M, Serve(new, etag='"v2"'))
        server.clear_log()
        run(config(), opts, "fetch")
        [req] = server.hits("/" + M)
        assert (req.range, req.headers["if-range"]) == ("bytes=100000-", '"v1"')
    assert fetched(opts, M).read_bytes() == new


def test_complete_part_is_verified_with_416_and_stale_part_restarts(tmp_path: Path) -> None:
    cfg = config()
    with FaultServer(routes()) as server:
        opts = make_opts(tmp_path, mirror=server.base_url, allow_hosts=LOCAL)
        run(cfg, opts, "fetch")
        done = fetched(opts, M).with_name(Path(M).name + ".done")

        done.unlink()  # as if killed between the final rename and the .done sidecar
        record_path(opts, "fetch").unlink()
        server.clear_log()
        rec = run(cfg, opts, "fetch")["fetch"]
        assert [(r.range) for r in server.hits("/" + M)] == [f"bytes={len(META)}-"]  # answered 416, no body
        assert rec["stats"]["files"]["metadata"]["downloaded_bytes"] == 0
        assert fetched(opts, M).read_bytes() == META

        done.unlink()
        record_path(opts, "fetch").unlink()
        server.set_route("/" + M, Serve(META[:1000]))  # the file shrank upstream: the old bytes are stale
        run(cfg, opts, "fetch")
        assert fetched(opts, M).read_bytes() == META[:1000]


def test_tampered_file_is_downloaded_again(tmp_path: Path) -> None:
    cfg = config()
    with FaultServer(routes()) as server:
        opts = make_opts(tmp_path, mirror=server.base_url, allow_hosts=LOCAL)
        run(cfg, opts, "fetch")
        fetched(opts, M).write_bytes(bytes(len(META)))  # same size, other bytes
        record_path(opts, "fetch").unlink()
        server.clear_log()
        rec = run(cfg, opts, "fetch")["fetch"]
        assert [r.path for r in server.requests] == ["/" + M]
    assert fetched(opts, M).read_bytes() == META and rec["stats"]["reused"] == 1


def test_404_names_url_and_category_and_finished_files_are_kept(tmp_path: Path) -> None:
    cfg = config()
    with FaultServer(routes(reviews=Status(404))) as server:
        opts = make_opts(tmp_path, mirror=server.base_url, allow_hosts=LOCAL)
        with pytest.raises(StageError) as info:
            run(cfg, opts, "fetch")
        assert server.url(R) in str(info.value) and "'Electronics'" in str(info.value)
        assert "HTTP 404" in str(info.value) and len(server.hits("/" + R)) == 1  # a 404 is not retried

        server.set_route("/" + R, Serve(REVIEWS))
        server.clear_log()
        rec = run(cfg, opts, "fetch")["fetch"]
        assert [r.path for r in server.requests] == ["/" + R]  # the metadata finished last time
    assert rec["stats"]["reused"] == 1 and fetched(opts, R).read_bytes() == REVIEWS


@pytest.mark.parametrize("base", [closed_port_url(), "http://no-such-host.invalid/data/"])
def test_unreachable_base_suggests_sample_or_mirror(tmp_path: Path, base: str) -> None:
    opts = make_opts(tmp_path, mirror=base, allow_hosts=LOCAL)
    with pytest.raises(StageError) as info:
        run(config(), opts, "fetch")
    message = str(info.value)
    assert base.rstrip("/") + "/" + M in message
    assert "--source sample" in message and "--mirror BASE" in message


def test_refused_mirror_and_redirects(tmp_path: Path) -> None:
    with FaultServer({"/old/" + M: Redirect("/" + M, 301), "/old/" + R: Redirect(f"/{R}", 308),
                      **routes(), "/evil/" + M: Redirect("http://169.254.169.254/latest/")}) as server:
        with pytest.raises(StageError, match="refused by the URL-safety rules .*loopback.*--allow-host"):
            run(config(), make_opts(tmp_path / "a", mirror=server.base_url), "fetch")
        assert server.requests == []

        opts = make_opts(tmp_path / "b", mirror=server.url("/old/"), allow_hosts=LOCAL)
        run(config(), opts, "fetch")
        assert fetched(opts, M).read_bytes() == META and fetched(opts, R).read_bytes() == REVIEWS

        with pytest.raises(StageError, match="cloud metadata address 169.254.169.254"):
            run(config(), make_opts(tmp_path / "c", mirror=server.url("/evil"), allow_hosts=LOCAL), "fetch")


@pytest.fixture(scope="module")
def sample_catalog(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from etl.sample import generate_catalog

    folder = tmp_path_factory.mktemp("sample") / "catalog"
    generate_catalog(folder, category="Electronics", seed=0, n_products=150)
    return folder


def test_local_folder_file_url_and_sample_server_mirrors(tmp_path: Path, sample_catalog: Path) -> None:
    from etl.sample import serve_directory

    cfg = config()
    meta23, meta18 = M, "amazon_v2/metaFiles2/meta_Electronics.json.gz"
    opts = make_opts(tmp_path / "folder", mirror=str(sample_catalog))
    rec = run(cfg, opts, "fetch")["fetch"]
    for rel in (M, R):
        assert fetched(opts, rel).read_bytes() == (sample_catalog / rel).read_bytes()
    assert rec["provenance"]["raw"][0]["url"] == (sample_catalog / meta23).as_uri()

    opts = make_opts(tmp_path / "uri", source="amazon-2018", mirror=sample_catalog.as_uri())
    rec = run(cfg, opts, "fetch")["fetch"]
    assert set(rec["outputs"]) == {"metadata"} and rec["counts"]["input"] == 1
    assert rec["outputs"]["metadata"]["sha256"] == sha((sample_catalog / meta18).read_bytes())

    with serve_directory(sample_catalog) as base_url:
        opts = make_opts(tmp_path / "served", source="sample", mirror=base_url, allow_hosts=LOCAL)
        rec = run(cfg, opts, "fetch")["fetch"]
    assert rec["outputs"]["reviews"]["sha256"] == sha((sample_catalog / R).read_bytes())

    with pytest.raises(StageError, match="does not exist.*--source sample"):
        run(cfg, make_opts(tmp_path / "none", mirror=str(tmp_path / "no-such-folder")), "fetch")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(StageError, match=f"has no {M} for category 'Electronics'"):
        run(cfg, make_opts(tmp_path / "e", mirror=str(empty)), "fetch")
    with pytest.raises(StageError, match="scheme s3:// not supported"):
        run(cfg, make_opts(tmp_path / "s3", mirror="s3://bucket/data/"), "fetch")
    escaping = config("sources.amazon-2023.files.metadata=../../../escape.gz")
    with pytest.raises(StageError, match="must be relative and stay inside the fetch folder"):
        run(escaping, make_opts(tmp_path / "esc", mirror=str(sample_catalog)), "fetch")
