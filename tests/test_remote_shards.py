"""Remote shards and releases (trainer.remote): a release served over loopback HTTP, shards as http(s) brace
patterns, file:// globs and pipe: commands train on exactly the batches of the local run; a server that cuts or
stalls a shard costs one bad_shard and no hang; missing URLs, missing fsspec backends and unsafe manifest paths are
one-line errors (exit 2)."""
import importlib.util
import json
import shlex
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers.servers import Cut, FaultServer, Serve, Trickle
from helpers.training import make_train_assets, train_args
from trainer.cli import train_main
from trainer.config import TrainConfig, TrainSetupError
from trainer.data import StreamSpec, TrainBatches, resolve_shards, tar_samples
from trainer.loop import train
from trainer.release import Release, ReleaseError
from trainer.run_io import read_log

pytestmark = pytest.mark.usefixtures("one_torch_thread")
STEPS = 3


def release_routes(release: Path, prefix: str = "/rel") -> dict:
    return {f"{prefix}/{p.relative_to(release).as_posix()}": Serve(p.read_bytes())
            for p in release.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    return make_train_assets(tmp_path_factory.mktemp("remote"), n_nodes=200)


@pytest.fixture(scope="module")
def server(assets):
    with FaultServer(release_routes(assets["release"])) as srv:
        yield srv


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("SLIP_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("SLIP_REMOTE_TIMEOUT_S", "2")


def digests(run: Path) -> list[str]:
    return [r["data_digest"] for r in read_log(run)]


@pytest.fixture(scope="module")
def local_run(assets) -> list[str]:
    out = assets["root"] / "local"
    train(TrainConfig(**train_args(assets, out, steps=STEPS, ckpt_every=STEPS)))
    return digests(out)


def train_shards(assets, out: Path, **source) -> list[str]:
    """A clip run (no graph needed) on `source` (release= or shards=); same seed and data settings as local_run."""
    args = train_args(assets, out, steps=STEPS, ckpt_every=STEPS, method="clip")
    args.update(release=None, **source)
    train(TrainConfig(**args))
    return digests(out)


def test_release_over_http_trains_on_the_local_batches(assets, server, local_run, tmp_path):
    out = tmp_path / "run"
    train(TrainConfig(**train_args(assets, out, steps=STEPS, ckpt_every=STEPS, release=server.url("/rel"))))
    assert digests(out) == local_run
    shard_gets = [r for r in server.requests if r.path.startswith("/rel/shards/train-") and r.method == "GET"]
    assert shard_gets and all(r.range is None for r in shard_gets)  # streamed: one plain GET per shard read
    assert server.hits("/rel/edges.parquet")  # the graph came over HTTP too (slip trains on it)


def test_eval_of_a_release_over_http_scores_like_the_local_folder(assets, server, local_run, tmp_path):
    from trainer import evaluate
    run = assets["root"] / "local"
    results = {}
    for name, release in (("local", str(assets["release"])), ("http", server.url("/rel"))):
        out = tmp_path / f"eval-{name}.json"
        assert evaluate.main([str(run), "--release", release, "--max-samples", "12", "--json", str(out)]) == 0
        results[name] = json.loads(out.read_text())
    assert results["http"] == results["local"] and results["local"]["n_samples"] == 12
    assert server.hits("/rel/shards/test-000000.tar")


def test_shard_urls_pipes_and_file_globs_give_the_local_batches(assets, server, local_run, tmp_path):
    shards = sorted((assets["release"] / "shards").glob("train-*.tar"))
    last = shards[-1].stem.split("-")[1]
    brace = f"train-{{000000..{last}}}.tar"
    assert train_shards(assets, tmp_path / "http", shards=server.url(f"/rel/shards/{brace}")) == local_run
    file_glob = (assets["release"] / "shards").as_uri() + "/train-*.tar"
    assert train_shards(assets, tmp_path / "file", shards=file_glob) == local_run
    folder = shlex.quote(str(assets["release"] / "shards"))
    assert train_shards(assets, tmp_path / "pipe", shards=f"pipe:cat {folder}/{brace}") == local_run


def test_a_shard_cut_short_or_stalled_is_one_bad_shard_without_a_hang(assets, tmp_path):
    shard = sorted((assets["release"] / "shards").glob("train-*.tar"))[0]
    data = shard.read_bytes()
    keys = [s["__key__"] for s in tar_samples([str(shard)], Counter())]
    routes = {"/cut.tar": Cut(data, after=len(data) // 2, reset=False),
              "/reset.tar": Cut(data, after=len(data) // 2),
              "/stall.tar": Trickle(data, chunk=len(data) // 2, delay_s=30),
              "/ok.tar": Serve(data)}
    with FaultServer(routes) as srv:
        for path in routes:
            skipped: Counter = Counter()
            t0 = time.monotonic()
            got = [s["__key__"] for s in tar_samples([srv.url(path)], skipped)]
            assert time.monotonic() - t0 < 15, path  # the 2 s read timeout, not the 30 s stall
            if path == "/ok.tar":
                assert (got, dict(skipped)) == (keys, {})
            else:
                assert dict(skipped) == {"bad_shard": 1}, path
                assert 0 < len(got) < len(keys) and got == keys[:len(got)], path


def test_a_stream_ending_at_a_member_boundary_is_caught_by_the_end_marker_check(assets):
    shard = sorted((assets["release"] / "shards").glob("train-*.tar"))[0]
    import tarfile
    with tarfile.open(shard) as tar:
        members = tar.getmembers()
    boundary = members[6].offset  # a header boundary: tarfile alone takes it for a clean end
    skipped: Counter = Counter()
    got = list(tar_samples([f"pipe:head -c {boundary} {shlex.quote(str(shard))}"], skipped))
    assert dict(skipped) == {"bad_shard": 1} and len(got) == 1  # 6 members = 2 samples, the second dropped
    skipped.clear()
    assert len(list(tar_samples([f"pipe:cat {shlex.quote(str(shard))}; exit 3"], skipped))) > 0
    assert dict(skipped) == {"bad_shard": 1}  # a failed command taints its shard


def test_missing_urls_are_exit_2_naming_them(assets, server, capsys):
    model = str(assets["model"])
    base = ["--model", model, "--method", "clip", "--steps", "1", "--warmup", "0", "--out"]
    code = train_main([*base, str(assets["root"] / "x1"), "--shards",
                       server.url("/rel/shards/train-{000000..000099}.tar")])
    err = capsys.readouterr().err
    first_missing = f"train-{len(list((assets['release'] / 'shards').glob('train-*.tar'))):06d}.tar"
    assert code == 2 and first_missing in err and "(+" in err and "Traceback" not in err
    code = train_main([*base, str(assets["root"] / "x2"), "--release", server.url("/nowhere")])
    err = capsys.readouterr().err
    assert code == 2 and "/nowhere/manifest.json" in err and len(err.strip().splitlines()) == 1


def test_a_missing_fsspec_backend_names_the_package():
    from fsspec.registry import known_implementations

    absent = next((proto, impl["class"].split(".")[0]) for proto, impl in sorted(known_implementations.items())
                  if importlib.util.find_spec(impl["class"].split(".")[0]) is None)
    with pytest.raises(TrainSetupError, match=f"needs the {absent[1]} package"):
        resolve_shards(shards=f"{absent[0]}://bucket/train-{{000000..000001}}.tar")


@pytest.mark.parametrize("bad", ["../../secret.tar", "shards/../../x.tar", "/etc/passwd",
                                 "http://elsewhere.example/train-000000.tar"])
def test_a_remote_manifest_naming_paths_outside_the_release_is_refused(assets, bad):
    manifest = json.loads((assets["release"] / "manifest.json").read_text())
    manifest["files"][bad] = {"bytes": 1, "sha256": "0" * 64}
    routes = {**release_routes(assets["release"]), "/rel/manifest.json": Serve(json.dumps(manifest).encode())}
    with FaultServer(routes) as srv, pytest.raises(ReleaseError, match="unsafe path"):
        Release(srv.url("/rel"))


def test_a_changed_remote_table_is_refused_by_its_sha256(assets):
    routes = {**release_routes(assets["release"]), "/rel/labels.json": Serve(b'{"classes": []}')}
    with FaultServer(routes) as srv:
        release = Release(srv.url("/rel"))
        assert release.shards("train")[0].startswith(srv.url("/rel/shards/train-"))
        with pytest.raises(ReleaseError, match="sha256"):
            release.labels()


def node_stream(shards: list[str], consumed: int = 0, n: int = 3, rank: int = 0, world: int = 1) -> list[list[int]]:
    def transform(img):  # small and real; the order is what is compared
        return torch.from_numpy(np.asarray(img.resize((4, 4)), dtype="float32")).permute(2, 0, 1)

    spec = StreamSpec(shards=shards, batch_size=8, transform=transform, augment=False, shuffle_buffer=20,
                      tokenizer=lambda texts: torch.zeros(len(texts), 2), consumed_batches=consumed,
                      rank=rank, world_size=world)
    it = iter(TrainBatches(spec, workers=2))
    return [next(it)["node_ids"].tolist() for _ in range(n)]


def test_remote_streams_resume_exactly_and_split_by_rank_like_local_ones(assets, server):
    local, remote_shards = resolve_shards(release=str(assets["release"])), Release(server.url("/rel")).shards("train")
    assert [Path(s).name for s in local] == [s.rsplit("/", 1)[1] for s in remote_shards]
    full = node_stream(local, n=5)
    assert node_stream(remote_shards, consumed=2) == full[2:]  # resume: the exact next batches, over HTTP
    assert node_stream(remote_shards, rank=1, world=2, n=2) == node_stream(local, rank=1, world=2, n=2)
