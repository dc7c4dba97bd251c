"""WebDataset input pipeline in small generator stages (no webdataset/open_clip grouping, which raises
KeyError 'fname' with newer webdataset).

    resolve_shards -> epoch_shards -> split_by_node -> split_by_worker -> tar_samples -> decode_samples
      -> shuffle_buffer -> (skip on resume) -> to_batches

Bad samples (missing member, undecodable JPEG, bad JSON, unreadable shard) are skipped and counted by reason; every
batch carries its worker's cumulative counts, so the main process sees them. A worker whose whole pass over its
shards yields no valid sample raises `NoValidSamplesError` (names the shards and the reasons) instead of spinning.

Determinism: the sample order depends only on the shard list, --seed, rank and (logical) worker; augmentation is
seeded per sample. On resume each worker replays its raw stream and drops the samples it already delivered
(without transforming them), and workers are rotated so the next batch comes from the same worker as it would
have in an uninterrupted run. So a resumed run sees exactly the batches of an uninterrupted one.
"""
from __future__ import annotations

import glob
import hashlib
import io
import itertools
import json
import random
import re
import tarfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional

import torch
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from trainer import remote
from trainer.config import TrainSetupError
from trainer.release import Release

Sample = dict[str, Any]
_MEMBER_NAME = re.compile(r"^((?:.*/|)[^./]+)\.([^/]*)$")  # <key>.<ext>, key without dots (webdataset's rule)
_RANGE = re.compile(r"^(\d+)\.\.(\d+)$")


class NoValidSamplesError(RuntimeError):
    """A full pass over a worker's shards yielded no usable sample."""


# ---- shard lists ------------------------------------------------------------------------------------------------
def expand_braces(pattern: str) -> list[str]:
    """Expand `{000000..000031}` ranges (zero padding kept) and `{a,b}` alternatives, left to right."""
    match = re.search(r"\{([^{}]*)\}", pattern)
    if match is None:
        return [pattern]
    body = match.group(1)
    if (rng := _RANGE.match(body)) is not None:
        lo, hi = rng.group(1), rng.group(2)
        width = len(lo) if lo.startswith("0") else 0
        step = 1 if int(hi) >= int(lo) else -1
        choices = [str(i).zfill(width) for i in range(int(lo), int(hi) + step, step)]
    else:
        choices = body.split(",")
    head, tail = pattern[:match.start()], pattern[match.end():]
    return [expanded for c in choices for expanded in expand_braces(head + c + tail)]


def resolve_shards(release: Optional[str] = None, shards: Optional[str] = None, split: str = "train") -> list[str]:
    """Shard paths or URLs of a release's split (`Release.shards`) or of a brace/glob pattern (a local path, a
    fsspec URL or `pipe:CMD`, see trainer.remote); missing -> clear error naming what is missing."""
    if release is not None:
        return Release(release).shards(split)
    if shards is None:
        raise TrainSetupError("give --release or --shards")
    patterns = expand_braces(shards)
    if any(remote.is_url(p) for p in patterns):
        hits_per_pattern = remote.expand_urls(patterns)
    else:
        hits_per_pattern = [sorted(glob.glob(p)) if glob.has_magic(p) else ([p] if Path(p).is_file() else [])
                            for p in patterns]
    found = [hit for hits in hits_per_pattern for hit in hits]
    missing = [p for p, hits in zip(patterns, hits_per_pattern) if not hits]
    if missing:
        shown = ", ".join(missing[:5]) + (f" (+{len(missing) - 5} more)" if len(missing) > 5 else "")
        raise TrainSetupError(f"--shards {shards!r}: no file matches {shown}")
    return list(dict.fromkeys(found))


# ---- stages -----------------------------------------------------------------------------------------------------
def epoch_shards(shards: list[str], seed: int, epoch: int, shuffle: bool) -> list[str]:
    """The shard order of one epoch (same on every rank and worker)."""
    order = list(shards)
    if shuffle:
        random.Random(f"shards:{seed}:{epoch}").shuffle(order)
    return order


def split_by_node(shards: list[str], rank: int, world_size: int) -> list[str]:
    return shards[rank::world_size]


def split_by_worker(shards: list[str], worker: int, num_workers: int) -> list[str]:
    return shards[worker::num_workers]


