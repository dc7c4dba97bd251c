"""`slip-etl`: build a multimodal product-graph release, one stage or all of them.

stdout carries only what scripts read (the last line of `build` / a stage command is the folder it produced);
logs and progress bars go to stderr. Help layout, error lines and exit codes (2 bad input, 1 failure) are the
ones slip-train and slip-eval use (slipio.cli).
"""
from __future__ import annotations

import logging
import sys
import tempfile
from pathlib import Path
from typing import Annotated, Optional, Sequence

import typer

from etl.config import ConfigError, PipelineConfig, load_config
from etl.core.executor import check_executor
from etl.core.stage import RunOptions, StageError, output_path, run_stages
from etl.stages import STAGES
from slipio import verbosity
from slipio.cli import BAD_INPUT, FAILED, Command, described, fail, new_app, run
from slipio.inputs import InputError

PROG = "slip-etl"
app = new_app(described(
    "Build multimodal Amazon product-graph datasets: Parquet tables, WebDataset shards, validated releases.",
    "slip-etl build --source sample --category electronics --out data"), name=PROG, no_args_is_help=True)
log = logging.getLogger("slip_etl")

CategoryOpt = Annotated[str, typer.Option("--category", "-c", help="Category slug (electronics, ...) or file name.",
                                          rich_help_panel="Input")]
SourceOpt = Annotated[str, typer.Option("--source", "-s", help="sample | amazon-2023 | amazon-2018.",
                                        rich_help_panel="Input")]
OutOpt = Annotated[Path, typer.Option("--out", "-o", help="Output folder; the dataset goes to OUT/SOURCE-CATEGORY/.",
                                      rich_help_panel="Output")]
ConfigOpt = Annotated[Optional[Path], typer.Option("--config", help="A pipelines.yaml merged over the defaults.",
                                                   rich_help_panel="Config")]
SetOpt = Annotated[Optional[list[str]], typer.Option(
    "--set", metavar="SECTION.KEY=VALUE", rich_help_panel="Config",
    help="Override one value: SECTION.KEY=VALUE (repeatable; wins over --config).")]
MirrorOpt = Annotated[Optional[str], typer.Option(
    "--mirror", help="Fetch the same relative paths from another base: an http(s) URL or a local folder.",
    rich_help_panel="Input")]
AllowHostOpt = Annotated[Optional[list[str]], typer.Option(
    "--allow-host", metavar="HOST",
    help="Permit a host the URL-safety rules would refuse, e.g. a mirror on 127.0.0.1 (repeatable).",
    rich_help_panel="Input")]
ProgressOpt = Annotated[bool, typer.Option("--progress/--no-progress", help="Progress bars on stderr.",
                                           rich_help_panel="Run")]
VerboseOpt = Annotated[int, typer.Option("--verbose", "-v", count=True, help="More logging (-vv for debug).",
                                         rich_help_panel="Run")]
WaitOpt = Annotated[float, typer.Option("--wait", metavar="SECONDS", min=0, rich_help_panel="Run", help=(
    "Wait up to SECONDS for another command holding this dataset root (default: exit 2 at once, naming it)."))]
ExecutorOpt = Annotated[Optional[str], typer.Option(
    "--executor", metavar="local|ray", rich_help_panel="Run",
    help="Where images and shards run: local (default) or ray (a Ray cluster; other stages run here).")]
RayAddressOpt = Annotated[Optional[str], typer.Option(
    "--ray-address", metavar="ADDR", rich_help_panel="Run",
    help="Ray cluster to use with --executor ray: HOST:PORT, auto or ray://HOST:10001 (default: start Ray here).")]
ReleaseArg = Annotated[Path, typer.Argument(exists=True, file_okay=False, metavar="RELEASE",
                                            help="The release folder.")]


