"""Stage `fetch`: download the source's raw files, resumably, and record their sha256.

Raw files are large (the 2023 Electronics reviews are gigabytes) and the network is not always kind, so:
- bytes stream into `<file>.part`; a rerun resumes it with `Range: bytes=N-` (`If-Range` with the ETag or
  Last-Modified seen before, so a file that changed upstream restarts instead of being spliced);
- a 200 answering a Range restarts, a 416 means the .part is complete (checked against the length) or stale;
- the size is checked against Content-Length / Content-Range; connection errors, timeouts, 429 and 5xx are retried
  with backoff (Retry-After honoured), and the budget (`fetch.retries`) counts consecutive attempts that brought
  no new bytes, so a long download over a flaky link is not abandoned while it still progresses;
- the finished .part is fsynced and renamed onto the final name, then `<file>.done` records bytes, sha256 and
  mtime: a file with a matching `.done` is never downloaded again (a later run only re-hashes it if its mtime moved);
- a local folder or `file://` base is copied with the same .part / resume / rename / .done rules.
A file that cannot be fetched stops the build (StageError): nothing downstream can work without it.
"""
from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit
from urllib.request import url2pathname

import httpx

from etl.core.stage import Counts, StageContext, StageError, StageResult
from etl.net.http import (
    BlockedURL,
    RetryPolicy,
    TooManyRedirects,
    UnresolvableHost,
    is_retriable,
    retry_after,
    stream_checked,
    sync_client,
)
from slipio import atomic
from slipio.hashing import file_sha256

VERSION = "1"

OFFLINE_HINT = ("If you are offline or the source is unreachable, use `--source sample` (the embedded sample) or "
                "`--mirror BASE` (a folder or http(s) URL holding the same relative paths)")


@dataclass
class Fetched:
    """What the record says about one raw file (stats and provenance)."""

    name: str
    url: str
    path: str
    bytes: int
    sha256: str
    resumed_from: int
    downloaded_bytes: int
    reused: bool
    attempts: int


class _Retry(Exception):
    """An attempt failed in a way worth retrying; `wait` overrides the backoff (Retry-After, or 0 to restart)."""

    def __init__(self, reason: str, wait: float | None = None) -> None:
        super().__init__(reason)
        self.wait = wait


def run(ctx: StageContext) -> StageResult:
    source = ctx.cfg.source(ctx.opts.source)
    category = ctx.cfg.category_name(ctx.opts.category, ctx.opts.source)
    base = ctx.opts.mirror or ctx.cfg.base_url
    files = {name: template.format(Category=category) for name, template in sorted(source.files.items())}
    fetched: list[Fetched] = []
    with _origin(base, ctx, category) as copy_into:
        for name, rel in files.items():
            fetched.append(_fetch_one(ctx, name, rel, copy_into))
    outputs = {f.name: ctx.out_dir / f.path for f in fetched}
    raw = [{"name": f.name, "url": f.url, "path": f.path, "bytes": f.bytes, "sha256": f.sha256} for f in fetched]
    stats = {
        "base": _redact(base),
        "files": {f.name: asdict(f) for f in fetched},
        "bytes": sum(f.bytes for f in fetched),
        "downloaded_bytes": sum(f.downloaded_bytes for f in fetched),
        "reused": sum(f.reused for f in fetched),
    }
    provenance = {"source": ctx.opts.source, "category": category, "base": _redact(base), "raw": raw}
    return StageResult(outputs=outputs, counts=Counts(input=len(files), kept=len(fetched)), stats=stats,
                       provenance=provenance, known_hashes={f.name: (f.sha256, f.bytes) for f in fetched})


# A "copier" moves one relative path's bytes into a .part file (resuming it) and returns
# (url, resumed_from, downloaded_bytes, attempts).
Copier = Callable[[str, Path, Any], tuple[str, int, int, int]]