def tar_samples(shards: Iterable[str], skipped: Counter) -> Iterator[Sample]:
    """Group consecutive `<key>.<ext>` tar members into samples; shards are local paths, fsspec URLs or `pipe:CMD`
    (`trainer.remote.open_shard`), all read as one forward stream.

    An unreadable or truncated shard counts once as `bad_shard`; its samples before the damage are kept, the
    sample being read when it was hit is dropped. tarfile's stream mode takes a cut at a header for a clean end,
    so truncation is checked on the stream itself: a member read short, or fewer than the two zero blocks of the
    end-of-archive marker after the last member.
    """
    errors = (*remote.stream_errors(), tarfile.TarError)
    for shard in shards:
        current: Optional[Sample] = None
        try:
            with remote.open_shard(shard) as raw:
                stream = _CountingReader(raw)
                with tarfile.open(fileobj=stream, mode="r|") as tar:
                    for member in tar:
                        match = _MEMBER_NAME.match(member.name)
                        if not member.isfile() or match is None:
                            continue
                        key, ext = match.group(1), match.group(2).lower()
                        data = tar.extractfile(member).read()  # short read: ReadError("unexpected end of data")
                        if current is None or current["__key__"] != key:
                            if current is not None:
                                yield current
                            current = {"__key__": key, "__shard__": shard}
                        current[ext] = data
                    end = tar.offset + 2 * tarfile.BLOCKSIZE
                while stream.total < end and stream.read(end - stream.total):
                    pass
                if stream.total < end:
                    raise tarfile.ReadError("no end-of-archive marker")
        except errors:
            skipped["bad_shard"] += 1
            current = None
        if current is not None:
            yield current


class _CountingReader(io.RawIOBase):
    """Counts the bytes read through it, so the end-of-archive check needs no file size (streams have none)."""

    def __init__(self, raw: Any):
        super().__init__()
        self.raw = raw
        self.total = 0

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        data = self.raw.read(size)
        self.total += len(data)
        return data

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[:len(data)] = data
        return len(data)


def decode_samples(samples: Iterable[Sample], skipped: Counter) -> Iterator[Sample]:
    """Validate and decode: RGB PIL image, caption str, int node_id and the parsed `.json` member (`meta`, so no
    later stage parses it again). Bad ones are counted."""
    for sample in samples:
        missing = [ext for ext in ("jpg", "txt", "json") if ext not in sample]
        if missing:
            skipped[f"missing_{missing[0]}"] += 1
            continue
        try:
            meta = json.loads(sample["json"])
            node_id = int(meta["node_id"])
        except (ValueError, TypeError, KeyError, UnicodeDecodeError):
            skipped["bad_json"] += 1
            continue
        try:
            caption = sample["txt"].decode("utf-8").strip()
        except UnicodeDecodeError:
            skipped["bad_text"] += 1
            continue
        if not caption:
            skipped["empty_text"] += 1
            continue
        try:
            with Image.open(io.BytesIO(sample["jpg"])) as img:
                image = img.convert("RGB")
        except Exception:  # PIL raises many types (OSError, SyntaxError, DecompressionBombError, ...)
            skipped["bad_image"] += 1
            continue
        yield {"key": sample["__key__"], "shard": sample["__shard__"], "image": image, "caption": caption,
               "node_id": node_id, "meta": meta}


def shuffle_buffer(samples: Iterable[Sample], size: int, rng: random.Random) -> Iterator[Sample]:
    """Reservoir-style shuffle: fill `size` samples, then emit a random one per incoming sample; drain at the end."""
    if size <= 1:
        yield from samples
        return
    buffer: list[Sample] = []
    for sample in samples:
        if len(buffer) < size:
            buffer.append(sample)
            continue
        i = rng.randrange(len(buffer))
        buffer[i], sample = sample, buffer[i]
        yield sample
    rng.shuffle(buffer)
    yield from buffer


def to_batches(samples: Iterable[Sample], batch_size: int, transform: Callable, tokenizer: Callable,
               sample_seed: Optional[Callable[[int], int]], first_index: int) -> Iterator[dict[str, Any]]:
    """Transform + tokenize into batches. `sample_seed(i)` seeds the augmentation of the worker's i-th sample."""
    index = first_index
    for chunk in _chunks(samples, batch_size):
        images = []
        for sample in chunk:
            if sample_seed is None:
                images.append(transform(sample["image"]))
            else:
                # seed only the CPU generator: torch.manual_seed also queues a lazy CUDA call (~0.4 ms each)
                with torch.random.fork_rng(devices=[]):
                    torch.default_generator.manual_seed(sample_seed(index))
                    images.append(transform(sample["image"]))
            index += 1
        yield {"images": torch.stack(images), "tokens": tokenizer([s["caption"] for s in chunk]),
               "node_ids": torch.tensor([s["node_id"] for s in chunk], dtype=torch.long),
               "keys": [s["key"] for s in chunk]}


def _chunks(samples: Iterable[Sample], size: int) -> Iterator[list[Sample]]:
    iterator = iter(samples)
    while chunk := list(itertools.islice(iterator, size)):
        if len(chunk) == size:
            yield chunk