def _setup_logging(verbose: int) -> None:
    """Our INFO lines; third-party INFO and library warnings only with -v (slipio.verbosity)."""
    verbosity.configure(verbose, "slip-etl %(levelname)s %(message)s", force=True)
    for noisy in ("httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _options(cfg: PipelineConfig, category: str, source: str, out: Path, mirror: str | None,
             allow_host: list[str] | None, progress: bool) -> RunOptions:
    cfg.source(source)  # unknown source -> ConfigError naming the allowed ones
    return RunOptions(
        category=cfg.category_slug(category), source=source, out=out.resolve(), mirror=mirror,
        allow_hosts=tuple(cfg.http.allow_hosts) + tuple(allow_host or ()), progress=progress,
        image_url_rewrite=tuple(cfg.images.url_rewrite.items()),
    )


def _check_out(out: Path, root: Path) -> None:
    """Create dataset root `root` and a temp file in it: an --out that is a file, lies below a file or cannot be
    written is one clear error here instead of a traceback from whichever stage writes first. It tries rather than
    asks `os.access`, which says yes to root even on a read-only mount."""
    try:
        for folder in (root, *root.parents):
            if folder.exists():
                if not folder.is_dir():
                    raise InputError(f"--out {out}: {folder} is a file, not a folder; choose a folder for --out")
                break
        root.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=root):
            pass
    except OSError as exc:
        raise InputError(f"--out {out}: cannot write to {root} ({exc.strerror or exc}); choose a folder you can "
                         f"write to") from None


def _executor_overrides(overrides: list[str] | None, executor: str | None, ray_address: str | None) -> list[str]:
    """`--executor` / `--ray-address` as the `executor.*` values they set (flags win over --config and --set)."""
    extra = [f"executor.kind={executor}"] if executor is not None else []
    if ray_address is not None:
        extra.append(f"executor.address={ray_address}")
    return list(overrides or []) + extra


def _run(targets: list[str], force: list[str], category: str, source: str, out: Path, config: Path | None,
         overrides: list[str] | None, mirror: str | None, allow_host: list[str] | None, progress: bool,
         verbose: int, wait: float = 0.0) -> tuple[dict, RunOptions]:
    """Run stages with the source reachable; return the records and the resolved options."""
    from etl.core.lock import dataset_lock
    from etl.core.source import open_source

    _setup_logging(verbose)
    try:
        cfg = load_config(config, overrides)
        check_executor(cfg.executor)  # --executor ray without Ray installed: exit 2 before any stage runs
        opts = _options(cfg, category, source, out, mirror, allow_host, progress)
        _check_out(out, opts.dataset_root)
        with dataset_lock(opts.dataset_root, wait), open_source(cfg, opts) as live:  # one writer per root
            return run_stages(targets, STAGES, cfg, live, force=force), opts
    except (ConfigError, InputError, StageError) as exc:
        fail(PROG, exc, FAILED if isinstance(exc, StageError) else BAD_INPUT)


@app.command(cls=Command, help=described(
    "Run every stage (skipping finished ones); the last stdout line is the release folder.",
    "slip-etl build --source sample --category electronics --out data"))
def build(
    category: CategoryOpt = "electronics",
    source: SourceOpt = "amazon-2023",
    out: OutOpt = Path("out"),
    config: ConfigOpt = None,
    set_: SetOpt = None,
    mirror: MirrorOpt = None,
    allow_host: AllowHostOpt = None,
    force: Annotated[Optional[list[str]], typer.Option("--force", metavar="STAGE", help="Redo this stage (repeatable).",
                                                       rich_help_panel="Run")] = None,
    progress: ProgressOpt = True,
    verbose: VerboseOpt = 0,
    wait: WaitOpt = 0.0,
    executor: ExecutorOpt = None,
    ray_address: RayAddressOpt = None,
) -> None:
    set_ = _executor_overrides(set_, executor, ray_address)
    records, opts = _run(list(STAGES), force or [], category, source, out, config, set_, mirror, allow_host,
                         progress, verbose, wait)
    typer.echo(str(output_path(opts.dataset_root, records["release"], "release")))  # where the root is now