def _fetch_one(ctx: StageContext, name: str, rel: str, copy_into: Copier) -> Fetched:
    if Path(rel).is_absolute() or ".." in Path(rel).parts:
        raise StageError(f"source file path {rel!r} must be relative and stay inside the fetch folder; fix "
                         f"sources.{ctx.opts.source}.files.{name} in the config")
    dest = ctx.out_dir / rel
    dest.parent.mkdir(parents=True, exist_ok=True)
    done = _reusable(dest)
    if done is not None:
        ctx.log.info("fetch %s: %s already complete (%d bytes), not downloaded again", name, rel, done["bytes"])
        return Fetched(name, done["url"], rel, done["bytes"], done["sha256"], 0, 0, True, 0)
    part = _part(dest)
    if dest.exists():  # renamed but killed before .done: resume it as a .part, which verifies it cheaply
        os.replace(dest, part)
    with ctx.progress(total=None, desc=f"fetch {Path(rel).name}", unit="B", unit_scale=True,
                      unit_divisor=1024) as bar:
        url, resumed_from, downloaded, attempts = copy_into(rel, part, bar)
    digest, size = _finalize(part, dest, url)
    ctx.log.info("fetch %s: %s, %d bytes (resumed from %d), sha256 %s", name, _redact(url), size, resumed_from,
                 digest[:16])
    return Fetched(name, _redact(url), rel, size, digest, resumed_from, downloaded, False, attempts)


@contextmanager
def _origin(base: str, ctx: StageContext, category: str) -> Iterator[Copier]:
    """A copier for `base`: http(s) download, or a copy from a local folder / file:// URL."""
    scheme = urlsplit(base).scheme.lower()
    if scheme in ("http", "https"):
        allow = tuple(dict.fromkeys(tuple(ctx.cfg.http.allow_hosts) + tuple(ctx.opts.allow_hosts)))
        with sync_client(ctx.cfg.http, allow, max_connections=2) as client:
            yield _HttpCopier(ctx, client, base, allow, category)
        return
    if scheme == "file":
        parts = urlsplit(base)
        if parts.netloc not in ("", "localhost"):
            raise StageError(f"mirror {base}: file:// URLs must name a local path (file:///path/to/folder)")
        folder = Path(url2pathname(parts.path))
    elif scheme and len(scheme) > 1:
        raise StageError(f"mirror {base}: scheme {scheme}:// not supported; use an http(s) URL, a local folder or "
                         "a file:// URL")
    else:
        folder = Path(base).expanduser()
    if not folder.is_dir():
        raise StageError(f"mirror folder {folder} does not exist. {OFFLINE_HINT}")
    yield _LocalCopier(folder.resolve(), ctx.cfg.fetch.chunk_bytes, category)


class _LocalCopier:
    """Copy from a local folder with the same .part / resume rules as a download."""

    def __init__(self, folder: Path, chunk: int, category: str) -> None:
        self.folder, self.chunk, self.category = folder, chunk, category

    def __call__(self, rel: str, part: Path, bar: Any) -> tuple[str, int, int, int]:
        src = self.folder / rel
        if not src.is_file():
            raise StageError(f"{src} not found: the mirror folder has no {rel} for category {self.category!r}. "
                             f"A mirror must hold the source's relative paths; {OFFLINE_HINT}")
        size = src.stat().st_size
        offset = _size(part)
        if offset > size:
            offset = 0
        bar.reset(total=size)
        bar.update(offset)
        with open(src, "rb") as fin, open(part, "ab" if offset else "wb") as fout:
            fin.seek(offset)
            while block := fin.read(self.chunk):
                fout.write(block)
                bar.update(len(block))
        if _size(part) != size:
            raise StageError(f"{src} changed while it was copied ({_size(part)} != {size} bytes); run again")
        return src.as_uri(), offset, size - offset, 1


