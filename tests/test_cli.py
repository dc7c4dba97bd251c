"""One CLI style for slip-etl, slip-train, slip-eval: the same help layout, one-line errors with exit 2 for bad
input, `--config FILE` under flags, and --help that never imports torch. Through the real console scripts
(subprocesses) and the real entry points (a 1-step training run and its evaluation)."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from helpers.training import make_train_assets
from slipio.cli import SECTION_ORDER
from slipio.inputs import InputError
from trainer.cli import eval_main, spread_list_values, train_main
from trainer.eval_config import build_eval_config

ENTRY = {"slip-etl": ("etl.cli", "main"), "slip-train": ("trainer.cli", "train_main"),
         "slip-eval": ("trainer.cli", "eval_main")}


def command(prog: str) -> list[str]:
    script = Path(sys.executable).parent / prog
    if script.exists():
        return [str(script)]
    module, function = ENTRY[prog]
    return [sys.executable, "-c", f"import sys; from {module} import {function}; sys.exit({function}())"]


def cli(prog: str, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(command(prog) + list(args), capture_output=True, text=True, timeout=120, cwd=cwd)


def sections(help_text: str) -> list[str]:
    return re.findall(r"^([A-Z][\w ]*):$", help_text, flags=re.M)


HELPS = [("slip-etl", ["build"]), ("slip-etl", ["validate"]), ("slip-train", []), ("slip-eval", []),
         ("slip-eval", ["compare"])]


@pytest.mark.parametrize("prog,sub", HELPS, ids=[" ".join([p, *s]) for p, s in HELPS])
def test_help_has_the_shared_layout(prog, sub):
    done = cli(prog, *sub, "--help")
    assert done.returncode == 0 and done.stderr == "", done.stderr
    text = done.stdout
    assert text.startswith(f"Usage: {' '.join([prog, *sub])} ")
    names = sections(text)
    assert names[-1] == "Options" and "-h, --help" in text.split("\nOptions:\n")[1]
    ranks = [SECTION_ORDER.get(name, 5) for name in names]
    assert ranks == sorted(ranks), names  # Arguments, Config, Input, ..., Output, Run, Options
    example = text.split("Example:\n", 1)[1].splitlines()[0].strip()
    assert example.startswith(" ".join([prog, *sub]) + " "), example
    assert "…" not in text  # no flag cut short, whatever the width


def test_every_train_config_field_is_a_flag_with_its_default_and_choices():
    from trainer.config import config_class
    from trainer.methods import method_names

    model = config_class()
    text = " ".join(cli("slip-train", "--help").stdout.split())  # unwrapped
    assert sections(cli("slip-train", "--help").stdout)[:2] == ["Config", "Input"]
    for name, field in model.model_fields.items():
        flag = "--" + name.replace("_", "-")
        if field.annotation is bool:
            assert f"{flag} / --no-{flag[2:]}" in text, name
        else:
            assert re.search(rf"{re.escape(flag)} <", text), name
    assert f"--method <{'|'.join(method_names())}>" in text
    assert "--grad-clip <float|none>" in text and "[default: 1.0]" in text
    assert " ".join(model.model_fields["lr"].description.split()) in text
    assert "Method slip:" in cli("slip-train", "--help").stdout  # a method's own options have their section


@pytest.mark.parametrize("prog", ["slip-etl", "slip-train", "slip-eval"])
def test_help_does_not_import_torch_or_polars(prog):
    module, function = ENTRY[prog]
    probe = (f"import sys\nfrom {module} import {function}\ntry:\n    {function}(['--help'])\n"
             "except SystemExit as stop:\n    assert stop.code == 0, stop.code\n"
             "print(sorted(m for m in ('torch', 'polars', 'matplotlib') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"


def bad_inputs(tmp: Path) -> list[tuple[str, list[str], str]]:
    missing = str(tmp / "missing")
    (tmp / "broken.yaml").write_text("steps: [1\n")
    return [
        ("slip-etl", ["build", "--bogus"], "No such option: --bogus"),
        ("slip-etl", ["buidl"], "Did you mean 'build'"),
        ("slip-etl", ["nodes", "--source", "nope", "--out", str(tmp)], "unknown source 'nope'"),
        ("slip-etl", ["validate", missing], f"'{missing}' does not exist"),
        ("slip-etl", ["stats", missing], missing),
        ("slip-etl", ["nodes", "--source", "sample", "--out", str(tmp), "--config", missing + ".yaml"], "not found"),
        ("slip-train", ["--steps", "abc"], "'--steps'"),
        ("slip-train", ["--bogus", "1"], "No such option: --bogus"),
        ("slip-train", ["--method", "nope"], "'--method'"),
        ("slip-train", ["--grad-clip", "high"], "'high' is not a valid float (or none)"),
        ("slip-train", ["--config", missing + ".yaml"], f"config file not found: {missing}.yaml"),
        ("slip-train", ["--config", str(tmp / "broken.yaml")], "broken.yaml: not valid YAML (line 2: "),
        ("slip-train", ["--release", missing, "--lr", "-1"], "lr: Input should be greater than 0"),
        ("slip-eval", ["RUN", "--release", "REL", "--batch-size", "0"], "--batch-size: Input should be greater"),
        ("slip-eval", ["RUN", "--release", "REL", "--seed", "x"], "'--seed'"),
        ("slip-eval", ["--release", "REL"], "RUN: Field required"),
        ("slip-eval", ["RUN", "--bogus"], "No such option: --bogus"),
        ("slip-eval", ["RUN", "--config", missing + ".json"], "config file not found"),
        ("slip-eval", ["compare"], "Missing argument 'RUN...'"),
        ("slip-eval", ["compare", missing], f"{missing}/eval-test.json not found"),
    ]


def test_bad_input_is_one_line_and_exit_2_for_every_cli(tmp_path):
    for prog, args, expected in bad_inputs(tmp_path):
        done = cli(prog, *args)
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 2, (prog, args, done.stderr)
        assert len(lines) == 1 and "Traceback" not in done.stderr, (prog, args, done.stderr)
        assert re.match(rf"{prog}( compare)?: error: ", lines[0]) and expected in lines[0], (prog, args, lines)
        assert done.stdout == "", (prog, args, done.stdout)


def test_list_flags_take_several_values_as_before():
    argv = ["--edge-kinds", "copurchase", "also_buy", "--out", "x", "--edge-kinds=also_view"]
    assert spread_list_values(argv, {"--edge-kinds"}) == [
        "--edge-kinds", "copurchase", "--edge-kinds", "also_buy", "--out", "x", "--edge-kinds=also_view"]


def test_eval_config_validators_name_the_flag(tmp_path):
    base = {"run": "RUN", "release": "REL"}
    for values, expected in (({"batch_size": 0}, "--batch-size"), ({"max_samples": 0}, "--max-samples"),
                             ({"graph_chunk": -1}, "--graph-chunk"), ({"run": None}, "RUN"),
                             ({"bogus": 1}, "--bogus")):
        with pytest.raises(InputError, match=re.escape(expected)):
            build_eval_config(None, **{**base, **values})
    path = tmp_path / "eval.json"
    path.write_text(json.dumps({**base, "json": "out/result.json", "split": "val"}))
    cfg = build_eval_config(path, split="test")
    assert cfg.split == "test" and cfg.json_path() == Path("out/result.json")
    assert cfg.md_path() == Path("out/result.md") and cfg.batch_size == 64
    assert build_eval_config(None, **base).json_path() == Path("RUN/eval-test.json")


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict[str, Path]:
    """A 1-step run through `slip-train --config FILE` with flags overriding some of its keys."""
    assets = make_train_assets(tmp_path_factory.mktemp("cli"), n_nodes=120)
    out = assets["root"] / "run"
    config = assets["root"] / "train.yaml"
    config.write_text(yaml.safe_dump({
        "release": str(assets["release"]), "model": str(assets["model"]), "method": "slip", "steps": 3,
        "seed": 5, "lr": 0.002, "batch_size": 8, "workers": 0, "warmup": 0, "augment": True, "grad_clip": 2.0,
        "edge_kinds": ["also_buy"], "out": str(out)}))  # no also_buy edges: only the flag's kinds can train
    status = train_main(["--config", str(config), "--method", "clip", "--steps", "1", "--no-augment",
                         "--grad-clip", "none", "--edge-kinds", "copurchase"])
    assert status == 0
    return {**assets, "run": out}


def test_train_flags_override_the_config_file(trained):
    resolved = json.loads((trained["run"] / "config.json").read_text())
    assert (resolved["method"], resolved["steps"], resolved["augment"], resolved["grad_clip"]) == ("clip", 1, False,
                                                                                                   None)
    assert resolved["edge_kinds"] == ["copurchase"]
    assert (resolved["seed"], resolved["lr"], resolved["batch_size"], resolved["warmup"]) == (5, 0.002, 8, 0)
    assert resolved["wd"] == 0.2 and resolved["model"] == str(trained["model"])  # neither: the default / the file
    assert json.loads((trained["run"] / "summary.json").read_text())["steps"] == 1


def test_eval_flags_override_the_config_file(trained, capsys):
    out = trained["root"] / "reports" / "val.json"
    config = trained["root"] / "eval.yaml"
    config.write_text(yaml.safe_dump({"release": str(trained["release"]), "split": "val", "max_samples": 40,
                                      "fewshot_pool": 8, "json": str(out), "batch_size": 16}))
    assert eval_main([str(trained["run"]), "--config", str(config), "--max-samples", "6"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == str(out)
    result = json.loads(out.read_text())
    assert (result["split"], result["n_samples"], result["method"]) == ("val", 6, "clip")
    assert result["fewshot_pool"] <= 8 and out.with_suffix(".md").is_file()


def test_eval_run_time_input_errors_exit_2(trained, capsys):
    assert eval_main([str(trained["run"]), "--release", str(trained["root"] / "missing")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[-1].startswith("slip-eval: error: ") and "missing" in lines[-1]


# Item 9 of the hostile-input issue: config files, --set and --out of slip-etl (and --config of all three CLIs).
# Each case runs the real console script and must end in one `PROG: error:` line naming the input, exit 2.

def assert_input_error(done: subprocess.CompletedProcess, prog: str, *expected: str) -> str:
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2, (done.returncode, done.stderr)
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert lines[0].startswith(f"{prog}: error: "), lines
    for text in expected:
        assert text in lines[0], (text, lines[0])
    return lines[0]


@pytest.mark.parametrize("prog,args", [("slip-etl", ["nodes", "--source", "sample", "--out", "OUT"]),
                                       ("slip-train", []), ("slip-eval", ["RUN"])])
def test_config_file_that_is_not_utf8(tmp_path, prog, args):
    config = tmp_path / "utf16.yaml"
    config.write_bytes("steps: 1\n".encode("utf-16"))  # a BOM (0xff 0xfe) and NUL bytes: an editor's "Unicode"
    done = cli(prog, *[str(tmp_path / "out") if a == "OUT" else a for a in args], "--config", str(config))
    assert_input_error(done, prog, f"{config}: not UTF-8 text (byte 0xff at offset 0)", "save the file as UTF-8")


@pytest.mark.parametrize("item,problem", [
    ("images.concurrency=[1", "expected ',' or ']'"),
    ("labels.split={train: 0.8, val", "expected ',' or '}'"),
    ("images.url_rewrite=a: b: c", "mapping values are not allowed here"),
    ("edges.top_k='5", "found unexpected end of stream"),
])
def test_set_with_bad_yaml_names_the_set_item(tmp_path, item, problem):
    done = cli("slip-etl", "nodes", "--source", "sample", "--out", str(tmp_path), "--set", item)
    line = assert_input_error(done, "slip-etl", f"--set {item!r}: the value", problem, "quote a string value")
    assert "pipelines.yaml" not in line
    assert not (tmp_path / "sample-electronics").exists()  # refused before anything was written


@pytest.mark.parametrize("item,expected", [
    ("images", "--set 'images': expected SECTION.KEY=VALUE"),
    ("images..concurrency=3", "is not SECTION.KEY"),
    ("imagez.concurrency=3", "unknown key 'imagez'; allowed keys at the top level: base_url, categories, edges"),
    ("images.concurency=3", "unknown key 'images.concurency'; allowed keys in images: backoff_base_s, "
                            "backoff_max_s, chunk_rows, concurrency,"),
    ("sources.sample.files.meta=x", "allowed keys in sources.sample.files: metadata, reviews"),
    ("images.concurrency.max=3", "images.concurrency is a single value, not a section with keys"),
])
def test_set_without_equals_or_with_an_unknown_key(tmp_path, item, expected):
    done = cli("slip-etl", "nodes", "--source", "sample", "--out", str(tmp_path), "--set", item)
    assert_input_error(done, "slip-etl", f"--set {item!r}: ", expected)


@pytest.mark.parametrize("where", ["file", "set"])
def test_unknown_release_name_field_is_refused_before_any_stage(tmp_path, where):
    config = tmp_path / "mine.yaml"
    config.write_text('release:\n  name: "slip-{nope}"\n')
    given = ["--config", str(config)] if where == "file" else ["--set", "release.name=slip-{nope}"]
    done = cli("slip-etl", "fetch", "--source", "sample", "--out", str(tmp_path / "out"), *given)
    origin = str(config) if where == "file" else "--set 'release.name=slip-{nope}'"
    assert_input_error(done, "slip-etl", f"{origin}: release.name: unknown template field {{nope}}",
                       "allowed: {category}")
    assert not (tmp_path / "out" / "sample-electronics" / "work").exists()


@pytest.mark.parametrize("below", ["", "sub"])
def test_out_that_is_a_file_or_below_a_file(tmp_path, below):
    """--out naming an existing regular file, or a folder below one (what a typo in a path usually makes)."""
    regular = tmp_path / "notes.txt"
    regular.write_text("not a folder\n")
    out = regular / below if below else regular
    done = cli("slip-etl", "build", "--source", "sample", "--out", str(out))
    assert_input_error(done, "slip-etl", f"--out {out}: {regular} is a file, not a folder")
    assert regular.read_text() == "not a folder\n"


def test_out_whose_dataset_root_is_a_file(tmp_path):
    (tmp_path / "sample-electronics").write_text("")
    done = cli("slip-etl", "build", "--source", "sample", "--out", str(tmp_path))
    assert_input_error(done, "slip-etl", f"{tmp_path / 'sample-electronics'} is a file, not a folder")


def test_out_that_cannot_be_written(tmp_path):
    """A read-only folder: a read-only tmpfs mount when root (root writes through a chmod 555 folder anyway, and CI
    runs as root), a chmod 555 folder otherwise."""
    locked = tmp_path / "locked"
    locked.mkdir()
    as_root = os.geteuid() == 0
    if as_root:
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(locked)],
                                 capture_output=True, text=True)
        assert mounted.returncode == 0, f"cannot mount a read-only tmpfs for this test: {mounted.stderr}"
    else:
        locked.chmod(0o555)
    try:
        done = cli("slip-etl", "build", "--source", "sample", "--out", str(locked))
        assert_input_error(done, "slip-etl", f"--out {locked}: cannot write to {locked / 'sample-electronics'}")
    finally:
        if as_root:
            subprocess.run(["umount", str(locked)], check=True)
        else:
            locked.chmod(0o755)
