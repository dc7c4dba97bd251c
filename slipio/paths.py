"""The one check for a path read from a file someone else wrote (a manifest, a record, a bank manifest, a run folder).

Such a path is data, not a trusted location: `"../secret.txt"`, `"/etc/passwd"` or a symlink planted inside a
release would otherwise make a reader (or `publish`) read or write outside the folder it was given. Every such
path goes through `resolve_inside` before anything opens it.
"""
from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Literal

Kind = Literal["file", "dir"]


class UnsafePath(ValueError):
    """A path from untrusted data breaks one of the rules; the message names the path and the rule."""

    def __init__(self, rel: object, rule: str) -> None:
        self.rel = rel
        self.rule = rule
        super().__init__(f"unsafe path {rel!r}: {rule}")


def check_relpath(rel: object) -> tuple[str, ...]:
    """The segments of `rel` if it is a normalised relative POSIX path; raise UnsafePath naming the rule otherwise."""
    if not isinstance(rel, str):
        raise UnsafePath(rel, f"must be a string, not {type(rel).__name__}")
    if rel == "":
        raise UnsafePath(rel, "must not be empty")
    if "\x00" in rel:
        raise UnsafePath(rel, "must not contain a NUL character")
    if "\\" in rel:
        raise UnsafePath(rel, "must not contain a backslash (use '/' between segments)")
    if rel.startswith("/"):
        raise UnsafePath(rel, "must be relative, not absolute")
    parts = tuple(rel.split("/"))
    for part in parts:
        if part == "":
            raise UnsafePath(rel, "must not contain empty segments ('//' or a trailing '/')")
        if part == ".":
            raise UnsafePath(rel, "must not contain '.' segments")
        if part == "..":
            raise UnsafePath(rel, "must not contain '..' segments")
    return parts


def resolve_inside(root: Path, rel: object, *, kind: Kind = "file") -> Path:
    """`root / rel`, after checking that `rel` is normalised and relative and that the path stays inside `root`.

    Walks the path one segment at a time with `lstat`: no segment may be a symlink (even one pointing inside),
    every folder on the way must be a folder, and the last segment, when it exists, must be a regular file
    (`kind="file"`: no device files, FIFOs or sockets) or a folder (`kind="dir"`). A path that does not exist
    yet passes, so writers can use the same check; readers then fail on open as usual.
    """
    parts = check_relpath(rel)
    root = Path(root)
    current = root
    for i, part in enumerate(parts):
        current = current / part
        try:
            st = os.lstat(current)
        except FileNotFoundError:
            return root.joinpath(*parts)
        except NotADirectoryError:
            raise UnsafePath(rel, f"{'/'.join(parts[:i])!r} is not a folder") from None
        if stat.S_ISLNK(st.st_mode):
            raise UnsafePath(rel, f"{'/'.join(parts[: i + 1])!r} is a symlink; symlinks are not allowed")
        last = i == len(parts) - 1
        if not last or kind == "dir":
            if not stat.S_ISDIR(st.st_mode):
                where = "/".join(parts[: i + 1])
                raise UnsafePath(rel, f"{where!r} is not a folder ({_describe(st.st_mode)})")
        elif not stat.S_ISREG(st.st_mode):
            raise UnsafePath(rel, f"must be a regular file, not {_describe(st.st_mode)}")
    return current


def _describe(mode: int) -> str:
    """A short name for a file type, for messages."""
    for test, name in (
        (stat.S_ISDIR, "a folder"),
        (stat.S_ISREG, "a regular file"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISLNK, "a symlink"),
    ):
        if test(mode):
            return name
    return "an unknown file type"