class _HttpCopier:
    """Resumable download of one URL into a .part file, with retries (see the module docstring)."""

    def __init__(self, ctx: StageContext, client: httpx.Client, base: str, allow_hosts: tuple[str, ...],
                 category: str) -> None:
        self.ctx, self.client, self.allow_hosts, self.category = ctx, client, allow_hosts, category
        self.base = base if base.endswith("/") else base + "/"
        self.policy = RetryPolicy.from_config(ctx.cfg.fetch)
        self.max_redirects = ctx.cfg.http.max_redirects

    def __call__(self, rel: str, part: Path, bar: Any) -> tuple[str, int, int, int]:
        url = self.base + quote(rel)
        self._kept_prefix = _size(part)  # bytes of an earlier run's .part still in use (0 once restarted)
        self._written = 0
        attempts = failures = 0
        while True:
            attempts += 1
            before = _size(part)
            try:
                self._attempt(url, rel, part, bar)
                return url, self._kept_prefix, self._written, attempts
            except _Retry as exc:
                reason, wait = str(exc), exc.wait
            except (httpx.TransportError, UnresolvableHost) as exc:
                reason, wait = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__, None
            except BlockedURL as exc:
                raise StageError(f"{exc.url} is refused by the URL-safety rules ({exc.reason}). If you trust this "
                                 "host (e.g. your own mirror), pass --allow-host HOST") from None
            except TooManyRedirects as exc:
                raise StageError(f"{_redact(url)}: {exc}") from None
            failures = 0 if _size(part) > before else failures + 1
            if failures > self.policy.retries:
                raise StageError(f"cannot download {_redact(url)}: {reason} (after {attempts} attempts). "
                                 f"{OFFLINE_HINT}")
            delay = wait if wait is not None and wait <= 0 else self.policy.delay(failures or 1, wait)
            budget = f"retry {failures}/{self.policy.retries}" if failures else "progress made, retrying"
            self.ctx.log.warning("fetch %s: %s; %s in %.1fs", rel, reason, budget, delay)
            time.sleep(delay)

    def _attempt(self, url: str, rel: str, part: Path, bar: Any) -> None:
        """One request; returns when the .part is complete, raises _Retry (or StageError) otherwise."""
        offset = _size(part)
        headers = {"Accept-Encoding": "identity"}
        if offset:
            headers["Range"] = f"bytes={offset}-"
            validator = _load_validator(part)
            if validator:
                headers["If-Range"] = validator
        with stream_checked(self.client, url, allow_hosts=self.allow_hosts, max_redirects=self.max_redirects,
                            headers=headers) as response:
            status = response.status_code
            if status == 416 and offset:
                self._after_416(url, part, offset, response)
                return
            if status in (404, 410):
                raise StageError(f"{_redact(url)} not found (HTTP {status}): the source has no {rel} for category "
                                 f"{self.category!r}. Check --category/--source, or that the mirror holds the same "
                                 "relative paths")
            if is_retriable(status):
                raise _Retry(f"HTTP {status}", retry_after(response))
            if status == 206 and offset:
                start, total = _content_range(response.headers.get("content-range"))
                length = _content_length(response)
                if total is None and length is not None:
                    total = offset + length
                if start != offset:
                    self._restart(part)
                    raise _Retry(f"server answered Range {offset}- with {start}-; restarting", 0.0)
                mode = "ab"
            elif status == 200:
                if offset:
                    self.ctx.log.warning("fetch %s: server ignored the Range request; restarting from 0", rel)
                    offset = 0
                self._kept_prefix = 0
                total = _content_length(response)
                mode = "wb"
                _save_validator(part, response)
            else:
                raise StageError(f"{_redact(url)}: unexpected HTTP {status} {response.reason_phrase}")
            bar.reset(total=total)
            bar.update(offset)
            with open(part, mode) as fh:
                for block in response.iter_raw():  # as received: a failure loses nothing already read
                    fh.write(block)
                    self._written += len(block)
                    bar.update(len(block))
        size = _size(part)
        if total is not None and size < total:
            raise _Retry(f"body ended at byte {size} of {total}")
        if total is not None and size > total:
            self._restart(part)
            raise _Retry(f"got {size} bytes, more than the announced {total}; restarting", 0.0)

    def _restart(self, part: Path) -> None:
        _truncate(part)
        self._kept_prefix = 0

    def _after_416(self, url: str, part: Path, offset: int, response: httpx.Response) -> None:
        """The server has nothing after `offset`: the .part is complete if its size is the file's size."""
        _, total = _content_range(response.headers.get("content-range"))
        if total is None:
            with stream_checked(self.client, url, allow_hosts=self.allow_hosts, max_redirects=self.max_redirects,
                                method="HEAD", headers={"Accept-Encoding": "identity"}) as head:
                total = _content_length(head) if head.status_code == 200 else None
        if total == offset:
            return
        self._restart(part)
        raise _Retry(f"range {offset}- not satisfiable (file is {total} bytes); restarting", 0.0)


