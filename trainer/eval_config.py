"""`EvalConfig`: what `slip-eval RUN` scores and how, validated in one place (flags are generated from it).

Light on purpose (pydantic only): the CLI builds it before torch is imported, so bad input is reported at once.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError

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
    release: Path = Field(description="Release folder (shards/, edges.parquet, ...).", json_schema_extra=_INPUT)
    split: str = Field("test", description="Split to evaluate.", json_schema_extra=_INPUT)
    checkpoint: str = Field("latest", description="'latest', a step number or a checkpoint path.",
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
    json_out: Optional[Path] = Field(None, alias="json", description="Output JSON (default: RUN/eval-SPLIT.json).",
                                     json_schema_extra=_OUTPUT)
    md: Optional[Path] = Field(None, description="Markdown table (default: the JSON path with .md).",
                               json_schema_extra=_OUTPUT)
    batch_size: int = Field(64, ge=1, description="Encoding batch size.", json_schema_extra=_RUN)
    device: str = Field("cpu", description="torch device for the model (cpu, cuda, cuda:1, ...).",
                        json_schema_extra=_RUN)
    chunk_size: int = Field(512, ge=1, description="Retrieval queries scored at once.", json_schema_extra=_RUN)
    graph_chunk: int = Field(256, ge=1, description="Products refined per GAT subgraph.", json_schema_extra=_RUN)

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
        return EvalConfig(**values)
    except ValidationError as exc:
        problems = "; ".join(f"{flag_name(str(err['loc'][0])) if err['loc'] else 'config'}: {err['msg']}"
                             for err in exc.errors())
        raise InputError(f"invalid eval settings: {problems}") from None
