"""`EvalConfig`: what `slip-eval RUN` scores and how, validated in one place (flags are generated from it).

Light on purpose (pydantic only): the CLI builds it before torch is imported, so bad input is reported at once.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from slipio.inputs import InputError, read_mapping

_INPUT = {"panel": "Input"}
_PROTOCOL = {"panel": "Protocol"}
_OUTPUT = {"panel": "Output"}
_RUN = {"panel": "Run"}


class EvalConfig(BaseModel):
    """Resolved evaluation settings; every `slip-eval` flag is a field (`--json` is `json_out`)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)

    run: Path = Field(description="Run folder written by slip-train.",
                      json_schema_extra={**_INPUT, "argument": True})
    release: str = Field(description="Release folder (shards/, edges.parquet, ...) or its fsspec URL (https://, "
                         "s3://, file://, ...).", json_schema_extra=_INPUT)
    split: str = Field("test", description="Split to evaluate.", json_schema_extra=_INPUT)
    checkpoint: str = Field("latest", description="'latest', 'best' (runs trained with --val-every), a step "
                            "number or a checkpoint path.",
                            json_schema_extra=_INPUT)
    max_samples: Optional[int] = Field(None, ge=1, description="Evaluate at most this many samples.",
                                       json_schema_extra=_INPUT)
    max_neighbors: Optional[int] = Field(
        None, ge=1, description="Neighbours each product picks for graph-aware refinement (default: the run's).",
        json_schema_extra=_PROTOCOL)
    fewshot_pool: int = Field(1000, ge=1, description="Train-split products for few-shot probes.",
                              json_schema_extra=_PROTOCOL)
    lp_negatives: int = Field(100, ge=1, description="Sampled negatives per link-prediction query.",
                              json_schema_extra=_PROTOCOL)
    seed: int = Field(0, description="Seeds held-out edges, negatives, few-shot draws.", json_schema_extra=_PROTOCOL)
    recall_k: list[int] = Field(
        [1, 5, 10], description="Retrieval cut-offs k of R@k (every level: exact, category, neighbourhood); "
        "--recall-k 1 5 10 50.", json_schema_extra=_PROTOCOL)
    fewshot_k: list[int] = Field(
        [1, 5, 16], description="Shots per class of the few-shot probes (fewshot_K_*); --fewshot-k 1 5 16.",
        json_schema_extra=_PROTOCOL)
    templates: Optional[Path] = Field(
        None, description="YAML/JSON file with zero-shot prompt templates ({c} = class) and optional class-name "
        "overrides: {templates: [...], classnames: {label: text} or [text per class]} (default: the built-in "
        "product templates).", json_schema_extra=_PROTOCOL)
    json_out: Optional[Path] = Field(None, alias="json", description="Output JSON (default: RUN/eval-SPLIT.json).",
                                     json_schema_extra=_OUTPUT)
    md: Optional[Path] = Field(None, description="Markdown table (default: the JSON path with .md).",
                               json_schema_extra=_OUTPUT)
    batch_size: int = Field(64, ge=1, description="Encoding batch size.", json_schema_extra=_RUN)
    device: str = Field("cpu", description="torch device for the model (cpu, cuda, cuda:1, ...).",
                        json_schema_extra=_RUN)
    chunk_size: int = Field(512, ge=1, description="Retrieval queries scored at once.", json_schema_extra=_RUN)
    graph_chunk: int = Field(256, ge=1, description="Products refined per GAT subgraph.", json_schema_extra=_RUN)

    @field_validator("release", mode="before")
    @classmethod
    def _location(cls, value: Any) -> Any:
        """A folder may come as a Path (callers in Python); URLs stay strings (a Path would fold '//')."""
        return str(value) if isinstance(value, Path) else value

    @field_validator("recall_k", "fewshot_k")
    @classmethod
    def _cutoffs(cls, values: list[int]) -> list[int]:
        """Sorted, without repeats, each >= 1: the keys they name must be unique and in reading order."""
        if not values:
            raise ValueError("give at least one k")
        if min(values) < 1:
            raise ValueError(f"every k must be >= 1, got {min(values)}")
        return sorted(set(values))

    def json_path(self) -> Path:
        """Where the result JSON goes (RUN/eval-SPLIT.json unless --json)."""
        return self.json_out or self.run / f"eval-{self.split}.json"

    def md_path(self) -> Path:
        """Where the Markdown table goes (the JSON path with .md unless --md)."""
        return self.md or self.json_path().with_suffix(".md")


def flag_name(name: str) -> str:
    """How a field is spelled on the command line: RUN for the positional, else --kebab-case of its alias."""
    field = EvalConfig.model_fields.get(name)
    if field is not None and (field.json_schema_extra or {}).get("argument"):
        return name.upper()
    return "--" + ((field.alias if field is not None else None) or name).replace("_", "-")


def build_eval_config(file: Optional[Path] = None, **overrides: Any) -> EvalConfig:
    """EvalConfig from an optional YAML/JSON file (keys are field names) with `overrides` (the flags given) on top.

    Raises InputError naming the flag and what is wrong (a missing RUN, a value below 1, an unknown key).
    """
    values: dict[str, Any] = read_mapping(file) if file is not None else {}
    values.update(overrides)
    try:
        cfg = EvalConfig(**values)
    except ValidationError as exc:
        problems = "; ".join(f"{flag_name(str(err['loc'][0])) if err['loc'] else 'config'}: {err['msg']}"
                             for err in exc.errors())
        raise InputError(f"invalid eval settings: {problems}") from None
    if cfg.templates is not None:  # read now, so a bad file is reported before any model is loaded
        from trainer.prompts import load_prompt_file

        try:
            load_prompt_file(cfg.templates)
        except InputError as exc:
            raise InputError(f"--templates: {exc}") from None
    return cfg


LIST_FLAGS = frozenset({"--recall-k", "--fewshot-k"})


def spread_int_lists(argv: list[str]) -> list[str]:
    """`--recall-k 1 5 10 50` -> `--recall-k 1 --recall-k 5 ...` (the CLIP_benchmark spelling typer lacks).

    Only whole numbers after a list flag are taken as its values, so RUN may still follow the list.
    """
    out: list[str] = []
    current: Optional[str] = None
    for token in argv:
        if token.startswith("-") and not token.lstrip("-").isdigit():
            current = token if token in LIST_FLAGS else None
        elif current is not None and token.lstrip("-").isdigit():
            if out[-1] != current:
                out.append(current)
        else:
            current = None
        out.append(token)
    return out