def _stage_command(name: str) -> None:
    def command(
        category: CategoryOpt = "electronics",
        source: SourceOpt = "amazon-2023",
        out: OutOpt = Path("out"),
        config: ConfigOpt = None,
        set_: SetOpt = None,
        mirror: MirrorOpt = None,
        allow_host: AllowHostOpt = None,
        force: Annotated[bool, typer.Option("--force", help="Redo this stage even if it is done.",
                                            rich_help_panel="Run")] = False,
        progress: ProgressOpt = True,
        verbose: VerboseOpt = 0,
        wait: WaitOpt = 0.0,
        executor: ExecutorOpt = None,
        ray_address: RayAddressOpt = None,
    ) -> None:
        set_ = _executor_overrides(set_, executor, ray_address)
        records, opts = _run([name], [name] if force else [], category, source, out, config, set_, mirror,
                             allow_host, progress, verbose, wait)
        typer.echo(str(output_path(opts.dataset_root, records[name], "release")) if name == "release"
                   else str(opts.work_dir / name))

    summary = STAGES[name].help + " Runs the finished stages it needs first (skipped when done)."
    example = f"slip-etl {name} --source sample --category electronics --out data"
    app.command(name=name, cls=Command, help=described(summary, example))(command)


for _name in STAGES:
    _stage_command(_name)


@app.command(cls=Command, help=described(
    "Print a readable summary of a dataset's stage records or a release's stats.",
    "slip-etl stats data/sample-electronics"))
def stats(
    path: Annotated[Optional[Path], typer.Argument(
        metavar="PATH", help="A release folder or dataset root (default: OUT/SOURCE-CATEGORY).")] = None,
    category: CategoryOpt = "electronics",
    source: SourceOpt = "amazon-2023",
    out: OutOpt = Path("out"),
) -> None:
    from etl.summary import print_summary

    try:
        print_summary(path if path is not None else out / f"{source}-{category}")
    except FileNotFoundError as exc:
        fail(PROG, exc, BAD_INPUT)


@app.command(cls=Command, help=described(
    "Check a release against its manifest and schemas; exit 1 on any problem.",
    "slip-etl validate data/sample-electronics/releases/VERSION"))
def validate(
    release: ReleaseArg,
    verbose: VerboseOpt = 0,
) -> None:
    from etl.release.validate import validate_release

    _setup_logging(verbose)
    problems = validate_release(release)
    for p in problems:
        typer.echo(f"PROBLEM {p}")
    if problems:
        typer.echo(f"{len(problems)} problem(s) in {release}", err=True)
        raise typer.Exit(FAILED)
    typer.echo(f"OK {release}")


@app.command(cls=Command, help=described(
    "Validate, then copy a release to a folder, any fsspec URL or the Hugging Face Hub.",
    "slip-etl publish RELEASE --to hf://datasets/ORG/NAME --dry-run"))
def publish(
    release: ReleaseArg,
    to: Annotated[str, typer.Option("--to", help="A folder, an fsspec URL, or hf://datasets/ORG/NAME.",
                                    rich_help_panel="Output")],
    dry_run: Annotated[bool, typer.Option("--dry-run", help="List what would be uploaded; upload nothing.",
                                          rich_help_panel="Run")] = False,
    verbose: VerboseOpt = 0,
) -> None:
    from etl.release.publish import PublishError, publish_release

    _setup_logging(verbose)
    try:
        for line in publish_release(release, to, dry_run=dry_run):
            typer.echo(line)
    except PublishError as exc:
        fail(PROG, exc, BAD_INPUT if isinstance(exc, InputError) else FAILED)


@app.command(cls=Command, help=described(
    "Write the embedded sample catalog (raw files + images) to a folder.", "slip-etl sample catalog --products 500"))
def sample(
    dest: Annotated[Path, typer.Argument(
        metavar="DEST", help="Folder to write the sample catalog into (usable with --mirror).")],
    category: CategoryOpt = "electronics",
    products: Annotated[int, typer.Option(help="Products in the catalog.", rich_help_panel="Input")] = 3000,
    seed: Annotated[int, typer.Option(help="Generator seed.", rich_help_panel="Input")] = 0,
) -> None:
    from etl.sample import generate_catalog

    cfg = load_config()
    generate_catalog(dest, category=cfg.category_name(category, "sample"), seed=seed, n_products=products)
    typer.echo(str(dest.resolve()))


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of `slip-etl`: exits 0 when done, 2 on bad input, 1 when a stage fails."""
    run(app, argv, PROG)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
