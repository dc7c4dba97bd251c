"""`slip-train` and `slip-eval` entry points.

Every TrainConfig field is a flag (`lambda_struct` -> `--lambda-struct`, booleans as `--x/--no-x`), generated from
the config so the CLI, `--config FILE.yaml` and `RUN/config.json` can never drift apart. Flags override the file.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import types
import typing
from pathlib import Path
from typing import Any, Optional, Sequence

from trainer.config import TrainConfig, TrainSetupError, build_config

_SHORT_HELP = """Train SLIP (CLIP + graph attention over co-purchase neighbours + structural loss) or the CLIP
baseline on a SLIP-kit release. Example:
  slip-train --release REL --method slip --model slip-tiny --batch-size 128 --workers 2 --steps 1000 --out RUN"""


def _parse_optional(inner: type) -> Any:
    def parse(text: str) -> Any:
        return None if text.lower() in ("none", "null") else inner(text)
    parse.__name__ = inner.__name__
    return parse


def _add_field(parser: argparse.ArgumentParser, name: str, field: Any) -> None:
    annotation = field.annotation
    args = typing.get_args(annotation)
    optional = (typing.get_origin(annotation) in (typing.Union, types.UnionType)) and type(None) in args
    if optional:
        annotation = next(a for a in args if a is not type(None))
    kwargs: dict[str, Any] = {"dest": name, "default": argparse.SUPPRESS,
                              "help": f"{field.description} [default: {field.default}]".replace("%", "%%")}
    origin = typing.get_origin(annotation)
    if annotation is bool:
        kwargs["action"] = argparse.BooleanOptionalAction
    elif origin is typing.Literal:
        kwargs["choices"] = list(typing.get_args(annotation))
    elif origin is list:
        kwargs.update(nargs="+", type=typing.get_args(annotation)[0])
    else:
        kwargs["type"] = _parse_optional(annotation) if optional else annotation
    parser.add_argument("--" + name.replace("_", "-"), **kwargs)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="slip-train", description=_SHORT_HELP,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=None,
                        help="YAML/JSON file with any of the fields below; flags given here override it")
    for name, field in TrainConfig.model_fields.items():
        _add_field(parser, name, field)
    return parser


def train_main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of `slip-train`; returns the exit status (2 = bad input, 1 = data failure)."""
    from trainer.data import (
        NoValidSamplesError,  # heavy imports after argument parsing: --help stays fast
    )
    from trainer.loop import train

    args = vars(build_parser().parse_args(argv))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        cfg = build_config(args.pop("config"), **args)
        summary = train(cfg)
    except TrainSetupError as exc:
        print(f"slip-train: error: {exc}", file=sys.stderr)
        return 2
    except NoValidSamplesError as exc:
        print(f"slip-train: error: {exc}", file=sys.stderr)
        return 1
    if os.environ.get("RANK", "0") == "0":  # under torchrun only rank 0 reports
        print(json.dumps(summary, sort_keys=True))
        print(Path(cfg.out).resolve())
    return 0


def eval_main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of `slip-eval` (implemented in trainer.evaluate)."""
    from trainer.evaluate import main
    return main(argv)
