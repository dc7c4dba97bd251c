"""Hostile input to slip-train / slip-eval ends cleanly (issue 11, item 10), always through the real commands (their
own processes where a run is killed, trained or needs a plug-in; the entry functions in-process for the one-line
refusals, to pay torch's import once): non-finite config values are refused at validation; a loss that turns
non-finite stops the run (exit 1) with the last good checkpoint kept; slip on a release without edges.parquet, a
truncated checkpoint, a file that is no checkpoint and a planted symlink are one-line errors (exit 2); `--resume
latest` falls back past a truncated newest checkpoint, says which one it took, and drops a log line torn by a kill."""
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from helpers.training import make_train_assets
from trainer.checkpoint import load_checkpoint
from trainer.cli import eval_main, train_main

REPO = Path(__file__).resolve().parents[1]
STEPS = 4

# a test-only method (registered in the child process): CLIP plus a `boom` term that is 0 until the micro-step
# `boom_step`, then inf. Its float option `boom_scale` also checks that plug-in options refuse non-finite values.
BOOM_PLUGIN = '''
from pydantic import BaseModel, Field

from trainer.methods import register
from trainer.methods.clip import CLIP


class BoomOptions(BaseModel):
    boom_step: int = Field(3, ge=1, description="Micro-step from which the boom term is inf.")
    boom_scale: float = Field(1.0, description="Factor of the boom term.")


@register
class Boom(CLIP):
    name = "boom"
    description = "CLIP + a term that becomes inf at boom_step (tests only)"
    Options = BoomOptions

    def __init__(self, cfg):
        super().__init__(cfg)
        self.calls = 0

    def loss_terms(self, model, out, ctx):
        import torch
        terms = super().loss_terms(model, out, ctx)
        self.calls += 1
        value = float("inf") if self.calls >= self.cfg.boom_step else 0.0
        terms["boom"] = torch.tensor(value) * self.cfg.boom_scale
        return terms
'''


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    return make_train_assets(tmp_path_factory.mktemp("train-errors"), n_nodes=120)


@pytest.fixture(scope="module")
def plugin_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("plugin")
    (folder / "boom_plugin.py").write_text(textwrap.dedent(BOOM_PLUGIN))
    return folder


def command(prog: str, plugin: bool = False) -> list[str]:
    """The installed entry point (or the same function through -c); with `plugin`, boom_plugin is imported first."""
    main = {"slip-train": "train_main", "slip-eval": "eval_main"}[prog]
    script = Path(sys.executable).parent / prog
    if script.exists() and not plugin:
        return [str(script)]
    pre = "import boom_plugin; " if plugin else ""
    return [sys.executable, "-c", f"import sys; {pre}from trainer.cli import {main}; sys.exit({main}())"]


def run_cli(prog: str, args: list, plugin_dir: Path | None = None, timeout: int = 240) -> subprocess.CompletedProcess:
    path = [str(REPO)] + ([str(plugin_dir)] if plugin_dir is not None else [])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(path)}
    return subprocess.run(command(prog, plugin=plugin_dir is not None) + [str(a) for a in args], env=env,
                          capture_output=True, text=True, timeout=timeout, cwd=REPO)


def invoke(prog: str, args: list, capsys) -> tuple[int, str]:
    """(exit status, the one error line) of the entry function run in this process."""
    capsys.readouterr()
    main = {"slip-train": train_main, "slip-eval": eval_main}[prog]
    code = main([str(a) for a in args])
    err = capsys.readouterr().err
    return code, error_line(subprocess.CompletedProcess([prog], code, "", err), prog)


def train_flags(assets, out: Path, **overrides) -> list[str]:
    values = dict(release=assets["release"], model=assets["model"], method="clip", batch_size=8, workers=0,
                  steps=STEPS, warmup=1, lr=1e-3, seed=5, ckpt_every=1, keep_last=10, shuffle_buffer=16, out=out)
    values.update(overrides)
    return [item for key, value in values.items() for item in (f"--{key.replace('_', '-')}", str(value))]


