"""Stage `images` against real loopback servers: faults, refusals, per-sample resume, SIGKILL + resume."""
from __future__ import annotations

import asyncio
import dataclasses
import gzip
import hashlib
import io
import json
import os
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import psutil
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

import schemas
from etl.harness import adopt_stage, load_config, make_opts, run
from etl.imaging.chunks import chunk_paths, chunk_schema, iter_ok_chunks, read_latest
from etl.imaging.workers import ImageWorkers
from etl.sample import generate_catalog, serve_directory
from helpers.servers import Cut, FaultServer, Redirect, Serve, Stall, Status, fail_then

pytestmark = pytest.mark.timeout(120)

FAST = ["http.connect_timeout_s=1", "http.read_timeout_s=1", "images.retries=3", "images.backoff_base_s=0.05",
        "images.backoff_max_s=0.5", "images.workers=2", "images.concurrency=8"]
CDN = "https://m.media-amazon.com/images/I/"


def jpeg(seed: int, size: tuple[int, int] = (96, 64)) -> bytes:
    img = Image.new("RGB", size, ((seed * 47) % 256, (seed * 91) % 256, (seed * 13) % 256))
    img.paste((255 - (seed * 47) % 256, 40, 90), (seed % 40, seed % 30, seed % 40 + 20, seed % 30 + 20))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90)
    return buf.getvalue()


def png_claiming(width: int, height: int) -> bytes:
    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def node_table(urls: dict[int, str | None]) -> pa.Table:
    rows = [{"node_id": nid, "asin": f"B{nid:09d}", "title": f"product {nid}", "features": [], "description": "",
             "store": None, "main_category": None, "category_path": [], "price": None, "average_rating": None,
             "rating_number": None, "image_url": url or "", "also_buy": [], "also_view": []}
            for nid, url in sorted(urls.items())]
    return pa.Table.from_pylist(rows, schema=schemas.arrow_schema("nodes"))


def seed_upstream(tmp_path: Path, cfg, opts, urls: dict[int, str | None], dropped: set[int] = frozenset()) -> None:
    """Adopt fetch/nodes/edges as finished stages: a node table with `urls`, `dropped` nodes filtered out."""
    fixtures = tmp_path / "fixtures"
    fixtures.mkdir(parents=True, exist_ok=True)
    meta = fixtures / "meta.jsonl"
    meta.write_text("{}\n")
    adopt_stage(cfg, opts, "fetch", {"metadata": meta})
    nodes = fixtures / "nodes.parquet"
    pq.write_table(node_table(urls), nodes)
    adopt_stage(cfg, opts, "nodes", {"nodes": nodes})
    node_filter = fixtures / "node_filter.parquet"
    pq.write_table(pa.Table.from_pylist(
        [{"node_id": n, "kept": n not in dropped, "reason": "k_core" if n in dropped else None} for n in sorted(urls)],
        schema=schemas.arrow_schema("node_filter")), node_filter)
    edges = fixtures / "edges.parquet"
    pq.write_table(schemas.arrow_schema("edges").empty_table(), edges)
    adopt_stage(cfg, opts, "edges", {"edges": edges, "node_filter": node_filter})


def status_of(opts) -> dict[int, dict]:
    table = pq.read_table(opts.work_dir / "images" / "status.parquet")
    assert schemas.validate_table(table, "image_status") == []
    return {r["node_id"]: r for r in table.to_pylist()}


def ok_jpegs(opts) -> dict[int, bytes]:
    """node_id -> the stored JPEG, for every node whose latest result is ok."""
    return {nid: data for ids, jpegs in iter_ok_chunks(opts.work_dir / "images" / "chunks")
            for nid, data in zip(ids.tolist(), jpegs.to_pylist(), strict=True)}


def ok_images(opts) -> dict[int, str]:
    """node_id -> sha256 of the stored JPEG, for every node whose latest result is ok."""
    return {nid: hashlib.sha256(data).hexdigest() for nid, data in ok_jpegs(opts).items()}


