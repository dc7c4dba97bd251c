"""Data pipeline on real tar files: brace/glob shard lists, bad samples skipped and counted (also across worker
processes), fail-fast on an all-bad shard set, deterministic order and exact resume positions."""
import json
from collections import Counter
from pathlib import Path

import pytest
import torch
from PIL import Image

import schemas
from trainer.config import TrainSetupError
from trainer.data import (
    NoValidSamplesError,
    StreamSpec,
    TrainBatches,
    decode_samples,
    expand_braces,
    resolve_shards,
    tar_samples,
)
from trainer.synthetic import (
    draw_product,
    jpeg_bytes,
    make_synthetic_release,
    write_tar,
)

GOOD_JPEG = jpeg_bytes(Image.new("RGB", (16, 16), (200, 10, 10)))


def transform(img: Image.Image) -> torch.Tensor:
    """Real (small) transform with randomness, so augmentation seeding is exercised."""
    x = torch.from_numpy(__import__("numpy").asarray(img.resize((8, 8)), dtype="float32")).permute(2, 0, 1)
    return x + torch.rand(1)


def tokenizer(texts: list[str]) -> torch.Tensor:
    return torch.tensor([[len(t), sum(map(ord, t)) % 997] for t in texts])


def good(node_id: int) -> tuple[str, dict[str, bytes]]:
    return f"{node_id:010d}", {"jpg": GOOD_JPEG, "txt": f"item {node_id}".encode(),
                               "json": json.dumps({"node_id": node_id}).encode()}


def bad_samples() -> list[tuple[str, dict[str, bytes]]]:
    key = "{:010d}".format
    return [
        (key(900), {"jpg": b"not a jpeg at all", "txt": b"x", "json": b'{"node_id": 900}'}),
        (key(901), {"jpg": GOOD_JPEG, "json": b'{"node_id": 901}'}),
        (key(902), {"jpg": GOOD_JPEG, "txt": b"x", "json": b"{broken"}),
        (key(903), {"jpg": GOOD_JPEG, "txt": b"x", "json": b'{"asin": "B0"}'}),
        (key(904), {"jpg": GOOD_JPEG[:40], "txt": b"x", "json": b'{"node_id": 904}'}),
        (key(905), {"jpg": GOOD_JPEG, "txt": b"\xff\xfe", "json": b'{"node_id": 905}'}),
        (key(906), {"txt": b"x", "json": b'{"node_id": 906}'}),
    ]


EXPECTED_BAD = {"bad_image": 2, "missing_txt": 1, "bad_json": 2, "bad_text": 1, "missing_jpg": 1}


def test_expand_braces_and_resolve_patterns(tmp_path):
    assert expand_braces("s-{000008..000011}.tar") == [f"s-{i:06d}.tar" for i in range(8, 12)]
    assert expand_braces("{a,b}-{1..2}") == ["a-1", "a-2", "b-1", "b-2"]
    assert expand_braces("plain.tar") == ["plain.tar"]
    for i in range(3):
        write_tar(tmp_path / f"train-{i:06d}.tar", [good(i)])
    assert resolve_shards(shards=str(tmp_path / "train-{000000..000001}.tar")) == [
        str(tmp_path / "train-000000.tar"), str(tmp_path / "train-000001.tar")]
    assert len(resolve_shards(shards=str(tmp_path / "train-*.tar"))) == 3
    with pytest.raises(TrainSetupError, match="train-000005.tar"):
        resolve_shards(shards=str(tmp_path / "train-{000000..000005}.tar"))
    with pytest.raises(TrainSetupError, match="has no manifest.json"):
        resolve_shards(release=str(tmp_path))
    (tmp_path / "manifest.json").write_text(json.dumps({"schema_versions": schemas.schema_versions(), "files": {}}))
    with pytest.raises(TrainSetupError, match="no shards/ folder"):
        resolve_shards(release=str(tmp_path))
    (tmp_path / "shards").mkdir()
    with pytest.raises(TrainSetupError, match="no train-"):
        resolve_shards(release=str(tmp_path))


def test_bad_samples_are_skipped_and_counted_by_reason(tmp_path):
    shard = tmp_path / "mixed.tar"
    write_tar(shard, [good(1), *bad_samples(), good(2)])
    truncated = tmp_path / "truncated.tar"
    truncated.write_bytes(shard.read_bytes()[:2000])
    skipped = Counter()
    valid = list(decode_samples(tar_samples([str(shard), str(truncated), str(tmp_path / "gone.tar")], skipped),
                                skipped))
    assert [s["node_id"] for s in valid][:2] == [1, 2]
    assert valid[0]["meta"] == {"node_id": 1}  # parsed once, handed on (evaluation reads the label from it)
    assert all(s["image"].mode == "RGB" for s in valid)
    assert skipped["bad_shard"] == 2  # truncated + missing file
    assert {k: v for k, v in skipped.items() if k != "bad_shard"} == EXPECTED_BAD


