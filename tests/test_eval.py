"""slip-eval end to end on tiny trained runs: keys and ranges, graph-aware scores, bad samples, compare."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from trainer import evaluate
from trainer.batch_graph import CSRGraph
from trainer.cli import train_main
from trainer.release import Release
from trainer.run_io import load_run
from trainer.synthetic import jpeg_bytes, make_synthetic_release, write_tar

MODEL = str(Path(__file__).resolve().parents[1] / "trainer" / "model_configs" / "slip-tiny.json")
RATES = ("i2t_R@1", "i2t_R@5", "i2t_R@10", "t2i_R@1", "t2i_R@5", "t2i_R@10", "i2t_mrr", "t2i_mrr",
         "zeroshot_acc1", "zeroshot_acc5", "zeroshot_mean_per_class_recall", "fewshot_1_acc1", "fewshot_5_acc1",
         "fewshot_16_acc1", "lp_mrr", "lp_hits@1", "lp_hits@10")
RANKS = ("i2t_mean_rank", "t2i_mean_rank", "i2t_median_rank", "t2i_median_rank")


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny release and a 2-step SLIP run and CLIP run trained on it (same seed and budget)."""
    root = tmp_path_factory.mktemp("eval")
    release = make_synthetic_release(root / "release", n_nodes=200, n_classes=8, seed=0)
    runs = {}
    for method in ("slip", "clip"):
        runs[method] = root / f"run-{method}"
        status = train_main(["--release", str(release), "--method", method, "--model", MODEL, "--batch-size", "16",
                             "--workers", "0", "--steps", "2", "--seed", "0", "--out", str(runs[method])])
        assert status == 0
    return {"root": root, "release": release, **runs}


def _check_keys(result: dict, n_expected: int, prefix: str = "") -> None:
    """Sanity only: a 2-step run has no known scores (exact values are test_score_on_hand_made_embeddings')."""
    for key in RATES:
        assert 0.0 <= result[prefix + key] <= 1.0, key
    for key in RANKS:
        assert 1.0 <= result[prefix + key] <= n_expected, key
    for way in ("i2t", "t2i"):
        assert result[f"{prefix}{way}_R@1"] <= result[f"{prefix}{way}_R@5"] <= result[f"{prefix}{way}_R@10"]
    assert result[prefix + "lp_n_queries"] == 2 * result["lp_held_out_edges"] > 0


def _one_hot(*rows: int, dim: int = 4) -> torch.Tensor:
    return torch.eye(dim)[list(rows)]


def test_score_on_hand_made_embeddings() -> None:
    """Embeddings arranged so every score has a known answer.

    Images are e0..e3; texts are e0, e1, e3, e2 (products 2 and 3 swapped). Image 2's caption scores 0 and ties
    with texts 0 and 1 while text 3 scores 1: rank 1 + 3 = 4 (ties count against the query); same for image 3.
    """
    image, text = _one_hot(0, 1, 2, 3), _one_hot(0, 1, 3, 2)
    weights = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]]), dim=0)
    labels = np.array([0, 1, 0, 0])  # image 3 lies on class 1's axis: misclassified
    sets = evaluate.EvalSets(eval_rows=np.arange(4), fewshot_rows=np.zeros(0, np.int64),
                             lp_pool_rows=np.arange(4), lp_held_out=torch.zeros(2, 0, dtype=torch.long),
                             lp_known=torch.zeros(2, 0, dtype=torch.long))
    cfg = SimpleNamespace(chunk_size=2, seed=0, lp_negatives=1)
    result = evaluate.score(image, text, labels, ["a", "b", "c", "d"], sets, weights, 2, cfg)
    for way in ("i2t", "t2i"):
        assert result[f"{way}_R@1"] == 0.5 and result[f"{way}_R@5"] == result[f"{way}_R@10"] == 1.0
        assert result[f"{way}_mrr"] == pytest.approx((1 + 1 + 0.25 + 0.25) / 4)
        assert result[f"{way}_mean_rank"] == 2.5 and result[f"{way}_median_rank"] == 2.5
    assert result["zeroshot_acc1"] == 0.75 and result["zeroshot_n"] == 4
    assert result["zeroshot_mean_per_class_recall"] == pytest.approx((2 / 3 + 1) / 2)
    assert math.isnan(result["zeroshot_acc5"])  # fewer than 5 classes
    assert not any(key.startswith(("lp_", "fewshot_")) for key in result)  # nothing held out, no pool

    # products 2 and 3 share their caption: either text is a hit, so every query ranks first
    same = evaluate.score(image, text, labels, ["a", "b", "c", "c"], sets, weights, 2, cfg)
    assert all(same[f"{way}_R@1"] == same[f"{way}_mrr"] == 1.0 for way in ("i2t", "t2i"))

    # link prediction: held-out edge 0-1, known edges 0-1 and 1-2, so node 1's only valid negative is node 3,
    # which it prefers to node 0 (0.8 > 0.6): node 0 ranks its partner first, node 1 second
    emb = torch.tensor([[1.0, 0.0], [0.6, 0.8], [-1.0, 0.0], [0.0, 1.0]])
    lp_sets = dataclasses.replace(sets, lp_held_out=torch.tensor([[0], [1]]), lp_known=torch.tensor([[0, 1], [1, 2]]))
    lp = evaluate.score(emb, emb, labels, ["a", "b", "c", "d"], lp_sets, None, 0, cfg)
    assert lp["lp_n_queries"] == 2 and lp["lp_short_negatives"] == 0
    assert lp["lp_hits@1"] == 0.5 and lp["lp_hits@10"] == 1.0 and lp["lp_mrr"] == pytest.approx((1 + 1 / 2) / 2)
    assert not any(key.startswith("zeroshot_") for key in lp)  # no class weights, no zero-shot


