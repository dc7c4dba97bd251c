"""The decode/resize worker processes the crawler feeds, driven from its event loop.

Each worker is a plain child process, `python -m etl.imaging.workers OPTIONS_JSON`, talking over its stdin/stdout: the
event loop writes each raw body with a length prefix (nothing pickled on the way in) and reads back the pickled
answer. Compared with `multiprocessing`/`ProcessPoolExecutor`:
- start-up is a bare interpreter importing only this module and PIL, not a re-import of the
  crawler's `__main__` (the whole CLI) in every worker;
- the crawler's process stays single-threaded apart from asyncio's child watcher: no manager or queue-feeder
  thread competing with the event loop for the GIL; the pipes give back-pressure;
- a worker answers in request order, so the head of its queue is the image it was decoding when it died (a
  decoder crash on hostile bytes). That image gets one more try on a fresh worker and is then `decode_error`;
  the requests queued behind it are resent, not blamed. (A dead `ProcessPoolExecutor` worker breaks the whole
  pool and fails everything in flight, culprit unknown.)

Workers start with the crawl (their start-up overlaps the first downloads), run in their own session (a
terminal's Ctrl-C reaches only the crawler, which stops and closes them) and exit by themselves when the
crawler is killed outright (SIGKILL), so no orphan lingers.
"""
from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import os
import pickle
import struct
import sys
import threading
import time
from pathlib import Path
from typing import Any

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]

from etl.imaging.process import ImageRejected, ProcessedImage, process_image

WORKER_TRIES = 2      # an image whose worker died gets one more try on a fresh worker
ORPHAN_CHECK_S = 0.5  # how often a worker checks that the crawler still lives
STOP_GRACE_S = 5.0    # how long close() waits for a worker to exit before killing it
PIPE_BYTES = 1 << 20  # request pipe size where the OS allows it (Linux's unprivileged maximum)
_LENGTH = struct.Struct("!Q")
# Every image allocates a few short-lived pixel buffers of 0.2-0.5 MB. glibc's defaults serve blocks that size
# with a fresh mmap, or give the freed heap top back to the OS, so each image page-faulted ~80 times: 10% of a
# worker's CPU. Worker processes keep such blocks on their heap instead (other C libraries ignore these names;
# values a user sets in the environment win).
MALLOC_TUNING = {"MALLOC_MMAP_THRESHOLD_": str(8 << 20), "MALLOC_TRIM_THRESHOLD_": str(64 << 20)}
_PACKAGE_ROOT = str(Path(__file__).resolve().parents[1])  # where `etl` is importable from


class WorkerDied(Exception):
    """The worker process died with this request in its queue."""


class _QueuedBehind(WorkerDied):
    """... but another request was the one being decoded: resend this one, it is not to blame."""


class _Worker:
    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.pending: collections.deque[asyncio.Future] = collections.deque()
        self.alive = True
        self.listener: asyncio.Task | None = None


