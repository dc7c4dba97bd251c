"""What a person reads: the real CLIs as subprocesses (stderr is a pipe, not a terminal) print progress lines
instead of nothing, keep third-party INFO logs and open_clip's "initialized randomly" out of the default output
(`-v` shows them), and `slip-etl stats` sizes its columns to their content."""
import io
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers.training import make_train_assets
from slipio.progress import LineProgress, progress_bar

BIN = Path(sys.executable).parent
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "SLIP_PROGRESS_INTERVAL_S": "0.05"}
STEPS = 4


def run(prog: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(BIN / prog), *args], cwd=cwd, env=ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    root = tmp_path_factory.mktemp("output")
    make_train_assets(root, n_nodes=120)
    proc = run("slip-train", "--release", "release", "--model", "slip-micro.json", "--method", "clip",
               "--batch-size", "16", "--steps", str(STEPS), "--workers", "1", "--warmup", "1", "--out", "run",
               cwd=root)
    return root, proc


def test_training_without_a_terminal_prints_progress_lines_and_no_library_chatter(trained):
    _, proc = trained
    lines = [line for line in proc.stderr.splitlines() if line.startswith("slip-train[clip]: ")]
    steps = [int(re.match(r"slip-train\[clip\]: (\d+)/4 step", line).group(1)) for line in lines]
    assert steps and steps == sorted(steps) and steps[-1] == STEPS, proc.stderr
    assert re.search(r"\d+/4 step \(\d+%\), [\d.]+ step/s, ETA \d+s, loss=", proc.stderr), proc.stderr
    assert "took " in lines[-1]  # the closing line
    assert " root INFO " not in proc.stderr and "Warning" not in proc.stderr, proc.stderr


def test_slip_eval_of_a_trained_run_never_claims_random_init_unless_verbose(trained):
    root, _ = trained
    quiet = run("slip-eval", "run", "--release", "release", "--split", "test", cwd=root)
    assert "slip-eval: wrote" in quiet.stderr
    for noise in ("initialized randomly", "no CLIP weights found", " root INFO ", "FutureWarning"):
        assert noise not in quiet.stderr, quiet.stderr
    verbose = run("slip-eval", "run", "--release", "release", "--split", "test", "--json", "v.json", "-v", cwd=root)
    assert "Model initialized randomly" in verbose.stderr and " root INFO " in verbose.stderr, verbose.stderr


def test_line_progress_prints_done_total_rate_and_eta_every_interval():
    out = io.StringIO()  # not a terminal: progress_bar gives lines, not a tqdm bar
    bar = progress_bar(total=40, desc="images", unit="img", file=out)
    assert isinstance(bar, LineProgress)
    bar.interval = 0.02
    for _ in range(4):
        bar.update(10)
        bar.set_postfix(ok="97.5%")
        time.sleep(0.03)
    bar.close()
    lines = out.getvalue().splitlines()
    assert any(re.fullmatch(r"images: 20/40 img \(50%\), [\d.]+ img/s, ETA \d+s, ok=97.5%", line)
               for line in lines), lines
    assert lines[-1].startswith("images: 40/40 img (100%)") and "took" in lines[-1]
    quiet = io.StringIO()
    with progress_bar(total=3, desc="short", file=quiet) as short:  # default interval: a short task stays silent
        short.update(3)
    assert quiet.getvalue() == ""


def test_stats_columns_follow_their_content(tmp_path):
    long_reasons = {f"reason_{i:02d}_with_a_long_name": i + 1 for i in range(8)}
    stages = {"nodes": {"duration_s": 1.5, "counts": {"input": 1036, "kept": 1000, "rejected": long_reasons}},
              "images": {"duration_s": 12.25, "counts": {"input": 1000, "kept": 990, "rejected": {"timeout": 10}}}}
    (tmp_path / "stats.json").write_text(json.dumps({"name": "x", "version": "1.0.0", "stages": stages}))
    proc = run("slip-etl", "stats", str(tmp_path), cwd=tmp_path)
    lines = proc.stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("stage"))
    table = lines[start:start + 3]
    assert table[0].split() == ["stage", "seconds", "input", "kept", "rejected", "filtered"]
    assert table[1].split() == ["nodes", "1.5", "1036", "1000", "36", "0"]
    assert len({len(line) for line in table}) == 1 and len(table[0]) < 60, table  # no 100-char padded column
    assert "reason_07_with_a_long_name: 8" in proc.stdout  # the breakdown is still there, below the table
