"""`slip-train` and `slip-eval` entry points (typer, in slip-etl's style: slipio.cli).

Every field of the command's pydantic config is a flag, generated from `model_fields` when the command is built
(`lambda_struct` -> `--lambda-struct`, Literal fields as choices, booleans as `--x/--no-x`, Optional fields also
take `none`, lists repeat the flag or take several values), so the CLI, `--config FILE` and `RUN/config.json`
cannot drift apart. Flags override the file. Torch is imported only after parsing: `--help` stays fast.
"""
from __future__ import annotations

import inspect
import json
import os
import sys
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Callable, Optional, Sequence

import typer
from pydantic import BaseModel

from slipio import verbosity
from slipio.cli import BAD_INPUT, FAILED, Command, described, error, new_app, run
from slipio.inputs import InputError, read_mapping

_TRAIN_HELP = described(
    "Train SLIP (CLIP + graph attention over co-purchase neighbours + structural loss) or the CLIP baseline on a "
    "SLIP-kit release. `slip-train encode --help`: an embedding bank of a release from frozen encoders.",
    "slip-train --release REL --method slip --model slip-tiny --batch-size 128 --workers 2 --steps 1000 --out RUN")
_EVAL_HELP = described(
    "Evaluate a slip-train run on a release split (retrieval, zero-shot, few-shot, link prediction; SLIP runs also "
    "graph-aware). `slip-eval compare RUN...` puts evaluated runs side by side.",
    "slip-eval runs/slip --release REL --split test --json runs/slip/eval-test.json")
_ENCODE_HELP = described(
    "Embedding bank of a release: frozen image and text encoders run once over every node (images from the shards, "
    "text from the node table), stored as fp16 with a manifest; resumable in chunks. Write it to REL/embeddings/NAME "
    "to attach it to the release.",
    "slip-train encode --release REL --image-encoder open_clip:ViT-B-32 --image-pretrained laion2b_s34b_b79k "
    "--text-encoder st:all-MiniLM-L6-v2 --out REL/embeddings/clip-minilm")
_COMPARE_HELP = described(
    "Side-by-side table and plots of evaluated runs: reads each RUN/eval-SPLIT.json (or a JSON path given "
    "directly) and RUN/log.jsonl.",
    "slip-eval compare runs/clip runs/slip --out compare")
CONFIG_PANEL = "Config"
# the common TrainConfig fields' sections, by their first field; a method's own options get a section of their own,
# and any field may name its section with json_schema_extra={"panel": ...}
_TRAIN_SECTIONS = {"release": "Input", "method": "Model", "batch_size": "Optimisation", "out": "Output"}


def _unwrap_optional(annotation: Any) -> tuple[bool, Any]:
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return True, rest[0] if len(rest) == 1 else Any
    return False, annotation


def _nullable(inner: Any) -> Callable[[Any], Any]:
    """Parse a flag value of an Optional field: `none`/`null` -> None, else the inner type (pydantic checks it)."""
    convert = inner if inner in (int, float) else str

    def parse(text: Any) -> Any:
        if not isinstance(text, str):  # the field's own default, passed through
            return text
        if text.lower() in ("none", "null"):
            return None
        try:
            return convert(text)
        except ValueError:
            raise typer.BadParameter(f"{text!r} is not a valid {convert.__name__} (or none)") from None
    return parse


def _option(name: str, field: Any, panel: str) -> inspect.Parameter:
    """One typer parameter for a pydantic field: its flag, type, choices, default and description."""
    extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
    optional, inner = _unwrap_optional(field.annotation)
    required = field.is_required()
    default = None if required else field.get_default(call_default_factory=True)
    flag = "--" + (field.alias or name).replace("_", "-")
    info: dict[str, Any] = {"help": field.description, "rich_help_panel": extra.get("panel", panel),
                            "show_default": not required}
    annotation: Any = inner
    if inner is bool:
        decls = [f"{flag}/--no-{flag[2:]}"]
    elif typing.get_origin(inner) is list:
        decls, annotation = [flag], Optional[list[typing.get_args(inner)[0]]]
    elif optional or required:
        decls, annotation = [flag], Optional[str]
        info.update(parser=_nullable(inner) if optional else (inner if inner in (int, float) else str),
                    metavar=_metavar(inner, optional))
    else:
        decls = [flag]
    if optional and annotation is inner:
        annotation = Optional[inner]
    if extra.get("argument"):
        param = typer.Argument(help=field.description, rich_help_panel=info["rich_help_panel"], show_default=False,
                               metavar=name.upper())
        return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None,
                                 annotation=Annotated[Optional[Path], param])
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default,
                             annotation=Annotated[annotation, typer.Option(*decls, **info)])


