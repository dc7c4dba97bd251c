"""`images` and `shards` on a real Ray cluster (a head and one more node, separate raylet processes, started with
`ray start` on this machine) against the local executor: the same rows and tar bytes, a worker killed mid-stage
changes nothing, and the cluster-wide per-host rate limit holds on the server's clock. Nothing here is skipped: if
Ray cannot start, these tests fail."""
from __future__ import annotations

import ctypes
import fcntl
import io
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pyarrow.parquet as pq
import pytest
from PIL import Image

from etl.config import ExecutorConfig, load_config
from etl.core import executor as executors
from etl.imaging.chunks import chunk_paths
from etl.imaging.crawler import CrawlJob, CrawlSettings
from etl.imaging.distributed import HostLimiter, ProgressBoard, crawl_partition, task_settings
from helpers.servers import FaultServer, Serve

pytestmark = pytest.mark.timeout(300)

RAY = str(Path(sys.executable).with_name("ray"))
# A throwaway cluster on this machine: no auth token (Ray >= 2.5x would otherwise write one to ~/.ray and demand it
# from every node), no usage reports, and patience with slow agent start-up on a busy 2-core machine.
ENV = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled",
       "RAY_agent_register_timeout_ms": "120000", "PYTHONUNBUFFERED": "1"}
os.environ.update(RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0")  # this process's driver too
NODE = ["--num-cpus", "1", "--object-store-memory", str(100 * 1024 * 1024), "--disable-usage-stats"]
# 120 products at 8 requests/s for the whole cluster: every partition lasts >= 14 s, long enough to kill it mid-crawl.
SMALL = ["--set", "sources.sample.sample_products=120", "--set", "labels.min_class_size=5",
         "--set", "shards.max_samples=32", "--set", "images.per_host_rps=8", "--set", "images.workers=1"]
VOLATILE = {"fetched_at"}
ADDRESS = re.compile(r"0x[0-9a-fA-F]+")


def _ray(*args: str, tries: int = 3) -> str:
    """`ray ARGS`; retried because `ray start` gives a raylet a fixed 30 s to register, which a 2-core machine busy
    with other tests sometimes misses (a failed attempt's processes are killed first)."""
    for attempt in range(1, tries + 1):
        proc = subprocess.run([RAY, *args], capture_output=True, text=True, env=ENV, timeout=180)
        if proc.returncode == 0 or attempt == tries:
            break
        if args[:2] == ("start", "--head"):
            _kill(_cluster_processes(args[args.index("--temp-dir") + 1]))
    assert proc.returncode == 0, f"ray {' '.join(args)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout + proc.stderr


def _kill(processes: list[psutil.Process]) -> None:
    for p in processes:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass


def _cluster_processes(temp_dir: str) -> list[psutil.Process]:
    """Every process of our cluster: those naming our temp dir (GCS, raylets, agents) and their descendants."""
    roots = []
    for p in psutil.process_iter(["cmdline"]):
        if any(temp_dir in part for part in p.info["cmdline"] or ()):
            roots.append(p)
    found = {p.pid: p for p in roots}
    for p in roots:
        try:
            found.update({c.pid: c for c in p.children(recursive=True)})
        except psutil.NoSuchProcess:
            pass
    return list(found.values())


CLONE_NEWNET = 0x40000000
SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 0x1


@pytest.fixture(scope="module", autouse=True)
def loopback_only_network():
    """Run this module in a fresh network namespace that has only a loopback interface.

    Ray ignores `--node-ip-address 127.0.0.1` and binds its cluster to the machine's own address; here it has no
    other address than 127.0.0.1, so no Ray traffic of these tests can go anywhere but loopback. The namespace is
    this (pytest) thread's and its children's; the previous one is restored afterwards."""
    libc = ctypes.CDLL(None, use_errno=True)
    previous = os.open("/proc/self/ns/net", os.O_RDONLY)
    if libc.unshare(CLONE_NEWNET) != 0:
        os.close(previous)
        pytest.fail(f"cannot create a loopback-only network namespace for the Ray tests "
                    f"({os.strerror(ctypes.get_errno())}); run them as root (CI does)")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:  # `ip link set lo up`, without iproute2
        request = struct.pack("16sH22x", b"lo", 0)
        flags = struct.unpack("16sH", fcntl.ioctl(sock, SIOCGIFFLAGS, request)[:18])[1]
        fcntl.ioctl(sock, SIOCSIFFLAGS, struct.pack("16sH22x", b"lo", flags | IFF_UP))
    try:
        yield
    finally:
        import ray
        if ray.is_initialized():
            ray.shutdown()
        libc.setns(previous, CLONE_NEWNET)
        os.close(previous)


@pytest.fixture(scope="module")
def cluster(loopback_only_network):
    """(address, temp dir): a head node and a second node of one CPU each; every process killed by pid after."""
    temp_dir = tempfile.mkdtemp(prefix="slipray")
    try:
        out = _ray("start", "--head", "--port", "0", "--node-ip-address", "127.0.0.1", "--include-dashboard",
                   "false", "--temp-dir", temp_dir, *NODE)
        match = re.search(r"ray start --address='([^']+)'", out)
        assert match, out[-2000:]
        address = match.group(1)
        _ray("start", "--address", address, "--node-ip-address", "127.0.0.1", *NODE)
        yield address, temp_dir
    finally:
        _kill(_cluster_processes(temp_dir))
        shutil.rmtree(temp_dir, ignore_errors=True)


def slip_etl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "etl.cli", *args], capture_output=True, text=True, env=ENV,
                          timeout=280)


