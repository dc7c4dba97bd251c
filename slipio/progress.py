"""Progress that a person can read in a log file too: a tqdm bar on a terminal, otherwise one plain line every
`SLIP_PROGRESS_INTERVAL_S` seconds (default 10) with done/total, rate and ETA.

tqdm hides itself when stderr is not a terminal (or, forced on, fills the log with carriage returns), so a CI log
or `nohup` file showed nothing for a 40-minute crawl. `progress_bar` keeps tqdm for terminals and gives the same
small API (update, n, total, reset, set_postfix, set_description, refresh, close, a context manager) as lines:

    images: 1200/5000 img (24%), 95.3 img/s, ETA 40s, ok=98.2%
    fetch meta.jsonl.gz: 65.3M/490.5MB (13%), 12.1MB/s, ETA 35s
"""
from __future__ import annotations

import os
import sys
import time
from typing import IO, Any, Optional

DEFAULT_INTERVAL_S = 10.0


def interval_s() -> float:
    """Seconds between progress lines (env `SLIP_PROGRESS_INTERVAL_S`; tests set it low)."""
    try:
        return max(0.0, float(os.environ.get("SLIP_PROGRESS_INTERVAL_S", DEFAULT_INTERVAL_S)))
    except ValueError:
        return DEFAULT_INTERVAL_S


def progress_bar(total: Optional[float] = None, desc: Optional[str] = None, unit: str = "it",
                 disable: bool = False, file: Optional[IO[str]] = None, **kw: Any) -> Any:
    """A tqdm bar when `file` (stderr) is a terminal, else a `LineProgress`; `disable` silences both."""
    stream = file if file is not None else sys.stderr
    if not disable and _is_terminal(stream):
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=desc, unit=unit, file=stream, **kw)
    return LineProgress(total=total, desc=desc, unit=unit, disable=disable, file=stream,
                        unit_scale=bool(kw.get("unit_scale", False)), initial=kw.get("initial", 0))


def _is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or closed
        return False


class LineProgress:
    """tqdm's everyday API, printing a full line at most every `interval` seconds (and a last one at close if
    it printed any: a short task stays silent)."""

    def __init__(self, total: Optional[float] = None, desc: Optional[str] = None, unit: str = "it",
                 disable: bool = False, file: Optional[IO[str]] = None, unit_scale: bool = False,
                 initial: float = 0, interval: Optional[float] = None):
        self.total, self.desc, self.unit, self.disable = total, desc or "", unit, disable
        self.file = file if file is not None else sys.stderr
        self.unit_scale = unit_scale
        self.interval = interval_s() if interval is None else interval
        self.n = initial
        self.lines = 0
        self.postfix = ""
        self._start_n = initial
        self._start = self._last = time.monotonic()

    # ---- tqdm's API ----------------------------------------------------------------------------------------
    def update(self, n: float = 1) -> None:
        self.n += n
        self._maybe_print()

    def refresh(self) -> None:
        self._maybe_print()

    def reset(self, total: Optional[float] = None) -> None:
        self.n = self._start_n = 0
        self.total = total
        self._start = time.monotonic()

    def set_postfix(self, ordered_dict: Optional[dict[str, Any]] = None, refresh: bool = True, **kw: Any) -> None:
        items = {**(ordered_dict or {}), **kw}
        self.postfix = ", ".join(f"{k}={v}" for k, v in items.items())

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        self.postfix = s

    def set_description(self, desc: Optional[str] = None, refresh: bool = True) -> None:
        self.desc = desc or ""

    def close(self) -> None:
        if self.lines and not self.disable:
            self._print(final=True)
        self.disable = True

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- lines ---------------------------------------------------------------------------------------------
    def line(self, final: bool = False) -> str:
        """`desc: done/total unit (pct%), rate unit/s, ETA 1m05s[, postfix]` (what is known of it)."""
        elapsed = max(time.monotonic() - self._start, 1e-9)
        rate = (self.n - self._start_n) / elapsed
        sep = "" if self.unit_scale else " "  # 490.5kB, 12 img
        done = f"{self._amount(self.n)}/{self._amount(self.total)}" if self.total else self._amount(self.n)
        parts = [f"{done}{sep}{self.unit}" + (f" ({100 * self.n / self.total:.0f}%)" if self.total else "")]
        parts.append(f"{self._amount(rate)}{sep}{self.unit}/s")
        if final:
            parts.append(f"took {format_seconds(elapsed)}")
        elif self.total and rate > 0:
            parts.append(f"ETA {format_seconds(max(self.total - self.n, 0) / rate)}")
        if self.postfix:
            parts.append(self.postfix)
        return (f"{self.desc}: " if self.desc else "") + ", ".join(parts)

    def _maybe_print(self) -> None:
        if self.disable:
            return
        now = time.monotonic()
        if now - self._last >= self.interval:
            self._last = now
            self._print()

    def _print(self, final: bool = False) -> None:
        self.lines += 1
        try:
            print(self.line(final), file=self.file, flush=True)
        except (OSError, ValueError):  # a closed or broken stderr must not stop the work
            self.disable = True

    def _amount(self, value: Optional[float]) -> str:
        if value is None:
            return "?"
        if self.unit_scale:
            for prefix in ("", "k", "M", "G", "T"):
                if abs(value) < 1000:
                    return f"{value:.1f}{prefix}" if prefix else f"{value:.0f}"
                value /= 1000
            return f"{value:.1f}P"
        return f"{value:.0f}" if float(value).is_integer() or abs(value) >= 100 else f"{value:.1f}"


def format_seconds(seconds: float) -> str:
    """`42s`, `3m05s`, `2h07m`."""
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{(seconds % 3600) // 60:02d}m"