def test_skip_counts_reach_the_main_process_from_a_worker(tmp_path):
    write_tar(tmp_path / "a.tar", [*bad_samples(), *(good(i) for i in range(4))])
    spec = StreamSpec(shards=[str(tmp_path / "a.tar")], batch_size=4, transform=transform, tokenizer=tokenizer,
                      shuffle_buffer=0)
    batches = TrainBatches(spec, workers=1)
    it = iter(batches)
    first = next(it)
    assert first["node_ids"].tolist() == [0, 1, 2, 3]
    assert batches.skipped() == dict(sorted(EXPECTED_BAD.items()))
    next(it)  # second epoch over the same shard counts its bad samples again
    assert batches.skipped() == {k: 2 * v for k, v in sorted(EXPECTED_BAD.items())}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("workers", [0, 2])
def test_all_bad_shards_fail_fast_with_the_reasons(tmp_path, workers):
    for i in range(2):
        write_tar(tmp_path / f"bad-{i}.tar", bad_samples())
    shards = resolve_shards(shards=str(tmp_path / "bad-{0..1}.tar"))
    batches = TrainBatches(StreamSpec(shards=shards, batch_size=2, transform=transform, tokenizer=tokenizer),
                           workers=workers)
    with pytest.raises(NoValidSamplesError) as err:
        next(iter(batches))
    message = str(err.value)
    assert "no valid sample" in message and "bad-" in message and "bad_image=" in message


@pytest.fixture(scope="module")
def release(tmp_path_factory) -> Path:
    return make_synthetic_release(tmp_path_factory.mktemp("rel"), n_nodes=160, shard_size=32, image_size=16)


def stream(release: Path, seed: int, workers: int, consumed: int = 0, n: int = 6) -> list[dict]:
    spec = StreamSpec(shards=resolve_shards(release=str(release)), batch_size=8, transform=transform,
                      tokenizer=tokenizer, seed=seed, shuffle_buffer=20, consumed_batches=consumed)
    it = iter(TrainBatches(spec, workers=workers))
    return [next(it) for _ in range(n)]


def test_order_is_deterministic_and_depends_on_the_seed(release):
    a, b, c = stream(release, 0, 2), stream(release, 0, 2), stream(release, 1, 2)
    for x, y in zip(a, b):
        assert torch.equal(x["node_ids"], y["node_ids"]) and torch.equal(x["images"], y["images"])
    assert any(not torch.equal(x["node_ids"], z["node_ids"]) for x, z in zip(a, c))
    assert a[0]["images"].shape == (8, 3, 8, 8) and a[0]["node_ids"].dtype == torch.long


@pytest.mark.parametrize("workers,consumed", [(0, 3), (2, 3), (2, 4)])
def test_resumed_stream_continues_with_the_exact_next_batches(release, workers, consumed):
    full = stream(release, 0, workers, n=consumed + 3)
    resumed = stream(release, 0, workers, consumed=consumed, n=3)
    for x, y in zip(full[consumed:], resumed):
        assert torch.equal(x["node_ids"], y["node_ids"])
        assert torch.equal(x["images"], y["images"])  # same augmentation draws
        assert torch.equal(x["tokens"], y["tokens"])


def test_more_workers_than_shards_are_capped(release):
    spec = StreamSpec(shards=resolve_shards(release=str(release))[:2], batch_size=4, transform=transform,
                      tokenizer=tokenizer)
    assert TrainBatches(spec, workers=5).workers == 2


def test_synthetic_release_follows_the_contract(release):
    sizes = json.loads((release / "shards" / "sizes.json").read_text())
    assert set(sizes) == {p.name for p in (release / "shards").glob("*.tar")}
    assert sum(v for k, v in sizes.items()) == 160
    labels = json.loads((release / "labels.json").read_text())
    assert {"level", "classes"} <= set(labels) and len(labels["classes"]) == 8
    skipped = Counter()
    sample = next(decode_samples(tar_samples(resolve_shards(release=str(release))[:1], skipped), skipped))
    assert sample["image"].size == (16, 16) and not skipped
    draw_product(3, "red", 16, __import__("numpy").random.default_rng(0))