def error_line(proc: subprocess.CompletedProcess, prog: str) -> str:
    """The one error line: the last stderr line, the only one that starts with `PROG: error:`, no traceback."""
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = proc.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith(f"{prog}: error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], proc.stderr[-3000:]
    return errors[0]


def strict_log(run_dir: Path) -> list[dict]:
    """log.jsonl parsed as strict JSON lines (no NaN/Infinity, every line complete)."""
    def refuse(name: str):
        raise ValueError(f"non-standard JSON constant {name}")
    text = (run_dir / "log.jsonl").read_text()
    assert text.endswith("\n")
    return [json.loads(line, parse_constant=refuse) for line in text.splitlines()]


def steps_of(run_dir: Path) -> list[int]:
    return sorted(int(p.name[5:13]) for p in (run_dir / "checkpoints").glob("step-*.pt"))


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.fixture(scope="module")
def good_run(assets) -> Path:
    """A real 4-step CLIP run with a checkpoint at every step; tests copy it before damaging it."""
    out = assets["root"] / "good"
    proc = run_cli("slip-train", train_flags(assets, out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert steps_of(out) == [1, 2, 3, 4]
    return out


def copy_run(good_run: Path, tmp_path: Path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(good_run, run)
    return run


# ---- non-finite values ------------------------------------------------------------------------------------------
@pytest.mark.timeout(120)
def test_non_finite_config_values_are_refused_before_training(assets, tmp_path, plugin_dir):
    config = tmp_path / "train.yaml"
    config.write_text("wd: .inf\n")  # YAML's own spelling of infinity, through --config
    cases = [
        (["--lr", "inf"], "lr"), (["--lr", "nan"], "lr"), (["--eps", "-inf"], "eps"),
        (["--lambda-struct", "inf"], "lambda_struct"), (["--fusion-alpha-init", "nan"], "fusion_alpha_init"),
        (["--config", config], "wd"),
    ]
    for extra, field in cases:
        proc = run_cli("slip-train", train_flags(assets, tmp_path / "run") + extra)
        assert proc.returncode == 2, (extra, proc.stderr[-2000:])
        line = error_line(proc, "slip-train")
        assert proc.stderr.strip() == line, extra  # refused before torch: nothing else on stderr
        assert f"{field}: must be a finite number" in line, (extra, line)
    # a plug-in method's own float option is covered by the same check
    proc = run_cli("slip-train", train_flags(assets, tmp_path / "run", method="boom") + ["--boom-scale", "inf"],
                   plugin_dir=plugin_dir)
    assert proc.returncode == 2 and "boom_scale: must be a finite number" in error_line(proc, "slip-train")
    assert not (tmp_path / "run").exists()


@pytest.mark.timeout(240)
def test_a_loss_that_turns_non_finite_stops_the_run_and_keeps_the_last_good_checkpoint(assets, tmp_path,
                                                                                         plugin_dir):
    out = tmp_path / "boom"
    proc = run_cli("slip-train", train_flags(assets, out, method="boom", boom_step=3, steps=6), plugin_dir=plugin_dir)
    assert proc.returncode == 1, proc.stderr[-3000:]
    line = error_line(proc, "slip-train")
    assert "non-finite loss at step 3" in line and "boom=inf" in line, line
    assert "step-00000002.pt (step 2)" in line, line
    assert proc.stdout.strip() == ""  # no summary line, no run folder printed as if it were done
    assert steps_of(out) == [1, 2]  # nothing written at or after the bad step
    state = load_checkpoint(out / "checkpoints" / "step-00000002.pt")
    assert state["step"] == 2
    assert all(bool(t.isfinite().all()) for t in state["model"].values() if t.is_floating_point())
    assert [r["step"] for r in strict_log(out)] == [1, 2]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["steps"] == 2 and "step 3" in summary["error"]
    assert not (out / "open_clip_state_dict.pt").exists()


# ---- a release without the graph --------------------------------------------------------------------------------
@pytest.mark.timeout(120)
def test_slip_on_a_release_without_edges_names_the_release_and_the_way_out(assets, tmp_path, capsys):
    release = tmp_path / "no-edges"
    shutil.copytree(assets["release"], release)
    (release / "edges.parquet").unlink()
    code, line = invoke("slip-train", train_flags(assets, tmp_path / "run", release=release, method="slip"), capsys)
    assert code == 2
    assert f"release {release} has no edges.parquet" in line and "--method slip" in line, line
    assert "--method clip" in line, line


# ---- damaged checkpoints and run folders ------------------------------------------------------------------------
@pytest.mark.timeout(240)
def test_resume_refuses_a_truncated_checkpoint_and_a_file_that_is_none(assets, good_run, tmp_path, capsys):
    run = copy_run(good_run, tmp_path)
    newest = run / "checkpoints" / "step-00000004.pt"
    truncate(newest)
    code, line = invoke("slip-train", train_flags(assets, run, steps=6, resume=newest), capsys)
    assert code == 2 and f"--resume: checkpoint {newest}: truncated" in line, line
    passwd = tmp_path / "passwd"
    passwd.write_text("root:x:0:0:root:/root:/bin/bash\ndaemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n")
    code, line = invoke("slip-train", train_flags(assets, tmp_path / "other", resume=passwd), capsys)
    assert code == 2 and f"--resume: checkpoint {passwd}: not a slip-train checkpoint" in line, line
    for step in (1, 2, 3):
        truncate(run / "checkpoints" / f"step-{step:08d}.pt")
    code, line = invoke("slip-train", train_flags(assets, run, steps=6, resume="latest"), capsys)
    assert code == 2 and f"--resume latest: no checkpoint in {run / 'checkpoints'} loads" in line, line
    assert steps_of(run) == [1, 2, 3, 4]  # nothing set aside when no checkpoint loads


@pytest.mark.timeout(240)
def test_resume_latest_after_a_kill_skips_a_truncated_checkpoint_and_a_torn_log_line(assets, good_run, tmp_path):
    run = copy_run(good_run, tmp_path)
    # killed while step 4 was saved: checkpoint 4 truncated, step 4's log line torn, no summary, no export
    for name in ("summary.json", "open_clip_state_dict.pt"):
        (run / name).unlink()
    truncate(run / "checkpoints" / "step-00000004.pt")
    lines = (run / "log.jsonl").read_text().splitlines(keepends=True)
    (run / "log.jsonl").write_text("".join(lines[:3]) + lines[3][: len(lines[3]) // 2])
    proc = run_cli("slip-train", train_flags(assets, run, resume="latest"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "step-00000004.pt: truncated" in proc.stderr
    assert f"resuming from {run / 'checkpoints' / 'step-00000003.pt'} (step 3)" in proc.stderr
    assert (run / "checkpoints" / "step-00000004.pt.unreadable").exists()  # set aside, not deleted
    assert load_checkpoint(run / "checkpoints" / "step-00000004.pt")["step"] == 4  # written again
    resumed, original = strict_log(run), strict_log(good_run)  # valid JSONL again, the torn line gone
    assert [r["step"] for r in resumed] == [1, 2, 3, 4]
    assert [(r["loss"], r["data_digest"]) for r in resumed] == [(r["loss"], r["data_digest"]) for r in original]


@pytest.mark.timeout(240)
def test_eval_on_a_truncated_or_planted_checkpoint_is_one_line(assets, good_run, tmp_path, capsys):
    run = copy_run(good_run, tmp_path)
    truncate(run / "checkpoints" / "step-00000004.pt")
    base = [run, "--release", assets["release"], "--split", "test", "--json", tmp_path / "eval.json"]
    proc = run_cli("slip-eval", base + ["--checkpoint", "4"])  # its own process: stderr holds nothing else
    assert proc.returncode == 2
    line = error_line(proc, "slip-eval")
    assert proc.stderr.strip() == line
    assert f"checkpoint {run / 'checkpoints' / 'step-00000004.pt'}: truncated" in line, line
    code, line = invoke("slip-eval", base, capsys)  # latest: the error names the newest step that loads
    assert code == 2 and "the newest checkpoint that loads is step 3: pass --checkpoint 3" in line, line
    # a step name planted as a symlink to a file outside the run is refused, not followed
    outside = tmp_path / "outside.pt"
    shutil.copy(good_run / "checkpoints" / "step-00000001.pt", outside)
    (run / "checkpoints" / "step-00000009.pt").symlink_to(outside)
    code, line = invoke("slip-eval", base + ["--checkpoint", "9"], capsys)
    assert code == 2 and "checkpoints/step-00000009.pt' is a symlink" in line, line
    assert not (tmp_path / "eval.json").exists()