def test_faults_are_recovered_or_reported_with_their_reason(tmp_path):
    img = {i: jpeg(i) for i in range(20)}
    big = jpeg(99, size=(1200, 900))
    routes = {
        "/ok.jpg": Serve(img[0], content_type="image/jpeg"),
        "/big.jpg": Serve(big, content_type="image/jpeg"),
        "/flaky": fail_then(2, Status(503), Serve(img[1], content_type="image/jpeg")),
        "/limited": fail_then(1, Status(429, headers={"Retry-After": "1"}), Serve(img[2], content_type="image/jpeg")),
        "/reset": fail_then(1, Cut(img[3], after=100), Serve(img[3], content_type="image/jpeg")),
        "/short": fail_then(1, Cut(img[4], after=100, reset=False), Serve(img[4], content_type="image/jpeg")),
        "/stall": fail_then(1, Stall(10.0), Serve(img[5], content_type="image/jpeg")),
        "/hop": Redirect("/ok2.jpg"),
        "/ok2.jpg": Serve(img[6], content_type="image/jpeg"),
        "/gone": Status(404),
        "/down": Status(503),
        "/html": Serve(b"<html><body>sorry</body></html>", content_type="text/html"),
        "/liar.jpg": Serve(b"<html><body>sorry</body></html>", content_type="image/jpeg"),
        "/bomb.png": Serve(png_claiming(60_000, 60_000), content_type="image/png"),
        "/broken.jpg": Serve(img[7][:300], content_type="image/jpeg"),
        "/huge.jpg": Serve(b"\xff\xd8\xff" + b"\0" * 300_000, content_type="image/jpeg"),
        "/metadata": Redirect("http://169.254.169.254/latest/meta-data/"),
        "/private": Redirect("http://10.0.0.1/image.jpg"),
        "/optout.jpg": Serve(img[8], content_type="image/jpeg", headers={"X-Robots-Tag": "noindex, noai"}),
        "/others.jpg": Serve(img[9], content_type="image/jpeg", headers={"X-Robots-Tag": "otherbot: noai"}),
        "/dropped.jpg": Serve(img[10], content_type="image/jpeg"),
    }
    with FaultServer(routes) as server:
        paths = ["/ok.jpg", "/big.jpg", "/flaky", "/limited", "/reset", "/short", "/stall", "/hop", "/gone", "/down",
                 "/html", "/liar.jpg", "/bomb.png", "/broken.jpg", "/huge.jpg", "/metadata", "/private",
                 "/optout.jpg", "/others.jpg", "/dropped.jpg"]
        urls: dict[int, str | None] = {i: server.url(p) for i, p in enumerate(paths)}
        urls[20] = None
        urls[21] = "ftp://example.com/x.jpg"
        urls[22] = CDN + "ok.jpg"  # rewritten onto the server, recorded as the original
        dropped = {paths.index("/dropped.jpg")}
        cfg = load_config(overrides=FAST + ["images.max_bytes=200000", "images.chunk_rows=4"])
        opts = make_opts(tmp_path, allow_hosts=("127.0.0.1",), image_url_rewrite=((CDN, server.url("/")),))
        seed_upstream(tmp_path, cfg, opts, urls, dropped)
        t0 = time.monotonic()
        record = run(cfg, opts, "images")["images"]
        elapsed = time.monotonic() - t0
        hits = {p: len(server.hits(p)) for p in paths}
        limited = [r for r in server.requests if r.path == "/limited"]
        user_agents = {r.headers.get("user-agent") for r in server.requests}

    got = status_of(opts)
    by_path = {paths[i]: got[i] for i in range(len(paths)) if i not in dropped}
    expected = {
        "/ok.jpg": ("ok", 200), "/big.jpg": ("ok", 200), "/flaky": ("ok", 200), "/limited": ("ok", 200),
        "/reset": ("ok", 200), "/short": ("ok", 200), "/stall": ("ok", 200), "/hop": ("ok", 200),
        "/gone": ("http_error", 404), "/down": ("http_error", 503), "/html": ("not_image", 200),
        "/liar.jpg": ("not_image", 200), "/bomb.png": ("too_large", 200), "/broken.jpg": ("decode_error", 200),
        "/huge.jpg": ("too_large", None), "/metadata": ("blocked_url", None), "/private": ("blocked_url", None),
        "/optout.jpg": ("robots_optout", 200), "/others.jpg": ("ok", 200),
    }
    assert {p: (r["status"], r["http_status"]) for p, r in by_path.items()} == expected
    assert "metadata" in by_path["/metadata"]["error"] and "private" in by_path["/private"]["error"]
    assert by_path["/flaky"]["attempts"] == 3 and by_path["/gone"]["attempts"] == 1
    assert by_path["/down"]["attempts"] == 4  # first try + images.retries
    assert (got[20]["status"], got[21]["status"]) == ("no_url", "blocked_url")
    assert got[22]["status"] == "ok" and got[22]["url"] == CDN + "ok.jpg"
    assert set(got) == set(urls) - dropped and hits["/dropped.jpg"] == 0
    assert hits["/gone"] == 1 and hits["/down"] == 4 and hits["/html"] == 1
    assert limited[1:] and user_agents == {cfg.http.user_agent}
    assert elapsed < 30

    ok = ok_images(opts)
    assert set(ok) == {i for i, r in got.items() if r["status"] == "ok"}
    big_row = by_path["/big.jpg"]
    assert (big_row["width"], big_row["height"], big_row["bytes"]) == (1200, 900, len(big))
    assert big_row["sha256"] == hashlib.sha256(big).hexdigest()
    assert Image.open(io.BytesIO(ok_jpegs(opts)[1])).size == (341, 256)

    counts = record["counts"]
    assert counts["input"] == len(urls) - 1 and counts["kept"] == len(ok)
    assert counts["rejected"] == {"blocked_url": 3, "decode_error": 1, "http_error": 2, "no_url": 1,
                                  "not_image": 2, "robots_optout": 1, "too_large": 2}
    stats = record["stats"]
    assert stats["http_status"]["200"] >= len(ok) and stats["http_status"]["404"] == 1
    assert stats["this_run"]["retries"] >= 2 + 1 + 1 + 1 + 1 + 3
    for path in chunk_paths(opts.work_dir / "images" / "chunks"):
        table = pq.read_table(path)
        assert table.schema.equals(chunk_schema()) and table.num_rows <= 4