def _status(root: Path) -> list[dict]:
    """The resolved status rows without timings; object addresses in error texts masked."""
    rows = pq.read_table(root / "work" / "images" / "status.parquet").to_pylist()
    return [{k: ADDRESS.sub("0x", v) if k == "error" and v else v for k, v in r.items() if k not in VOLATILE}
            for r in rows]


def _shards(root: Path) -> dict[str, bytes]:
    folder = root / "work" / "shards" / "shards"
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def _record(root: Path, stage: str) -> dict:
    return json.loads((root / "work" / "records" / f"{stage}.json").read_text())


def _chunk_node_ids(root: Path) -> list[int]:
    ids: list[int] = []
    for path in chunk_paths(root / "work" / "images" / "chunks"):
        ids += pq.read_table(path, columns=["node_id"]).column("node_id").to_pylist()
    return ids


@pytest.fixture(scope="module")
def local_build(tmp_path_factory):
    out = tmp_path_factory.mktemp("local")
    proc = slip_etl("shards", "--source", "sample", "--out", str(out), "--no-progress", *SMALL)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return out / "sample-electronics"


def test_ray_survives_a_killed_worker_and_matches_local(cluster, local_build, tmp_path):
    """A crawl task is SIGKILLed mid-partition: Ray reruns it and the outputs are still exactly the local ones.

    Whether the kill lands inside the task is timing (a partition that finished just before it needs no rerun), so
    the scenario is repeated in a fresh dataset root until a rerun was seen (at most 3 times); the outputs are
    checked on every attempt."""
    address, _ = cluster
    for attempt in range(3):
        images = _crawl_with_a_kill(address, local_build, tmp_path / f"ray-{attempt}")
        if images["stats"]["executor"]["task_retries"] >= 1:
            break
    assert images["stats"]["executor"]["task_retries"] >= 1, "no attempt killed a task before it finished"


def _crawl_with_a_kill(address: str, local_build: Path, out: Path) -> dict:
    cmd = [sys.executable, "-m", "etl.cli", "shards", "--source", "sample", "--out", str(out), "--no-progress",
           *SMALL, "--executor", "ray", "--ray-address", address, "--set", "executor.tasks_per_worker=1"]
    driver = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    killed = None
    deadline = time.monotonic() + 240
    while killed is None and driver.poll() is None and time.monotonic() < deadline:
        for p in psutil.process_iter(["cmdline"]):
            if (p.info["cmdline"] or [""])[0].startswith("ray::crawl_partition"):
                # let it get past its start (counted by the board) into its partition, then kill it mid-crawl:
                # 111 requests at 8/s for the cluster keep both partitions busy for >= 14 s
                time.sleep(2.5)
                if p.cmdline()[0].startswith("ray::crawl_partition"):
                    p.send_signal(signal.SIGKILL)
                    killed = p.pid
                break
        time.sleep(0.2)
    stdout, stderr = driver.communicate(timeout=240)
    assert killed is not None, "no crawl task was seen running: nothing was killed\n" + stderr[-3000:]
    assert driver.returncode == 0, stderr[-4000:]
    root = out / "sample-electronics"

    images = _record(root, "images")
    assert images["stats"]["executor"]["kind"] == "ray"
    assert images["stats"]["executor"]["workers"] >= 2
    assert _record(root, "shards")["stats"]["executor"]["kind"] == "ray"
    # nothing lost, nothing doubled: every kept node's row was written exactly once, by the driver
    ids = _chunk_node_ids(root)
    assert len(ids) == len(set(ids)) == images["counts"]["input"]
    # the same outputs as the local executor, and the same fingerprints (the executor is not part of them)
    assert _status(root) == _status(local_build)
    assert _shards(root) == _shards(local_build)
    # (shards' fingerprint covers status.parquet's bytes, whose fetched_at differs between any two crawls)
    assert _record(root, "images")["fingerprint"] == _record(local_build, "images")["fingerprint"]
    assert _record(local_build, "images")["stats"]["executor"] == {"kind": "local", "workers": 1}
    return images


