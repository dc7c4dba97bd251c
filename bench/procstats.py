"""Process-tree measurements shared by the benchmarks: peak RSS (sampled) and CPU time of finished children."""
from __future__ import annotations

import contextlib
import resource
import threading

import psutil


class PeakRSS:
    """Samples the summed RSS of a process and all its descendants until stopped.

    Listing descendants scans /proc, so the tree is refreshed every `refresh` samples only (the sampler itself
    runs beside the work it measures and must stay cheap).
    """

    def __init__(self, pid: int, interval_s: float = 0.1, refresh: int = 5) -> None:
        self.root = psutil.Process(pid)
        self.interval_s = interval_s
        self.refresh = refresh
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self) -> None:
        procs: list[psutil.Process] = [self.root]
        tick = 0
        while not self._stop.is_set():
            if tick % self.refresh == 0:
                with contextlib.suppress(psutil.Error):
                    procs = [self.root, *self.root.children(recursive=True)]
            tick += 1
            total = 0
            for proc in procs:
                with contextlib.suppress(psutil.Error):
                    total += proc.memory_info().rss
            self.peak = max(self.peak, total)
            self._stop.wait(self.interval_s)

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime
