"""slip-eval's CLIP_benchmark-style options: --recall-k, --fewshot-k, --templates FILE; macro-F1; LP Hits@3."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from trainer import evaluate, metrics
from trainer.cli import train_main
from trainer.eval_config import spread_int_lists
from trainer.prompts import PromptSet, load_prompt_file
from trainer.release import Release
from trainer.run_io import load_run
from trainer.synthetic import make_synthetic_release

MODEL = str(Path(__file__).resolve().parents[1] / "trainer" / "model_configs" / "slip-tiny.json")


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny release and a 2-step CLIP run on it."""
    root = tmp_path_factory.mktemp("eval-options")
    release = make_synthetic_release(root / "release", n_nodes=120, n_classes=4, seed=0)
    run = root / "run"
    assert train_main(["--release", str(release), "--method", "clip", "--model", MODEL, "--batch-size", "16",
                       "--workers", "0", "--steps", "2", "--seed", "0", "--out", str(run)]) == 0
    return {"root": root, "release": release, "run": run}


def _eval(workspace: dict[str, Path], name: str, *flags: str) -> dict:
    out = workspace["root"] / f"{name}.json"
    assert evaluate.main([str(workspace["run"]), "--release", str(workspace["release"]), "--json", str(out),
                          "--max-samples", "16", "--fewshot-pool", "40", *flags]) == 0
    return json.loads(out.read_text())


# ---------------------------------------------------------------------------------------------- metrics


def test_macro_f1_by_hand() -> None:
    """pred 0 0 1 2 vs target 0 1 1 1: F1(0) = 2/(2+1) = 2/3, F1(1) = 2/(2+0+2) = 1/2, F1(2) = 0 (only predicted)."""
    pred, target = torch.tensor([0, 0, 1, 2]), torch.tensor([0, 1, 1, 1])
    assert metrics.macro_f1(pred, target) == pytest.approx((2 / 3 + 1 / 2 + 0) / 3)
    assert metrics.macro_f1(target, target) == 1.0
    # a class never predicted scores 0 and still counts: always "0" on 3x class 0 + 1x class 1 -> (6/7 + 0) / 2
    assert metrics.macro_f1(torch.zeros(4, dtype=torch.long), torch.tensor([0, 0, 0, 1])) == pytest.approx(3 / 7)
    with pytest.raises(ValueError):
        metrics.macro_f1(torch.tensor([0]), torch.tensor([0, 1]))


def test_macro_f1_beside_accuracy_zero_shot_and_few_shot() -> None:
    # zero-shot: class weights on the axes; images 0, 1 on axis 0, image 2 on axis 1; labels 0, 1, 1
    weights = torch.eye(2)
    image = torch.tensor([[1.0, 0.0], [1.0, 0.1], [0.0, 1.0]])
    zs = metrics.zeroshot_metrics(image, weights, torch.tensor([0, 1, 1]))
    assert zs["zeroshot_acc1"] == pytest.approx(2 / 3)
    assert zs["zeroshot_macro_f1"] == pytest.approx((2 / 3 + 2 / 3) / 2)  # F1(0) = 2/3, F1(1) = 2/(2+0+1)
    # few-shot: two well separated clusters, one test point put in the wrong cluster on purpose
    centres = torch.tensor([[4.0, 0.0], [0.0, 4.0]])
    noise = torch.randn(20, 2, generator=torch.Generator().manual_seed(0)) * 0.1
    train_labels = torch.tensor([0, 1] * 10)
    test_labels = torch.tensor([0, 0, 0, 1])
    test = centres[torch.tensor([0, 0, 1, 1])]  # the third test point (label 0) sits on class 1's centre
    few = metrics.fewshot_metrics(centres[train_labels] + noise, train_labels, test, test_labels, 2, ks=(4,))
    assert few["fewshot_4_acc1"] == 0.75
    assert few["fewshot_4_macro_f1"] == pytest.approx((2 * 2 / (4 + 1) + 2 / (2 + 1)) / 2)  # 0.8 and 2/3


def test_link_prediction_hits_at_3() -> None:
    """Node 0's partner (node 1, score 0.5) ranks below both negatives (nodes 2, 3: 0.9, 0.8): rank 3."""
    emb = torch.tensor([[1.0, 0.0], [0.5, 0.0], [0.9, 0.0], [0.8, 0.0]])
    out = metrics.link_prediction_metrics(emb, torch.tensor([[0], [1]]), torch.tensor([[0], [1]]),
                                          candidates=torch.tensor([2, 3]), n_negatives=2, seed=0,
                                          both_directions=False)
    assert out["lp_hits@1"] == 0.0 and out["lp_hits@3"] == 1.0 and out["lp_hits@10"] == 1.0
    assert out["lp_mrr"] == pytest.approx(1 / 3)


# ---------------------------------------------------------------------------------------------- flags


def test_list_flags_take_bare_numbers_and_leave_run_alone() -> None:
    assert spread_int_lists(["--recall-k", "1", "5", "50", "RUN", "--fewshot-k", "2", "--split", "val"]) == [
        "--recall-k", "1", "--recall-k", "5", "--recall-k", "50", "RUN", "--fewshot-k", "2", "--split", "val"]
    assert spread_int_lists(["RUN", "--seed", "3", "4"]) == ["RUN", "--seed", "3", "4"]  # not a list flag