class ImageWorkers:
    """`await workers.process(data)` runs `process_image(data, **options)` in one of `n` worker processes."""

    def __init__(self, n: int, **options: Any) -> None:
        if n < 1:
            raise ValueError("ImageWorkers needs at least one worker")
        self._n = n
        self._options = options
        self._workers: list[_Worker] = []
        self._closing = False
        self.restarts = 0

    async def start(self) -> None:
        for _ in range(self._n):
            self._workers.append(await self._spawn())

    async def _spawn(self) -> _Worker:
        env = {**MALLOC_TUNING, **os.environ,
               "PYTHONPATH": os.pathsep.join(filter(None, [_PACKAGE_ROOT, os.environ.get("PYTHONPATH")]))}
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "etl.imaging.workers", json.dumps(self._options), str(os.getpid()),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, env=env, start_new_session=True,
            limit=1 << 20)
        _widen_pipe(process.stdin)
        worker = _Worker(process)
        worker.listener = asyncio.create_task(self._listen(worker))
        return worker

    async def process(self, data: bytes) -> ProcessedImage:
        """The processed image; ImageRejected as `process_image` raises it, or when it killed a worker twice."""
        tries = 0
        while True:
            while not any(w.alive for w in self._workers):  # the only worker is being replaced
                await asyncio.sleep(0.01)
            worker = min((w for w in self._workers if w.alive), key=lambda w: len(w.pending))
            future = asyncio.get_running_loop().create_future()
            worker.pending.append(future)
            stdin = worker.process.stdin
            stdin.writelines((_LENGTH.pack(len(data)), data))  # one synchronous step: frames never interleave
            with contextlib.suppress(ConnectionError):
                await stdin.drain()  # back-pressure while the worker is busy
            try:
                answer = await future
            except _QueuedBehind:
                continue
            except WorkerDied:
                tries += 1
                if tries >= WORKER_TRIES:
                    raise ImageRejected("decode_error", "the image worker process died decoding this image") from None
                continue
            if isinstance(answer, BaseException):
                raise answer  # ImageRejected, or a bug in the worker (not hidden)
            return answer

    async def _listen(self, worker: _Worker) -> None:
        """Resolve the worker's requests in order; on its death, blame the head request and replace it."""
        stdout = worker.process.stdout
        try:
            while True:
                (size,) = _LENGTH.unpack(await stdout.readexactly(_LENGTH.size))
                answer = pickle.loads(await stdout.readexactly(size))
                future = worker.pending.popleft()
                if not future.done():
                    future.set_result(answer)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        worker.alive = False
        for i, future in enumerate(worker.pending):
            if not future.done():
                future.set_exception(WorkerDied() if i == 0 else _QueuedBehind())
        worker.pending.clear()
        if not self._closing:
            if worker.process.returncode is None:
                worker.process.kill()
            await worker.process.wait()
            self.restarts += 1
            self._workers[self._workers.index(worker)] = await self._spawn()

    async def close(self) -> None:
        """Hang up on every worker and wait for them to exit (killed after a grace period)."""
        self._closing = True
        for worker in self._workers:
            with contextlib.suppress(ConnectionError):
                worker.process.stdin.close()
        for worker in self._workers:
            try:
                await asyncio.wait_for(worker.process.wait(), STOP_GRACE_S)
            except asyncio.TimeoutError:
                worker.process.kill()
                await worker.process.wait()
            if worker.listener is not None:
                worker.listener.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await worker.listener


def _widen_pipe(stream: asyncio.StreamWriter | None) -> None:
    """Let a whole image body fit in the pipe (Linux; 64 KiB by default), so it goes over in one write instead of
    several write-ready callbacks on the event loop (9% of the crawler's CPU at 84 KB per body)."""
    set_size = getattr(fcntl, "F_SETPIPE_SZ", None) if fcntl is not None else None
    if stream is None or set_size is None:
        return
    with contextlib.suppress(OSError):  # above /proc/sys/fs/pipe-max-size: keep the default
        fcntl.fcntl(stream.get_extra_info("pipe").fileno(), set_size, PIPE_BYTES)


def _exit_when_orphaned(parent_pid: int) -> None:
    while os.getppid() == parent_pid:
        time.sleep(ORPHAN_CHECK_S)
    os._exit(1)


def worker_main(options: dict[str, Any], parent_pid: int) -> None:
    """The worker process: length-prefixed bytes in on stdin, length-prefixed pickled answers out on stdout."""
    threading.Thread(target=_exit_when_orphaned, args=(parent_pid,), name="orphan-watch", daemon=True).start()
    requests, answers = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr  # a stray print() must not corrupt the answer stream
    while len(header := requests.read(_LENGTH.size)) == _LENGTH.size:
        (size,) = _LENGTH.unpack(header)
        data = requests.read(size)
        if len(data) != size:
            return  # the crawler went away mid-request
        try:
            answer: Any = process_image(data, **options)
        except Exception as exc:  # noqa: BLE001 - sent back: ImageRejected is a result, anything else a bug
            answer = exc
        payload = pickle.dumps(answer, protocol=pickle.HIGHEST_PROTOCOL)
        answers.write(_LENGTH.pack(len(payload)) + payload)
        answers.flush()


if __name__ == "__main__":
    worker_main(json.loads(sys.argv[1]), int(sys.argv[2]))