def _part(dest: Path) -> Path:
    return dest.with_name(dest.name + ".part")


def _done(dest: Path) -> Path:
    return dest.with_name(dest.name + ".done")


def _validator_file(part: Path) -> Path:
    return part.with_name(part.name + ".json")


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _truncate(part: Path) -> None:
    part.unlink(missing_ok=True)
    _validator_file(part).unlink(missing_ok=True)


def _save_validator(part: Path, response: httpx.Response) -> None:
    """Remember what identifies this version of the file, for If-Range on resume (strong ETag, else date)."""
    etag = response.headers.get("etag")
    validator = etag if etag and not etag.startswith("W/") else response.headers.get("last-modified")
    if validator:
        atomic.write_json(_validator_file(part), {"if_range": validator})
    else:
        _validator_file(part).unlink(missing_ok=True)


def _load_validator(part: Path) -> str | None:
    try:
        return json.loads(_validator_file(part).read_text())["if_range"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _content_length(response: httpx.Response) -> int | None:
    try:
        return int(response.headers["content-length"])
    except (KeyError, ValueError):
        return None


def _content_range(value: str | None) -> tuple[int | None, int | None]:
    """(first byte, total) from `bytes 10-99/100` or `bytes */100`; None where absent or unknown."""
    if not value or not value.strip().lower().startswith("bytes "):
        return None, None
    span, _, total = value.strip()[6:].partition("/")
    first = span.split("-", 1)[0].strip()
    return (int(first) if first.isdigit() else None), (int(total) if total.strip().isdigit() else None)


def _finalize(part: Path, dest: Path, url: str) -> tuple[str, int]:
    """fsync, rename onto the final name, then write the .done sidecar that marks it complete."""
    with open(part, "rb") as fh:
        os.fsync(fh.fileno())
    digest, size = file_sha256(part)
    os.replace(part, dest)
    atomic.fsync_dir(dest.parent)
    _validator_file(part).unlink(missing_ok=True)
    atomic.write_json(_done(dest), {"url": _redact(url), "bytes": size, "sha256": digest,
                                    "mtime_ns": dest.stat().st_mtime_ns})
    return digest, size


def _reusable(dest: Path) -> dict[str, Any] | None:
    """The .done record of a complete earlier download, or None (and stale leftovers removed)."""
    try:
        done = json.loads(_done(dest).read_text())
        size, digest, mtime = int(done["bytes"]), str(done["sha256"]), int(done["mtime_ns"])
    except (OSError, ValueError, KeyError, TypeError):
        _done(dest).unlink(missing_ok=True)
        return None
    stat = dest.stat() if dest.exists() else None
    if stat is not None and stat.st_size == size and (stat.st_mtime_ns == mtime or file_sha256(dest)[0] == digest):
        return done
    dest.unlink(missing_ok=True)  # changed or gone: download it afresh
    _done(dest).unlink(missing_ok=True)
    return None


def _redact(url: str) -> str:
    """The URL without user:password (a mirror's credentials must not land in records or logs)."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))


__all__ = ["run", "Fetched", "OFFLINE_HINT"]