def _metavar(inner: Any, optional: bool) -> str:
    """typer's own metavar style (`<int>`), plus `|none` where the field is Optional."""
    if typing.get_origin(inner) is typing.Literal:
        base = "|".join(str(v) for v in typing.get_args(inner))
    else:
        base = {int: "int", float: "float", Path: "path"}.get(inner, "str")
    return f"<{base}|none>" if optional else f"<{base}>"


def _sections(model: type[BaseModel], sections: dict[str, str]) -> dict[str, str]:
    """Help panel of every field: the section it sits in (fields after a section's first field join it)."""
    panels, current = {}, "Options"
    for name in model.model_fields:
        current = sections.get(name, current)
        panels[name] = current
    return panels


def _train_panels(model: type[BaseModel]) -> dict[str, str]:
    """TrainConfig's sections, with each training method's own options under `Method NAME`."""
    from trainer.methods import registered_methods

    panels = _sections(model, _TRAIN_SECTIONS)
    for method in reversed(registered_methods()):  # an option two methods share sits with the first one
        panels.update(dict.fromkeys(method.Options.model_fields, f"Method {method.name}"))
    return panels


def config_command(model: type[BaseModel], help_text: str, panels: Optional[dict[str, str]] = None) -> typer.Typer:
    """A one-command typer app whose flags are `model`'s fields plus `--config FILE`.

    The command returns (config file or None, {field: value} for the flags actually given, -v count), so defaults
    stay the model's own and a flag overrides the file only when it is given.
    """
    panels = {name: panels.get(name, "Options") if panels else "Options" for name in model.model_fields}
    params = [inspect.Parameter("ctx", inspect.Parameter.KEYWORD_ONLY, annotation=typer.Context),
              inspect.Parameter("config", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Annotated[
                  Optional[Path], typer.Option("--config", rich_help_panel=CONFIG_PANEL, show_default=False,
                                               help="YAML/JSON file with any of the fields below (field: value); "
                                                    "flags given here override it.")])]
    params += [_option(name, field, panels[name]) for name, field in model.model_fields.items()]
    params.append(inspect.Parameter("verbose", inspect.Parameter.KEYWORD_ONLY, default=0, annotation=Annotated[
        int, typer.Option("--verbose", "-v", count=True, rich_help_panel="Run", show_default=False,
                          help="Show third-party INFO logs and library warnings (-vv: debug).")]))

    def command(ctx: typer.Context, config: Optional[Path] = None, verbose: int = 0,
                **values: Any) -> tuple[Optional[Path], dict, int]:
        given = {name: value for name, value in values.items()
                 if (source := ctx.get_parameter_source(name)) is not None and source.name == "COMMANDLINE"}
        return config, given, verbose

    command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    command.__doc__ = help_text
    app = new_app(help_text)
    app.command(cls=Command)(command)
    return app


def _list_flags(model: type[BaseModel]) -> set[str]:
    return {"--" + (f.alias or n).replace("_", "-") for n, f in model.model_fields.items()
            if typing.get_origin(_unwrap_optional(f.annotation)[1]) is list}


def spread_list_values(argv: Sequence[str], list_flags: set[str]) -> list[str]:
    """`--edge-kinds a b` (argparse's nargs='+', which older scripts use) -> `--edge-kinds a --edge-kinds b`.

    Only for commands without positional arguments: every bare word after a list flag is one of its values.
    """
    out: list[str] = []
    current: Optional[str] = None
    for token in argv:
        if token.startswith("-"):
            current = token if token in list_flags else None
        elif current is not None and out[-1] != current:
            out.append(current)
        out.append(token)
    return out


_LOG_FORMAT = "%(asctime)s %(name)s %(levelname)s %(message)s"