def test_resume_refetches_only_missing_and_retriable_results(tmp_path):
    images = {i: jpeg(i) for i in range(12)}
    routes = {f"/{i}.jpg": Serve(images[i], content_type="image/jpeg") for i in range(10)}
    routes |= {"/10.jpg": Status(503), "/11.jpg": Status(429)}
    with FaultServer(routes) as server:
        urls = {i: server.url(f"/{i}.jpg") for i in range(12)}
        cfg = load_config(overrides=FAST + ["images.retries=1", "images.chunk_rows=4"])
        opts = make_opts(tmp_path, allow_hosts=("127.0.0.1",))
        seed_upstream(tmp_path, cfg, opts, urls)
        first = run(cfg, opts, "images")["images"]
        assert first["counts"]["kept"] == 10 and first["counts"]["rejected"] == {"http_error": 2}
        chunks_dir = opts.work_dir / "images" / "chunks"
        assert [p.name for p in chunk_paths(chunks_dir)] == [f"part-{i:06d}.parquet" for i in range(3)]

        # Lose one chunk and let the failing host recover: only those nodes may be requested again.
        members = {p: set(pq.read_table(p, columns=["node_id"])["node_id"].to_pylist())
                   for p in chunk_paths(chunks_dir)}
        victim = next(p for p, ids in members.items() if not ids & {10, 11})  # keep the failures' first attempts
        lost = members[victim]
        victim.unlink()
        kept_chunks = [p.name for p in chunk_paths(chunks_dir)]
        server.set_route("/10.jpg", Serve(images[10], content_type="image/jpeg"))
        server.set_route("/11.jpg", Serve(images[11], content_type="image/jpeg"))
        server.clear_log()
        second = run(cfg, opts, "images")["images"]
        requested = sorted(int(r.path[1:-4]) for r in server.requests)
        assert requested == sorted(lost | {10, 11})
        assert second["counts"]["kept"] == 12 and second["stats"]["resumed_final"] == 12 - len(lost | {10, 11})
        assert status_of(opts)[10]["attempts"] == 3  # two in the first run, one now
        new_chunks = [p.name for p in chunk_paths(chunks_dir) if p.name not in kept_chunks]
        assert len(new_chunks) == 2 and min(new_chunks) > max(kept_chunks)  # appended after what is kept

        # Finished: a rerun does nothing; a lost status table is rebuilt from the chunks without a request.
        server.clear_log()
        assert run(cfg, opts, "images")["images"]["fingerprint"] == second["fingerprint"]
        before = status_of(opts)
        (opts.work_dir / "images" / "status.parquet").unlink()
        run(cfg, opts, "images")
        assert server.requests == [] and status_of(opts).keys() == before.keys()
    assert set(ok_images(opts)) == set(range(12))
    latest = read_latest(chunks_dir)
    assert latest.height == 12 and latest["node_id"].is_unique().all()