def test_slip_run_scored_encoder_only_and_graph_aware(workspace: dict[str, Path]) -> None:
    out = workspace["slip"] / "eval-test.json"  # where compare looks
    md = workspace["root"] / "reports" / "slip-eval.md"
    assert evaluate.main([str(workspace["slip"]), "--release", str(workspace["release"]), "--split", "test",
                          "--json", str(out), "--md", str(md), "--batch-size", "32"]) == 0
    result = json.loads(out.read_text())
    n_test = int((Release(workspace["release"]).nodes()["split"] == "test").sum())
    assert result["method"] == "slip" and result["n_samples"] == n_test and result["skipped"] == 0
    _check_keys(result, n_test)
    _check_keys(result, n_test, prefix=evaluate.GRAPH_PREFIX)
    assert result["zeroshot_n"] == n_test and result["fewshot_pool"] > 0
    assert result["graph_context_products"] > n_test  # neighbours were read from the other splits' shards
    for prefix in ("", evaluate.GRAPH_PREFIX):  # looser levels: a superset of the exact pair is a hit
        for way in ("i2t", "t2i"):
            assert result[f"{prefix}{way}_cat_R@1"] >= result[f"{prefix}{way}_R@1"]
            assert result[f"{prefix}{way}_nbr_R@1"] >= result[f"{prefix}{way}_R@1"]
    assert result["cat_n"] == n_test and 0 < result["nbr_with_neighbour"] <= 1
    # the GAT changes the embeddings, so at least one graph-aware score differs from its encoder-only twin
    assert any(result[f"graph_{k}"] != result[k] for k in RATES + RANKS)
    table = md.read_text()
    assert "| metric | encoder-only | graph-aware |" in table and "| lp_mrr |" in table