def _jpeg(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (32, 24), (seed * 40 % 256, 90, 160)).save(buf, "JPEG")
    return buf.getvalue()


def test_one_rate_limit_for_the_whole_cluster(cluster):
    """Two tasks on two nodes fetch 16 images from one host limited to 5 requests/s: the server sees the requests
    spread over >= 15 intervals of 0.2 s and at most ~5 in any second (one limiter), not 5 per task and second (a
    limiter per worker)."""
    address, _ = cluster
    rps, n = 5.0, 16
    routes = {f"/{i}.jpg": Serve(_jpeg(i), content_type="image/jpeg") for i in range(n)}
    cfg = load_config(None, ["images.retries=0", f"images.per_host_rps={rps}", "images.workers=1"])
    session = executors.connect(ExecutorConfig(kind="ray", address=address))
    ray = session.ray
    try:
        assert session.workers >= 2
        with FaultServer(routes) as server:
            jobs = [CrawlJob(i, f"B{i:09d}", server.url(f"/{i}.jpg")) for i in range(n)]
            settings = task_settings(CrawlSettings.from_config(cfg.images, cfg.http), 2, 1)
            limiter = ray.remote(num_cpus=0)(HostLimiter).remote(rps)
            board = ray.remote(num_cpus=0)(ProgressBoard).remote()
            results = {}
            executors.run_tasks(session, session.remote(crawl_partition),
                                [(i, part, settings, cfg.http, ("127.0.0.1",), (), limiter, board)
                                 for i, part in enumerate(executors.split(jobs, 2))],
                                lambda i, r: results.__setitem__(i, r))
            times = sorted(r.at for r in server.requests if r.path.endswith(".jpg"))
        assert sum(t.num_rows for t, _ in results.values()) == n
        assert all(s.status["ok"] == len(t) for t, s in results.values())
        assert len(times) == n
        spread = [round(t - times[0], 3) for t in times]
        assert times[-1] - times[0] >= (n - 1) / rps - 0.15, spread
        # and never more than the rate (+1 for jitter) in any second, also while both tasks run
        busiest = max(sum(1 for u in times if t <= u < t + 0.95) for t in times)
        assert busiest <= rps + 1, spread
    finally:
        ray.shutdown()


def test_executor_ray_without_ray_installed_is_bad_input(tmp_path):
    fake = tmp_path / "noray" / "ray"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('No module named ray (test stand-in)')\n")
    env = {**ENV, "PYTHONPATH": os.pathsep.join([str(fake.parent), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-m", "etl.cli", "images", "--source", "sample", "--out",
                           str(tmp_path / "out"), "--executor", "ray"], capture_output=True, text=True, env=env,
                          timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "install slip-kit[ray]" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "out" / "sample-electronics" / "work" / "records").exists()  # no stage ran
    bad = slip_etl("images", "--source", "sample", "--out", str(tmp_path / "out"), "--executor", "spark")
    assert bad.returncode == 2 and "executor.kind" in bad.stderr and "Traceback" not in bad.stderr


def test_the_executor_is_not_part_of_any_fingerprint(tmp_path):
    """Switching executors (or their knobs) never reruns a finished stage: the fingerprints are the same."""
    from etl.core.stage import RunOptions, fingerprint
    from etl.stages import STAGES

    opts = RunOptions(category="electronics", source="sample", out=tmp_path)
    upstream = {"nodes": {"fingerprint": "n", "outputs": {}}, "edges": {"fingerprint": "e", "outputs": {}},
                "labels": {"fingerprint": "l", "outputs": {}}, "images": {"fingerprint": "i", "outputs": {}}}
    local = load_config()
    ray = load_config(None, ["executor.kind=ray", "executor.address=ray-head.invalid:6379", "executor.workers=7",
                             "executor.tasks_per_worker=2", "executor.max_partition_rows=10"])
    for name in ("images", "shards"):
        spec = STAGES[name]
        ups = {k: upstream[k] for k in spec.needs}
        assert fingerprint(spec, local, opts, ups) == fingerprint(spec, ray, opts, ups), name
    assert fingerprint(STAGES["shards"], local, opts, upstream) != fingerprint(
        STAGES["shards"], load_config(None, ["shards.max_samples=7"]), opts, upstream)  # a real change does count
