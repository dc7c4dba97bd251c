"""One writer per dataset root: an exclusive `fcntl.flock` on `DATASET_ROOT/.lock` for a whole invocation.

Two builds on one root would otherwise trip over each other's temp files, regenerate the sample catalog while the
other serves it, and record half-downloaded images. The kernel drops a `flock` when its holder exits (even on
SIGKILL), so a stale lock file never blocks anyone; the file itself stays (deleting it would let a third process
lock a different inode) and holds the holder's pid, command line and start time, for the message a second
invocation prints. Default: refuse at once (exit 2, naming the holder); `--wait SECONDS` waits for the lock.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shlex
import sys
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

from slipio.inputs import InputError

LOCK_FILE = ".lock"
POLL_S = 0.2


class LockHeld(InputError):
    """Another invocation holds the dataset root's lock; the message names its pid and command."""


def holder(lock_path: Path) -> str:
    """`pid N (COMMAND, since TIME)` of the lock's holder as it wrote itself down, or what is known."""
    try:
        info = json.loads(lock_path.read_text(encoding="utf-8"))
        return f"pid {info['pid']} ({info['command']}, since {info['started_at']})"
    except (OSError, ValueError, KeyError, TypeError):
        return "a process that has not written its pid yet"


@contextlib.contextmanager
def dataset_lock(root: Path, wait_s: float = 0.0) -> Iterator[Path]:
    """Hold the exclusive lock of dataset root `root` inside the `with` block.

    Waits up to `wait_s` seconds for another holder (0: not at all), then raises LockHeld naming it.
    """
    lock_path = Path(root) / LOCK_FILE
    try:
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise InputError(f"cannot create the dataset root's lock file {lock_path} ({exc.strerror or exc}); "
                         f"choose an --out folder you can write to") from None
    try:
        deadline = time.monotonic() + max(wait_s, 0.0)
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    waited = f" after waiting {wait_s:g}s" if wait_s > 0 else ""
                    raise LockHeld(f"dataset root {root} is in use by {holder(lock_path)}{waited}; wait for it to "
                                   f"finish, or rerun with --wait SECONDS") from None
                time.sleep(POLL_S)
        info = {"pid": os.getpid(), "command": shlex.join(sys.argv) or sys.executable,
                "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
        try:
            yield lock_path
        finally:
            os.ftruncate(fd, 0)  # not held any more: a later message must not name this process
    finally:
        os.close(fd)  # releases the flock
