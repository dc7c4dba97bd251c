"""One writer per dataset root: concurrent `slip-etl build`s on one --out, through real processes."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from etl.core.lock import LOCK_FILE, LockHeld, dataset_lock

pytestmark = pytest.mark.timeout(600)

SMALL = ["--set", "sources.sample.sample_products=300", "--set", "labels.min_class_size=5",
         "--set", "shards.max_samples=64"]


def build_command(out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "etl.cli", "build", "--source", "sample", "--category", "electronics",
            "--out", str(out), "--no-progress", *SMALL, *extra]


def start(command: list[str]) -> subprocess.Popen:
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})


def wait_for_holder(lock: Path, pid: int, proc: subprocess.Popen, timeout_s: float = 120) -> dict:
    """The lock file's contents once process `pid` has written itself down as the holder."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        try:
            info = json.loads(lock.read_text())
            if info.get("pid") == pid:
                return info
        except (OSError, ValueError):
            pass
        time.sleep(0.05)
    raise AssertionError(f"{pid} never took {lock}")


def test_concurrent_builds_on_one_root_refuse_or_wait_and_lose_nothing(tmp_path):
    out = tmp_path / "out"
    root = out / "sample-electronics"
    first = start(build_command(out))
    holder = wait_for_holder(root / LOCK_FILE, first.pid, first)
    assert "build" in holder["command"] and holder["started_at"]

    # While the first holds the root (catalog generation, serving, every stage): one is refused, one waits.
    refused = start(build_command(out))
    waiting = start(build_command(out, "--wait", "600"))
    r_out, r_err = refused.communicate(timeout=120)
    assert first.poll() is None, "the refused build must not have waited for the first one"
    assert refused.returncode == 2 and r_out == ""
    assert r_err.count("\n") == 1 and "Traceback" not in r_err, r_err
    assert r_err.startswith("slip-etl: error: dataset root ") and f"in use by pid {first.pid} (" in r_err, r_err
    assert "build --source sample" in r_err and "--wait SECONDS" in r_err, r_err

    f_out, f_err = first.communicate(timeout=600)
    w_out, w_err = waiting.communicate(timeout=600)
    assert first.returncode == 0, f_err[-3000:]
    assert waiting.returncode == 0, w_err[-3000:]
    release = Path(f_out.strip().splitlines()[-1])
    assert w_out.strip().splitlines()[-1] == str(release)
    assert "running" not in w_err and "generating the sample catalog" not in w_err, "it ran after, not during"
    assert f_err.count("images   running") == 1

    check = subprocess.run([sys.executable, "-m", "etl.cli", "validate", str(release)], capture_output=True,
                           text=True, timeout=300)
    assert check.returncode == 0, check.stdout + check.stderr
    images = json.loads((root / "work" / "records" / "images.json").read_text())
    assert "empty_body" not in images["counts"]["rejected"]
    stats = json.loads((release / "stats.json").read_text())
    assert stats["images"]["status_counts"]["ok"] == images["counts"]["kept"] == sum(
        s["samples"] for s in stats["shards"].values()), "every downloaded image is in a shard"
    assert (root / LOCK_FILE).read_text() == "", "a released lock names nobody"


HOLD = textwrap.dedent("""
    import sys, time
    from etl.core.lock import dataset_lock
    with dataset_lock(sys.argv[1]):
        print("held", flush=True)
        time.sleep(600)
""")


def test_a_killed_holder_leaves_no_stale_lock_and_wait_gives_up_naming_it(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        t0 = time.monotonic()
        with pytest.raises(LockHeld, match=rf"in use by pid {holder.pid} \(.*after waiting 0.5s"):
            with dataset_lock(tmp_path, wait_s=0.5):
                pass
        assert 0.5 <= time.monotonic() - t0 < 5
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
    with dataset_lock(tmp_path) as lock:  # the kernel dropped the dead holder's flock
        assert json.loads(lock.read_text())["pid"] == os.getpid()
