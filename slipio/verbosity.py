"""What the three CLIs show on stderr: their own log lines, not third-party chatter, unless `-v` asks for it.

Quiet (the default): our loggers at INFO; other libraries' records below WARNING dropped (open_clip's INFO lines
about parsing model names), and warnings that say nothing a user can act on: open_clip's "No pretrained weights
loaded ... Model initialized randomly" and "no CLIP weights found" (printed before a trained run's weights are
loaded, or for a run that trains from scratch on purpose) and library Deprecation/Future/UserWarnings (torch,
torch_geometric, ...). Errors always show. `-v`: everything at INFO, warnings as Python prints them; `-vv`: DEBUG.
"""
from __future__ import annotations

import logging
import sys
import warnings
from typing import Any

#: loggers (and the first part of dotted names) that are the project's own
OUR_LOGGERS = ("slip-train", "slip-eval", "slip_etl", "trainer", "etl", "slipio", "schemas")
_OUR_MODULES = r"(trainer|etl|slipio|schemas)(\.|$)"
#: third-party warnings (logging) that never tell a user anything: open_clip says both while a trained run is
#: being loaded (its weights come from the run's state dict right after) or a model is built to train from scratch
NOISE = ("No pretrained weights loaded for model", "Local config loaded, but no CLIP weights found")
_LIBRARY_WARNINGS = (DeprecationWarning, FutureWarning, UserWarning)


class ThirdPartyFilter(logging.Filter):
    """Pass our records and third-party errors; third-party warnings unless known noise; nothing else."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.split(".")[0] in OUR_LOGGERS or record.levelno >= logging.ERROR:
            return True
        if record.levelno < logging.WARNING:
            return False
        message = record.getMessage()
        return not any(message.startswith(noise) for noise in NOISE)


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever `sys.stderr` is at the time of the record (never a stale stream kept from set-up)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass


def configure(verbose: int, fmt: str, force: bool = False) -> None:
    """Set up logging on stderr and the warnings filters for a CLI run (`verbose` = number of -v flags).

    Like `logging.basicConfig`, logging is left alone when the root logger already has handlers (a test runner,
    an application embedding the CLI) unless `force`, which replaces them."""
    if verbose <= 0:
        for category in _LIBRARY_WARNINGS:
            warnings.filterwarnings("ignore", category=category)
            warnings.filterwarnings("default", category=category, module=_OUR_MODULES)  # ours show (first match)
    root = logging.getLogger()
    for handler in list(root.handlers):
        if force or isinstance(handler, _StderrHandler):
            root.removeHandler(handler)
    if root.handlers:
        return
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter(fmt))
    if verbose <= 0:
        handler.addFilter(ThirdPartyFilter())
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose > 1 else logging.INFO)
