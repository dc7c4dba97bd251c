"""Start real torchrun launches on 127.0.0.1 and never leave their ranks behind.

`subprocess.run(timeout=...)` kills only torchrun itself: ranks stuck in a collective would outlive the test (and
the CI job's CPU). Each launch gets its own session, and its whole process group is killed when it ends or times out.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from typing import Optional

LAUNCHER = [sys.executable, "-m", "torch.distributed.run"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(launcher_flags: list[str], args: list[str], env: Optional[dict[str, str]] = None) -> subprocess.Popen:
    """`python -m torch.distributed.run FLAGS ARGS...` in its own session (stdout/stderr captured)."""
    return subprocess.Popen([*LAUNCHER, *launcher_flags, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, **(env or {})}, start_new_session=True)


def finish(proc: subprocess.Popen, timeout_s: float) -> subprocess.CompletedProcess:
    """Wait for a launch; kill its process group afterwards (and raise AssertionError if it ran past timeout_s)."""
    try:
        out, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        _kill_group(proc.pid)
        out, err = proc.communicate()
        raise AssertionError(f"torchrun still running after {timeout_s} s; stderr tail:\n{err[-3000:]}") from None
    finally:
        _kill_group(proc.pid)  # ranks a failed launch left behind
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def run_torchrun(args: list[str], timeout_s: float, env: Optional[dict[str, str]] = None,
                 nproc: int = 2) -> subprocess.CompletedProcess:
    """One node, `nproc` ranks: `--nproc_per_node N --master-addr 127.0.0.1 --master-port FREE ARGS...`."""
    flags = ["--nproc_per_node", str(nproc), "--master-addr", "127.0.0.1", "--master-port", str(free_port())]
    return finish(launch(flags, args, env), timeout_s)


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
