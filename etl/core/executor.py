"""Where a stage's partitions run: in this process (`local`, the default) or as Ray tasks on a cluster (`ray`).

Ray is the engine: scheduling, retries of a task whose worker died and moving results come from it, nothing here
replaces them. What this module adds is the one discipline every distributed stage keeps so that its outputs do
not depend on the executor: a task *returns* its results and the driver writes them, once, when the task has
completed. A task that dies is retried by Ray from scratch and leaves nothing behind; no shared filesystem is
assumed. `ray` is imported only when a Ray executor is used (`slip-etl --help` stays fast, Ray stays optional).

Used by `etl/stages/images.py` and `etl/stages/shards.py`; the executor is not part of any stage's fingerprint
(the same inputs and config give the same outputs on either executor).
"""
from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from etl.config import ExecutorConfig
from etl.core.stage import StageError
from slipio.inputs import InputError

log = logging.getLogger("slip_etl")

INSTALL_HINT = "install slip-kit[ray] (pip install 'slip-kit[ray]') or use --executor local"
POLL_S = 0.5  # how often the driver refreshes the cluster-wide progress while it waits for tasks


def import_ray() -> Any:
    """The `ray` module, or InputError (exit 2) saying what to install."""
    try:
        import ray
    except ImportError as exc:
        raise InputError(f"--executor ray needs Ray, which is not importable here ({exc}); {INSTALL_HINT}") from None
    return ray


def check_executor(cfg: ExecutorConfig) -> None:
    """Fail before any stage runs when the configured executor cannot be used."""
    if cfg.kind == "ray":
        import_ray()


@dataclass
class RaySession:
    """A connected Ray driver: how many tasks may run at once and where the cluster is."""

    ray: Any
    address: str
    workers: int      # tasks in flight at once (cluster CPUs / task_cpus, or executor.workers when set)
    cfg: ExecutorConfig

    def describe(self, tasks: int, retried: int | None = None) -> dict[str, Any]:
        """The stage record's `stats.executor` (`task_retries`: tasks Ray reran after their worker died)."""
        out = {"kind": "ray", "address": self.address, "workers": self.workers, "tasks": tasks,
               "max_retries": self.cfg.max_retries}
        if retried is not None:
            out["task_retries"] = retried
        return out

    def remote(self, fn: Callable[..., Any], **options: Any) -> Any:
        """`fn` as a Ray task with the executor's CPUs and retry policy (Ray retries a task whose worker died)."""
        return self.ray.remote(num_cpus=self.cfg.task_cpus, max_retries=self.cfg.max_retries,
                               retry_exceptions=False, **options)(fn)

    def partitions(self, n_items: int) -> int:
        """How many tasks to cut `n_items` into: tasks_per_worker per worker, none over max_partition_rows."""
        if n_items <= 0:
            return 0
        wanted = max(self.workers * self.cfg.tasks_per_worker, -(-n_items // self.cfg.max_partition_rows))
        return max(1, min(n_items, wanted))


def local_description() -> dict[str, Any]:
    return {"kind": "local", "workers": 1}


def connect(cfg: ExecutorConfig) -> RaySession:
    """Connect this process to the configured cluster (or start a Ray instance on this machine when no address is
    given); a driver already connected is reused, so `build` connects once for images and shards."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no usage reports unless the user opts in
    ray = import_ray()
    if not ray.is_initialized():
        kwargs: dict[str, Any] = {"log_to_driver": False, "include_dashboard": False,
                                  "logging_level": logging.WARNING}
        if cfg.address:
            kwargs["address"] = cfg.address
        else:  # a private instance on this machine; on a busy small machine its agents start slowly
            os.environ.setdefault("RAY_agent_register_timeout_ms", "120000")
            if cfg.workers:
                kwargs["num_cpus"] = cfg.workers * cfg.task_cpus
            if cfg.object_store_mb:
                kwargs["object_store_memory"] = cfg.object_store_mb * 1024 * 1024
        try:
            ray.init(**kwargs)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise InputError(f"executor.address {cfg.address or '(local)'}: cannot connect to Ray ({exc}); give "
                             f"--ray-address HOST:PORT of a running cluster (ray start --head), or leave it "
                             f"empty to start Ray on this machine") from None
    cpus = int(ray.cluster_resources().get("CPU", 1))
    slots = max(1, int(cpus // cfg.task_cpus)) if cfg.task_cpus else cpus
    workers = min(slots, cfg.workers) if cfg.workers else slots
    address = cfg.address or "local"
    log.info("ray: connected to %s (%d CPU(s), %d task(s) at once)", address, cpus, workers)
    return RaySession(ray, address, workers, cfg)


def split(items: list[Any], parts: int) -> list[list[Any]]:
    """`items` cut into `parts` contiguous, nearly equal, non-empty pieces (order kept)."""
    parts = max(1, min(parts, len(items)))
    size, extra = divmod(len(items), parts)
    out, start = [], 0
    for i in range(parts):
        end = start + size + (i < extra)
        out.append(items[start:end])
        start = end
    return [p for p in out if p]


def run_tasks(session: RaySession, task: Any, args: Iterable[tuple[Any, ...]],
              on_done: Callable[[int, Any], None], on_poll: Callable[[], None] | None = None,
              max_in_flight: int | None = None) -> int:
    """Submit `task.remote(*a)` for every `a` (at most `max_in_flight` at once, default 2 per worker), call
    `on_done(index, result)` in this process as each completes, and `on_poll()` every POLL_S while waiting.

    Returns how many tasks were submitted. A task's exception (after Ray's retries of a dead worker) is raised
    here; results of tasks that completed before it were already handed to `on_done`.
    """
    ray = session.ray
    limit = max_in_flight or 2 * session.workers
    pending: dict[Any, int] = {}
    queue: Iterator[tuple[int, tuple[Any, ...]]] = enumerate(args)
    submitted = 0

    def top_up() -> None:
        nonlocal submitted
        while len(pending) < limit:
            nxt = next(queue, None)
            if nxt is None:
                return
            index, a = nxt
            pending[task.remote(*a)] = index
            submitted += 1

    top_up()
    last_poll = 0.0
    try:
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=POLL_S)
            for ref in ready:
                index = pending.pop(ref)
                try:
                    result = ray.get(ref)
                except ray.exceptions.RayError as exc:  # the task's own error, or its worker died too often
                    cause = str(exc).strip().splitlines()[-1][:300] if str(exc).strip() else ""
                    raise StageError(f"Ray task {index} failed ({type(exc).__name__}: {cause}); Ray retries a "
                                     f"task whose worker died up to executor.max_retries="
                                     f"{session.cfg.max_retries} times. Finished tasks are kept: rerun the "
                                     f"stage to resume") from None
                on_done(index, result)
            top_up()
            if on_poll is not None and time.monotonic() - last_poll >= POLL_S:
                last_poll = time.monotonic()
                on_poll()
    finally:
        for ref in pending:  # interrupted or failed: do not leave work running on the cluster
            ray.cancel(ref, force=True)
    return submitted