def images_command(out: Path, *overrides: str) -> list[str]:
    sets = [arg for o in FAST + ["images.chunk_rows=8", *overrides] for arg in ("--set", o)]
    return [sys.executable, "-m", "etl.cli", "images", "--source", "amazon-2023", "--category", "electronics",
            "--out", str(out), "--allow-host", "127.0.0.1", "--no-progress", *sets]


def start(command: list[str], **kw) -> subprocess.Popen:
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"}, **kw)


def test_sigkill_during_images_then_resume_equals_an_uninterrupted_run(tmp_path):
    n = 160
    routes = {f"/{i}.jpg": Serve(jpeg(i), content_type="image/jpeg") if i % 10 else Status(404) for i in range(n)}
    with FaultServer(routes) as server:
        urls = {i: server.url(f"/{i}.jpg") for i in range(n)}
        cfg = load_config(overrides=FAST + ["images.chunk_rows=8"])
        killed, clean = make_opts(tmp_path / "killed"), make_opts(tmp_path / "clean", allow_hosts=("127.0.0.1",))
        seed_upstream(tmp_path / "killed", cfg, killed, urls)
        seed_upstream(tmp_path / "clean", cfg, clean, urls)

        # slow enough to be caught mid-way; one worker process starts faster than two
        proc = start(images_command(tmp_path / "killed", "images.per_host_rps=40", "images.workers=1"))
        chunks_dir = killed.work_dir / "images" / "chunks"
        deadline = time.monotonic() + 60
        while len(chunk_paths(chunks_dir)) < 3 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        workers = psutil.Process(proc.pid).children(recursive=True)
        os.kill(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=30)
        assert proc.returncode == -signal.SIGKILL
        gone, alive = psutil.wait_procs(workers, timeout=10)
        assert workers and not alive, "image workers must not outlive a killed crawler"
        assert not (killed.work_dir / "records" / "images.json").exists()
        survived = read_latest(chunks_dir)
        assert 0 < survived.height < n
        served_before = {r.path for r in server.requests}

        server.clear_log()
        run(cfg, dataclasses.replace(killed, allow_hosts=("127.0.0.1",)), "images")
        refetched = {r.path for r in server.requests}
        assert not refetched & {f"/{i}.jpg" for i in survived["node_id"].to_list()}
        assert refetched | served_before == set(routes)

        server.clear_log()
        run(cfg, clean, "images")

    assert ok_images(killed) == ok_images(clean) and len(ok_images(clean)) == n - n // 10
    resolved = status_of(killed)
    assert len(resolved) == n
    assert {k: (v["status"], v["sha256"]) for k, v in resolved.items()} == \
        {k: (v["status"], v["sha256"]) for k, v in status_of(clean).items()}


def test_ctrl_c_stops_promptly_keeps_finished_results_and_leaves_no_process(tmp_path):
    n = 400
    with FaultServer({f"/{i}.jpg": Serve(jpeg(i), content_type="image/jpeg") for i in range(n)}) as server:
        opts = make_opts(tmp_path)
        cfg = load_config(overrides=FAST)
        seed_upstream(tmp_path, cfg, opts, {i: server.url(f"/{i}.jpg") for i in range(n)})
        proc = start(images_command(tmp_path, "images.per_host_rps=40", "images.chunk_rows=1000", "images.workers=1"),
                     start_new_session=True)
        deadline = time.monotonic() + 60
        while len(server.requests) < 20 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        family = [proc, *psutil.Process(proc.pid).children(recursive=True)]
        os.killpg(proc.pid, signal.SIGINT)  # what a terminal does: the whole process group gets it
        t0 = time.monotonic()
        proc.communicate(timeout=30)
        assert proc.returncode != 0 and time.monotonic() - t0 < 15
        assert not psutil.wait_procs(family[1:], timeout=10)[1]
    # No chunk was full (chunk_rows=1000), yet every finished result was flushed on the way out.
    kept = read_latest(opts.work_dir / "images" / "chunks")
    assert 0 < kept.height < n and set(kept["status"].to_list()) == {"ok"}
    assert not (opts.work_dir / "records" / "images.json").exists()


def test_a_dead_worker_process_is_replaced_and_its_queue_resent():
    async def go() -> tuple[int, list[int]]:
        workers = ImageWorkers(1, shorter_side=32)
        await workers.start()
        try:
            await workers.process(jpeg(1))  # the worker is up
            worker = next(c for c in psutil.Process().children() if "etl.imaging.workers" in c.cmdline())
            worker.suspend()  # it cannot answer any of the four below before it dies (no race with the kill)
            queued = [asyncio.create_task(workers.process(jpeg(i))) for i in range(2, 6)]
            await asyncio.sleep(0)  # all four are written to the worker's pipe
            worker.kill()
            images = await asyncio.gather(*queued)
            return workers.restarts, [Image.open(io.BytesIO(im.jpeg)).size[1] for im in images]
        finally:
            await workers.close()

    restarts, heights = asyncio.run(go())
    assert restarts == 1 and heights == [32] * 4


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/PID/environ")
def test_workers_get_the_malloc_tuning_unless_the_user_set_it(monkeypatch):
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "12345")

    async def worker_env() -> dict[str, str]:
        workers = ImageWorkers(1, shorter_side=32)
        await workers.start()
        try:
            await workers.process(jpeg(1))
            worker = next(c for c in psutil.Process().children() if "etl.imaging.workers" in c.cmdline())
            return worker.environ()
        finally:
            await workers.close()

    env = asyncio.run(worker_env())
    assert env["MALLOC_MMAP_THRESHOLD_"] == str(8 << 20) and env["MALLOC_TRIM_THRESHOLD_"] == "12345"


def test_sample_catalog_images_through_the_cdn_rewrite(tmp_path):
    """The embedded sample's images, served by its loopback server: its injected image defects are found."""
    catalog = tmp_path / "catalog"
    generate_catalog(catalog, n_products=60)
    truth = json.loads((catalog / "sample_truth.json").read_text())
    urls: dict[int, str | None] = {}
    asins: dict[int, str] = {}
    with gzip.open(catalog / truth["files"]["meta_2023"]["path"], "rt") as fh:
        for line in fh:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict) and record.get("images"):
                main = record["images"][0]
                asins[len(urls)] = record["parent_asin"]
                urls[len(urls)] = main.get("hi_res") or main.get("large")
    cfg = load_config(overrides=FAST)
    with serve_directory(catalog) as base:
        opts = make_opts(tmp_path, allow_hosts=("127.0.0.1",), image_url_rewrite=((CDN, base + "/images/I/"),))
        seed_upstream(tmp_path, cfg, opts, urls)
        run(cfg, opts, "images")
    by_asin = {asins[nid]: row for nid, row in status_of(opts).items()}
    defects = truth["defects"]
    expected = {item["asin"]: "http_error" for item in defects["images"]["missing_image"]["items"]}
    expected |= {item["asin"]: "blocked_url" for item in defects["meta_2023"]["non_http_image_url"]["items"]}
    corrupt = {item["asin"] for item in defects["images"]["corrupt_image"]["items"]}
    for asin, row in by_asin.items():
        if asin in corrupt:
            assert row["status"] in ("not_image", "decode_error"), row
        else:
            assert row["status"] == expected.get(asin, "ok"), row
    assert sum(row["status"] == "ok" for row in by_asin.values()) >= len(by_asin) - 8


def test_an_empty_200_body_is_retried_and_counted_retriable_never_not_image(tmp_path):
    """A 200 with no bytes (a server restarting, a file being rewritten) is a transfer failure, not a verdict."""
    good = jpeg(3)
    routes = {
        "/blip.jpg": fail_then(2, Serve(b"", content_type="image/jpeg"), Serve(good, content_type="image/jpeg")),
        "/void.jpg": Serve(b"", content_type="image/jpeg"),
    }
    with FaultServer(routes) as server:
        urls = {0: server.url("/blip.jpg"), 1: server.url("/void.jpg")}
        cfg = load_config(overrides=FAST + ["images.retries=2"])
        opts = make_opts(tmp_path, allow_hosts=("127.0.0.1",))
        seed_upstream(tmp_path, cfg, opts, urls)
        record = run(cfg, opts, "images")["images"]
        got = status_of(opts)
        assert (got[0]["status"], got[0]["attempts"]) == ("ok", 3)
        assert (got[1]["status"], got[1]["http_status"], got[1]["attempts"]) == ("empty_body", 200, 3)
        assert "empty" in got[1]["error"]
        assert record["counts"]["rejected"] == {"empty_body": 1}
        assert len(server.hits("/void.jpg")) == 3

        # Retriable across runs too: once the file is back, `images --force` fetches exactly that node again.
        server.set_route("/void.jpg", Serve(jpeg(4), content_type="image/jpeg"))
        server.clear_log()
        again = run(cfg, opts, "images", force=("images",))["images"]
        assert [r.path for r in server.requests] == ["/void.jpg"]
        assert again["counts"]["kept"] == 2 and status_of(opts)[1]["attempts"] == 4