# ---- dataset ----------------------------------------------------------------------------------------------------
@dataclass
class StreamSpec:
    shards: list[str]
    batch_size: int
    transform: Callable
    tokenizer: Callable
    seed: int = 0
    shuffle_buffer: int = 256
    shard_shuffle: bool = True
    augment: bool = True
    rank: int = 0
    world_size: int = 1
    num_workers: int = 1  # logical workers (= DataLoader workers, at least 1)
    consumed_batches: int = 0  # batches the main process already trained on (resume)


class ShardStream(IterableDataset):
    """Endless stream of batches for one (rank, logical worker); epochs follow each other inside the stream."""

    def __init__(self, spec: StreamSpec):
        super().__init__()
        self.spec = spec

    def logical_worker(self) -> int:
        info = get_worker_info()
        physical = info.id if info is not None else 0
        return (physical + self.spec.consumed_batches) % self.spec.num_workers

    def __iter__(self) -> Iterator[dict[str, Any]]:
        spec = self.spec
        worker = self.logical_worker()
        skipped: Counter = Counter()
        done = spec.consumed_batches // spec.num_workers + (worker < spec.consumed_batches % spec.num_workers)
        to_skip = done * spec.batch_size
        samples = itertools.islice(self._samples(worker, skipped), to_skip, None)

        def sample_seed(i: int) -> int:  # stable across processes (str hashes are salted per process)
            digest = hashlib.blake2b(f"augment:{spec.seed}:{spec.rank}:{worker}:{i}".encode(), digest_size=8)
            return int.from_bytes(digest.digest(), "little") & 0x7FFF_FFFF_FFFF_FFFF

        for batch in to_batches(samples, spec.batch_size, spec.transform, spec.tokenizer,
                                sample_seed if spec.augment else None, first_index=to_skip):
            batch["worker"] = worker
            batch["skipped"] = dict(skipped)
            yield batch

    def _samples(self, worker: int, skipped: Counter) -> Iterator[Sample]:
        spec = self.spec
        for epoch in itertools.count():
            shards = split_by_worker(
                split_by_node(epoch_shards(spec.shards, spec.seed, epoch, spec.shard_shuffle),
                              spec.rank, spec.world_size), worker, spec.num_workers)
            rng = random.Random(f"buffer:{spec.seed}:{spec.rank}:{worker}:{epoch}")
            valid = 0
            for sample in shuffle_buffer(decode_samples(tar_samples(shards, skipped), skipped),
                                         spec.shuffle_buffer, rng):
                valid += 1
                yield sample
            if valid == 0:
                reasons = ", ".join(f"{k}={v}" for k, v in sorted(skipped.items())) or "no samples at all"
                raise NoValidSamplesError(
                    f"no valid sample in a full pass over {len(shards)} shard(s) "
                    f"[{', '.join(shards[:8])}{' ...' if len(shards) > 8 else ''}] "
                    f"(rank {spec.rank}, worker {worker}); skipped: {reasons}")


class TrainBatches:
    """Main-process side: the DataLoader, the data position and the skip counters of all workers."""

    def __init__(self, spec: StreamSpec, workers: int, pin_memory: bool = False):
        shards_here = len(split_by_node(spec.shards, spec.rank, spec.world_size))
        if shards_here == 0:
            raise TrainSetupError(f"rank {spec.rank} of {spec.world_size} gets no shard ({len(spec.shards)} shards)")
        # a worker without shards would have nothing to yield: cap workers at the rank's shard count
        self.workers = min(workers, shards_here)
        spec.num_workers = max(self.workers, 1)
        self.spec = spec
        self.consumed = spec.consumed_batches
        self._skipped_by_worker: dict[int, dict[str, int]] = {}
        # own generator: starting the loader must not consume the global torch RNG (resume exactness)
        self.loader = DataLoader(ShardStream(spec), batch_size=None, num_workers=self.workers,
                                 pin_memory=pin_memory, persistent_workers=False,
                                 generator=torch.Generator().manual_seed(spec.seed))

    def __iter__(self) -> Iterator[dict[str, Any]]:
        batches = iter(self.loader)
        try:
            for batch in batches:
                self._skipped_by_worker[batch["worker"]] = batch["skipped"]
                self.consumed += 1
                yield batch
        finally:
            # stop worker processes now: left to garbage collection after a worker error, each join times out (5 s)
            shutdown = getattr(batches, "_shutdown_workers", None)
            if shutdown is not None:
                shutdown()

    def skipped(self) -> dict[str, int]:
        """Skipped samples by reason, summed over workers (as of each worker's latest batch)."""
        total: Counter = Counter()
        for counts in self._skipped_by_worker.values():
            total.update(counts)
        return dict(sorted(total.items()))

    def position(self) -> dict[str, int]:
        """What a checkpoint needs to resume the stream exactly."""
        return {"consumed_batches": self.consumed, "num_workers": self.spec.num_workers,
                "batch_size": self.spec.batch_size}
