"""Shards and release files behind a URL: fsspec URLs (`file://`, `http(s)://`, `s3://`, `gs://`, `hf://`, ...) and
webdataset's `pipe:CMD` form, next to plain local paths.

Shards are read as streams (never downloaded whole first): `open_shard` gives a binary file object that
`trainer.data.tar_samples` reads with tarfile's stream mode, which detects truncation by itself (short member read,
missing end-of-archive marker), so a stream needs no file size. HTTP reads time out after `SLIP_REMOTE_TIMEOUT_S`
seconds without a byte (default 60), so a stalled server costs one `bad_shard`, never a hang. The cloud protocols
only need their fsspec backend installed; a missing one is a `TrainSetupError` naming the package to install.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import os
import subprocess
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Iterator

from trainer.config import TrainSetupError

PIPE_PREFIX = "pipe:"
DEFAULT_TIMEOUT_S = 60.0
_HTTP = ("http", "https")
_EXISTS_THREADS = 16


def timeout_s() -> float:
    """Seconds an HTTP connect or read may wait for a byte (env `SLIP_REMOTE_TIMEOUT_S`; tests set it low)."""
    try:
        return float(os.environ.get("SLIP_REMOTE_TIMEOUT_S", DEFAULT_TIMEOUT_S))
    except ValueError:
        return DEFAULT_TIMEOUT_S


def is_pipe(location: str) -> bool:
    return location.startswith(PIPE_PREFIX)


def is_url(location: str) -> bool:
    """A fsspec URL (`scheme://...`) or a `pipe:` command, as opposed to a local path."""
    return "://" in location or is_pipe(location)


def protocol(url: str) -> str:
    return url.split("://", 1)[0].lower() if "://" in url else "file"


def backend_error(url: str, flag: str) -> str | None:
    """Why `url` cannot be read here (its fsspec backend is missing or the protocol unknown), or None."""
    import fsspec
    from fsspec.registry import known_implementations

    proto = protocol(url)
    try:
        fsspec.get_filesystem_class(proto)
    except ImportError:
        package = known_implementations.get(proto, {}).get("class", proto).split(".")[0]
        if proto in _HTTP:
            package = "aiohttp"
        return f"{flag} {url}: reading {proto}:// URLs needs the {package} package (pip install {package})"
    except ValueError:
        return f"{flag} {url}: unknown protocol {proto}:// (use a local path, file://, http(s)://, s3://, gs://, " \
               f"hf://, another fsspec protocol, or pipe:CMD)"
    return None


def filesystem(url: str) -> tuple[Any, str]:
    """(fsspec filesystem, path inside it) for `url`; HTTP gets connect/read timeouts."""
    import fsspec

    options: dict[str, Any] = {}
    if protocol(url) in _HTTP:
        import aiohttp

        limit = timeout_s()
        options["client_kwargs"] = {"timeout": aiohttp.ClientTimeout(total=None, sock_connect=limit,
                                                                     sock_read=limit)}
    return fsspec.core.url_to_fs(url, **options)


def stream_errors() -> tuple[type[BaseException], ...]:
    """Exceptions a shard stream raises when the remote side fails mid-read (counted as `bad_shard`)."""
    errors: list[type[BaseException]] = [OSError, EOFError, asyncio.TimeoutError, concurrent.futures.TimeoutError]
    try:
        import aiohttp
        errors.append(aiohttp.ClientError)
    except ImportError:  # pragma: no cover - aiohttp is a core dependency
        pass
    try:
        from fsspec.exceptions import FSTimeoutError
        errors.append(FSTimeoutError)
    except ImportError:  # pragma: no cover
        pass
    return tuple(errors)


@contextmanager
def open_shard(shard: str) -> Iterator[IO[bytes]]:
    """A binary stream of `shard`: a local path, a fsspec URL (streamed) or `pipe:CMD` (the command's stdout;
    a non-zero exit status is an OSError at close, so the shard counts as bad)."""
    if is_pipe(shard):
        with _pipe(shard[len(PIPE_PREFIX):]) as stream:
            yield stream
    elif "://" in shard:
        fs, path = filesystem(shard)
        extra = {"block_size": 0} if protocol(shard) in _HTTP else {}  # HTTP: one streamed GET, no Range reads
        with fs.open(path, "rb", **extra) as stream:
            yield stream
    else:
        with open(shard, "rb") as stream:
            yield stream


@contextmanager
def _pipe(command: str) -> Iterator[IO[bytes]]:
    proc = subprocess.Popen(command, shell=True, stdout=subprocess.PIPE)
    assert proc.stdout is not None
    finished = False
    try:
        yield proc.stdout
        finished = True
    finally:
        if not finished:
            proc.kill()
        proc.stdout.close()
        status = proc.wait()
    if status != 0:
        raise OSError(f"pipe:{command} exited with status {status}")


def expand_url(pattern: str, flag: str = "--shards") -> list[str]:
    """URLs matching one (brace-expanded) URL: a glob where the filesystem can list, else the URL itself if it
    exists. `pipe:` commands are taken as they are. Missing backend or unreachable host -> TrainSetupError."""
    if is_pipe(pattern):
        return [pattern]
    problem = backend_error(pattern, flag)
    if problem is not None:
        raise TrainSetupError(problem)
    fs, path = filesystem(pattern)
    try:
        if any(c in path for c in "*?["):
            return sorted(fs.unstrip_protocol(p) for p in fs.glob(path))
        return [pattern] if fs.exists(path) else []
    except (NotImplementedError, ValueError) as exc:
        raise TrainSetupError(f"{flag} {pattern}: this filesystem cannot list files ({exc}); name the shards with "
                              f"a brace range instead ('train-{{000000..000031}}.tar')") from None
    except stream_errors() as exc:
        raise TrainSetupError(f"{flag} {pattern}: cannot reach it ({type(exc).__name__}: {exc})") from None


def expand_urls(patterns: list[str], flag: str = "--shards") -> list[list[str]]:
    """`expand_url` of each pattern, checked concurrently (one HEAD request per shard on HTTP), in input order."""
    for pattern in patterns[:1]:  # a missing backend is reported once, before any thread starts
        problem = None if is_pipe(pattern) else backend_error(pattern, flag)
        if problem is not None:
            raise TrainSetupError(problem)
    with concurrent.futures.ThreadPoolExecutor(min(_EXISTS_THREADS, max(len(patterns), 1))) as pool:
        return list(pool.map(lambda p: expand_url(p, flag), patterns))


def download(url: str, dest: Path) -> None:
    """Copy a small remote file (a release's manifest, tables, sizes) to `dest` atomically."""
    from slipio.atomic import atomic_path

    fs, path = filesystem(url)
    with atomic_path(dest) as tmp, fs.open(path, "rb") as src, open(tmp, "wb") as out:
        while chunk := src.read(1 << 20):
            out.write(chunk)


def cache_root() -> Path:
    """Where small files of remote releases are kept: `SLIP_CACHE_DIR`, else `$XDG_CACHE_HOME/slip-kit`."""
    explicit = os.environ.get("SLIP_CACHE_DIR")
    if explicit:
        return Path(explicit)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "slip-kit"

