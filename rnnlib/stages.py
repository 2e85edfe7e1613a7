"""Content-addressed stage outputs, shared by the library's drivers and the Prefect tasks.

A stage writes to `work_dir/<stage>/<key>/`, where the key names everything its output depends
on: a digest of the rnnlib source, the stage's parameters, and its inputs' content (file digests
for raw sources, the producing stage's key for upstream outputs, itself content-derived). A
complete output with the right key is reused, anything else is built, so two configurations
never overwrite each other and an unchanged rerun does no work.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from rnnlib.common.fingerprint import code_version, digest_json
from rnnlib.common.storage import MANIFEST, is_complete, read_json
from rnnlib.config import DaskConfig, SourceConfig
from rnnlib.sources.inputs import fingerprint_inputs

NOT_IN_KEY = (DaskConfig,)  # where the work runs does not change its result


class StageOutput(BaseModel):
    """What stages pass each other: where an output is and its manifest, never the data."""

    stage: str
    key: str
    path: str
    manifest: dict[str, Any]
    cached: bool = False  # reused from an earlier run rather than built by this one
    seconds: float = 0.0  # what getting it took this run


def fingerprint(value: Any) -> Any:
    """What a stage parameter contributes to the key: content, not names or locations."""
    if isinstance(value, StageOutput):
        return value.key
    if isinstance(value, SourceConfig):
        how = value.model_dump(mode="json", exclude={"dataset", "inputs", "mirror", "cache_dir"})
        return {"content": fingerprint_inputs(value), **how}
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    return value


def stage_key(stage: str, params: dict[str, Any]) -> str:
    return digest_json(
        {
            "stage": stage,
            "code": code_version(),
            "params": {k: fingerprint(v) for k, v in sorted(params.items())
                       if not isinstance(v, NOT_IN_KEY)},
        }
    )


def stage_dir(work_dir: str | Path, stage: str, key: str) -> Path:
    return Path(work_dir).resolve() / stage / key


def run_stage(stage: str, params: dict[str, Any], build: Callable[[Path], dict[str, Any]]) -> StageOutput:
    """The stage's output for these parameters: reused when a complete one is on disk (a
    deleted or half-written folder is rebuilt), else `build(out_dir)`, which returns the manifest.
    `params` must hold `work_dir`; every other value goes into the key."""
    start = time.perf_counter()
    key = stage_key(stage, {k: v for k, v in params.items() if k != "work_dir"})
    out = stage_dir(params["work_dir"], stage, key)
    cached = is_complete(out)
    manifest = read_json(out / MANIFEST) if cached else build(out)
    return StageOutput(stage=stage, key=key, path=str(out), manifest=manifest, cached=cached,
                       seconds=round(time.perf_counter() - start, 3))
