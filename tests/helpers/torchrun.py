"""Start a real 2-process torchrun on 127.0.0.1 and never leave its ranks behind.

`subprocess.run(timeout=...)` kills only torchrun itself: ranks stuck in a collective would outlive the test (and
the CI job's CPU). The launch gets its own session, and the whole process group is killed when it ends or times out.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from typing import Optional


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_torchrun(args: list[str], timeout_s: float, env: Optional[dict[str, str]] = None,
                 nproc: int = 2) -> subprocess.CompletedProcess:
    """`python -m torch.distributed.run --nproc_per_node N --master-addr 127.0.0.1 --master-port FREE ARGS...`;
    an AssertionError with the tail of stderr if it is still running after `timeout_s`."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master-addr",
           "127.0.0.1", "--master-port", str(free_port()), *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **(env or {})}, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        _kill_group(proc.pid)
        out, err = proc.communicate()
        raise AssertionError(f"torchrun still running after {timeout_s} s; stderr tail:\n{err[-3000:]}") from None
    finally:
        _kill_group(proc.pid)  # ranks a failed launch left behind
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