def test_options_change_the_eval_json(workspace: dict[str, Path], tmp_path: Path) -> None:
    default = _eval(workspace, "default")
    assert {"i2t_R@1", "i2t_R@5", "i2t_R@10", "t2i_cat_R@10", "fewshot_16_acc1"} <= set(default)
    assert "i2t_R@50" not in default and default["zeroshot_templates"] == 6
    for key in ("zeroshot_macro_f1", "fewshot_1_macro_f1", "fewshot_5_macro_f1", "fewshot_16_macro_f1"):
        assert 0.0 <= default[key] <= 1.0, key
    assert 0.0 <= default["lp_hits@1"] <= default["lp_hits@3"] <= default["lp_hits@10"] <= 1.0

    templates = tmp_path / "templates.yaml"
    templates.write_text('templates:\n  - "a picture of a {c}."\n  - "{c}, sold online"\n')
    custom = _eval(workspace, "custom", "--recall-k", "2", "50", "1", "--fewshot-k", "3", "1",
                   "--templates", str(templates))
    ks = sorted(int(key.split("@")[1]) for key in custom if key.startswith("i2t_R@"))
    assert ks == [1, 2, 50]
    assert custom["i2t_R@50"] == custom["t2i_R@50"] == 1.0  # 16 products: everything is in the top 50
    assert {"t2i_cat_R@2", "i2t_nbr_R@50"} <= set(custom) and "i2t_R@5" not in custom
    assert sorted(key for key in custom if key.startswith("fewshot_") and key.endswith("_acc1")) == [
        "fewshot_1_acc1", "fewshot_3_acc1"]
    assert custom["fewshot_1_acc1"] == default["fewshot_1_acc1"]  # same seed, same 1-shot draw
    assert custom["zeroshot_templates"] == 2
    assert custom["i2t_R@1"] == default["i2t_R@1"]  # the options change only what they name


def test_templates_file_sets_the_prompts_and_class_names(workspace: dict[str, Path], tmp_path: Path) -> None:
    classnames = Release(workspace["release"]).class_names()
    path = tmp_path / "templates.json"
    path.write_text(json.dumps({"templates": ["a photo of a {c}."],
                                "classnames": {classnames[0]: "gadget", classnames[1]: "gizmo"}}))
    prompt_set = load_prompt_file(path)
    assert prompt_set.prompts(classnames)[:2] == [["a photo of a gadget."], ["a photo of a gizmo."]]
    run = load_run(workspace["run"])
    weights = evaluate.zeroshot_weights(run, classnames, "cpu", prompt_set)
    with torch.inference_mode():
        expected = run.model.encode_text(run.tokenizer(["a photo of a gizmo."])).float()
    assert torch.allclose(weights[:, 1], torch.nn.functional.normalize(expected, dim=-1)[0], atol=1e-5)
    default = evaluate.zeroshot_weights(run, classnames, "cpu")
    assert not torch.allclose(weights, default, atol=1e-3)  # the file's prompts were used, not the built-in ones
    listed = PromptSet(("{c}",), tuple(f"kind {i}" for i in range(len(classnames))), "x.yaml")
    assert listed.prompts(classnames)[-1] == [f"kind {len(classnames) - 1}"]


@pytest.mark.parametrize("content, problem", [
    ("templates: []\n", "non-empty list"),
    ("templates: ['a photo']\n", "has no {c}"),
    ("templates: ['a {x} photo of {c}']\n", "only {c}"),
    ("templates: ['{c}']\nprompts: 1\n", "unknown key"),
    ("templates: ['{c}']\nclassnames: 3\n", "classnames"),
    ("- '{c}'\n", "mapping"),
])
def test_bad_templates_file_exits_2_naming_it(workspace: dict[str, Path], tmp_path: Path,
                                              capsys: pytest.CaptureFixture, content: str, problem: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(content)
    # checked with the flags, before any run or release is read: RUN does not even exist here
    status = evaluate.main([str(tmp_path / "no-run"), "--release", str(workspace["release"]), "--templates", str(path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2
    assert len(err) == 1 and str(path) in err[0] and problem in err[0] and "Traceback" not in err[0], err


def test_class_names_that_do_not_fit_the_release_exit_2(workspace: dict[str, Path], tmp_path: Path,
                                                        capsys: pytest.CaptureFixture) -> None:
    for name, names in (("short.yaml", "classnames: [one]\n"), ("unknown.yaml", "classnames: {Nope: x}\n")):
        path = tmp_path / name
        path.write_text("templates: ['{c}']\n" + names)
        status = evaluate.main([str(workspace["run"]), "--release", str(workspace["release"]), "--templates",
                                str(path), "--max-samples", "4", "--json", str(tmp_path / "out.json")])
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert status == 2 and str(path) in err, err
    assert not (tmp_path / "out.json").exists()


def test_bad_cutoffs_exit_2(workspace: dict[str, Path], capsys: pytest.CaptureFixture) -> None:
    for flags in (["--recall-k", "0"], ["--fewshot-k", "-1"]):
        assert evaluate.main([str(workspace["run"]), "--release", str(workspace["release"]), *flags]) == 2
        assert capsys.readouterr().err.count("\n") == 1