def train_main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of `slip-train`; returns the exit status (2 = bad input, 1 = no valid sample or a non-finite
    loss)."""
    if list(sys.argv[1:] if argv is None else argv)[:1] == ["encode"]:
        return encode_main(list(sys.argv[2:] if argv is None else argv[1:]))
    from trainer.config import TrainSetupError, build_config, config_class

    model = config_class()  # built now: every method registered by this time brings its options as flags
    args = spread_list_values(list(sys.argv[1:] if argv is None else argv), _list_flags(model))
    config_file, given, verbose = run(config_command(model, _TRAIN_HELP, _train_panels(model)), args, "slip-train")
    try:
        cfg = build_config(**{**(read_mapping(config_file) if config_file else {}), **given})
    except (InputError, TrainSetupError) as exc:
        error("slip-train", exc)
        return BAD_INPUT
    verbosity.configure(verbose, _LOG_FORMAT)  # quiet third parties unless -v (slipio.verbosity)
    from trainer.data import NoValidSamplesError  # heavy imports after parsing: --help and bad input stay fast
    from trainer.loop import NonFiniteTraining, train

    try:
        summary = train(cfg)
    except TrainSetupError as exc:
        error("slip-train", exc)
        return BAD_INPUT
    except (NoValidSamplesError, NonFiniteTraining) as exc:
        error("slip-train", exc)
        return FAILED
    if os.environ.get("RANK", "0") == "0":  # under torchrun only rank 0 reports
        print(json.dumps(summary, sort_keys=True))
        print(Path(cfg.out).resolve())
    return 0


def encode_main(argv: Sequence[str]) -> int:
    """`slip-train encode`: an embedding bank of a release from frozen encoders (trainer/encode.py); prints the
    summary as JSON, then the bank folder."""
    from trainer.encode import EncodeConfig, build_encode_config

    config_file, given, verbose = run(config_command(EncodeConfig, _ENCODE_HELP), list(argv), "slip-train encode")
    try:
        cfg = build_encode_config(config_file, **given)
    except InputError as exc:
        error("slip-train encode", exc)
        return BAD_INPUT
    verbosity.configure(verbose, _LOG_FORMAT)
    from trainer.config import TrainSetupError
    from trainer.encode import encode_bank

    try:
        summary = encode_bank(cfg)
    except TrainSetupError as exc:
        error("slip-train encode", exc)
        return BAD_INPUT
    print(json.dumps(summary, sort_keys=True))
    print(Path(cfg.out).resolve())
    return 0


def _compare_app() -> typer.Typer:
    app = new_app(_COMPARE_HELP)

    @app.command(cls=Command, help=_COMPARE_HELP)
    def compare(
        runs: Annotated[list[Path], typer.Argument(help="Run folders (or eval JSON files).", metavar="RUN...",
                                                   show_default=False, rich_help_panel="Input")],
        split: Annotated[str, typer.Option(help="Which eval-SPLIT.json to read.", rich_help_panel="Input")] = "test",
        out: Annotated[Path, typer.Option(help="Output folder.", rich_help_panel="Output")] = Path("compare"),
    ) -> dict[str, Any]:
        return {"runs": runs, "split": split, "out": out}

    return app


def compare_main(argv: Sequence[str]) -> int:
    """`slip-eval compare RUN... [--out DIR] [--split SPLIT]`: prints the files it wrote."""
    request = run(_compare_app(), argv, "slip-eval compare")
    from trainer.compare import write_comparison

    try:
        written = write_comparison(**request)
    except (FileNotFoundError, ValueError) as exc:  # ValueError: bad JSON, a damaged log.jsonl
        error("slip-eval compare", exc)
        return BAD_INPUT
    for path in written:
        print(path)
    return 0


def eval_main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of `slip-eval RUN --release REL ...` or `slip-eval compare RUN...`; returns the exit status."""
    from trainer.eval_config import EvalConfig, build_eval_config, spread_int_lists

    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["compare"]:
        return compare_main(args[1:])
    config_file, given, verbose = run(config_command(EvalConfig, _EVAL_HELP), spread_int_lists(args), "slip-eval")
    try:
        cfg = build_eval_config(config_file, **given)
    except InputError as exc:
        error("slip-eval", exc)
        return BAD_INPUT
    from trainer.config import TrainSetupError
    verbosity.configure(verbose, _LOG_FORMAT)
    from trainer.evaluate import evaluate, write_reports  # torch: after parsing

    try:
        result = evaluate(cfg)
    except (FileNotFoundError, TrainSetupError, ValueError) as exc:
        error("slip-eval", exc)
        return BAD_INPUT
    print(write_reports(cfg, result))
    return 0