def test_clip_run_through_console_script(workspace: dict[str, Path]) -> None:
    script = Path(sys.executable).with_name("slip-eval")
    done = subprocess.run([str(script), str(workspace["clip"]), "--release", str(workspace["release"]),
                           "--max-samples", "12"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    written = Path(done.stdout.strip().splitlines()[-1])
    assert written == workspace["clip"] / "eval-test.json"
    result = json.loads(written.read_text())
    assert result["method"] == "clip" and result["n_samples"] == 12
    _check_keys(result, 12)
    assert not any(key.startswith(evaluate.GRAPH_PREFIX) for key in result)
    assert (workspace["clip"] / "eval-test.md").is_file()


def test_help_on_both_forms(capsys: pytest.CaptureFixture) -> None:
    for argv, expected in ((["--help"], "--release"), (["compare", "--help"], "--out")):
        with pytest.raises(SystemExit) as stop:
            evaluate.main(argv)
        assert stop.value.code == 0
        assert expected in capsys.readouterr().out


def test_compare_writes_table_and_plots(workspace: dict[str, Path]) -> None:
    for run in (workspace["slip"], workspace["clip"]):
        if not (run / "eval-test.json").is_file():
            assert evaluate.main([str(run), "--release", str(workspace["release"]), "--max-samples", "12"]) == 0
    out = workspace["root"] / "compare"
    assert evaluate.main(["compare", str(workspace["slip"]), str(workspace["clip"]), "--out", str(out)]) == 0
    table = (out / "compare.md").read_text()
    header = next(line for line in table.splitlines() if line.startswith("| metric "))
    assert [cell.strip() for cell in header.strip("|").split("|")] == ["metric", "slip", "clip", "Δ clip vs slip"]
    rows = {line.split("|")[1].strip() for line in table.splitlines() if line.startswith("| ")}
    assert {"graph_lp_mrr", "zeroshot_acc1", "i2t_R@1"} <= rows
    for png in ("training_curves.png", "metrics.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert evaluate.main(["compare", str(workspace["root"] / "no-such-run"), "--out", str(out)]) == 2


def test_bad_samples_are_skipped_and_counted(workspace: dict[str, Path], tmp_path: Path) -> None:
    release = tmp_path / "release"
    shutil.copytree(workspace["release"], release)
    good_jpeg = jpeg_bytes(Image.new("RGB", (16, 16), "red"))

    def sample(node_id: int, **members: bytes) -> tuple[str, dict[str, bytes]]:
        fields = {"jpg": good_jpeg, "txt": b"a caption",
                  "json": json.dumps({"node_id": node_id, "label": 0, "split": "test"}).encode()}
        fields.update(members)
        return f"{node_id:010d}", {k: v for k, v in fields.items() if v is not None}

    nodes = Release(release).nodes()
    already_read = int(nodes["node_id"][nodes["split"] == "test"][0])
    write_tar(release / "shards" / "test-000090.tar", [
        sample(9001, jpg=b"not a jpeg"),
        sample(9002, txt=None),
        sample(9003, json=b"{not json"),
        sample(9004, json=json.dumps({"node_id": 9004, "label": 99}).encode()),
        sample(already_read, txt=b"a second copy"),
    ])
    cut = release / "shards" / "test-000091.tar"
    write_tar(cut, [sample(9101), sample(9102, jpg=good_jpeg * 4)])
    cut.write_bytes(cut.read_bytes()[:-len(good_jpeg) * 2 - 1024])  # inside 9102's JPEG

    run = load_run(workspace["clip"])
    skipped: Counter = Counter()
    encoded = evaluate.encode_shards(run, Release(release).shards("test"), 8, 16, "cpu", skipped)
    assert skipped == {"bad_image": 1, "missing_txt": 1, "bad_json": 1, "bad_label": 1, "duplicate_node": 1,
                       "bad_shard": 1}
    ids = encoded.node_ids.tolist()
    assert len(ids) == len(set(ids)) == int((nodes["split"] == "test").sum()) + 1
    assert 9101 in ids and 9102 not in ids  # the sample before the cut survives, the cut one is counted
    assert encoded.image_emb.shape == (len(ids), run.model.embed_dim)


def test_held_out_edges_never_reach_the_refinement_graph(workspace: dict[str, Path]) -> None:
    release = workspace["release"]
    graph = CSRGraph.from_parquet(release / "edges.parquet")
    nodes = Release(release).nodes()
    eval_ids = nodes["node_id"][nodes["split"] == "test"]
    linkable = nodes["has_image"]
    held = evaluate.choose_held_out_edges(graph, eval_ids, linkable, seed=0)
    assert len(held) > 0
    assert np.isin(held, eval_ids).any(axis=1).all()  # every held-out edge touches an evaluated product
    refine_graph = evaluate.without_edges(graph, held, max_neighbors=32)
    assert refine_graph.num_edges == graph.num_edges - len(held)
    everything = torch.arange(graph.num_nodes)
    edge_index, _ = refine_graph.batch_edge_index(everything)
    used = set(map(tuple, edge_index.t().tolist()))
    for lo, hi in held.tolist():
        assert (lo, hi) not in used and (hi, lo) not in used
        assert hi in graph.neighbors(lo)  # it was a real edge
    # each evaluated product keeps a neighbour for its refinement
    for node in np.unique(held):
        if node in eval_ids:
            assert len(refine_graph.neighbors(int(node))) >= 1
    assert np.array_equal(held, evaluate.choose_held_out_edges(graph, eval_ids, linkable, seed=0))


def test_chunked_refinement_equals_whole_graph(workspace: dict[str, Path]) -> None:
    run = load_run(workspace["slip"])
    graph = CSRGraph.from_parquet(workspace["release"] / "edges.parquet", max_neighbors=4)
    ids = torch.arange(graph.num_nodes)
    edge_index, edge_weight = graph.batch_edge_index(ids)
    emb = torch.nn.functional.normalize(torch.randn(len(ids), run.model.embed_dim,
                                                    generator=torch.Generator().manual_seed(0)), dim=-1)
    targets = torch.tensor([0, 5, 17, 42, 99, 150])
    with torch.inference_mode():
        whole = run.model.graph_refine(emb, edge_index, edge_weight, modality="image")[targets]
    for chunk in (1, 4, len(targets)):
        chunked = evaluate.refine(run, emb, edge_index, edge_weight, "image", targets, run.config.gat_layers,
                                  chunk, "cpu")
        assert torch.allclose(chunked, whole, atol=1e-5)
    assert not torch.allclose(whole, emb[targets], atol=1e-3)  # the refinement does something


def test_json_has_no_nan() -> None:
    safe = evaluate.json_safe({"zeroshot_acc5": math.nan, "lp_mrr": 0.5, "method": "clip"})
    assert safe == {"zeroshot_acc5": None, "lp_mrr": 0.5, "method": "clip"}
    json.dumps(safe, allow_nan=False)
