"""Content-addressed caching for pipeline stages.

Prefect 3's default policy keys on the flow-run id (no reuse across runs), TASK_SOURCE hashes
only the task's own lines (not the rnnlib code it calls), and dataframe inputs hash unstably.
Here a stage's key is made of: the stage name, a digest of the rnnlib source tree, the stage's
parameters, and its inputs' content (file digests for raw sources, the producing stage's key for
upstream outputs, which is itself content-derived). The stage writes to `work_dir/stage/key`,
so two configurations never overwrite each other's outputs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect.cache_policies import CachePolicy
from prefect.context import TaskRunContext
from prefect.transactions import get_transaction
from pydantic import BaseModel

from rnnlib.config import DaskConfig, SourceConfig
from rnnlib.fingerprint import code_version, digest_json
from rnnlib.ingest import fingerprint_inputs
from rnnlib.storage import MANIFEST, is_complete, read_json
from tasks.retries import IO_RETRIES

NOT_IN_KEY = (DaskConfig,)  # where the work runs does not change its result


class StageOutput(BaseModel):
    """What stages pass each other: a path and a manifest, never the data itself."""

    stage: str
    key: str
    path: str
    manifest: dict[str, Any]


def fingerprint(value: Any) -> Any:
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


def stage_dir(work_dir: str, stage: str, key: str) -> Path:
    return Path(work_dir).resolve() / stage / key


class StageCachePolicy(CachePolicy):
    """Prefect cache policy keyed by `stage_key`; a cached result whose output folder has been
    deleted is not served (the stage runs and rebuilds it in place)."""

    def compute_key(
        self, task_ctx: TaskRunContext, inputs: dict[str, Any], flow_parameters: dict[str, Any],
        **kwargs: Any,
    ) -> str | None:
        key = stage_key(task_ctx.task.name, inputs)
        if not is_complete(stage_dir(inputs["work_dir"], task_ctx.task.name, key)):
            if task_ctx.result_store.exists(key):
                return None
        return key


def run_stage(stage: str, params: dict[str, Any], build) -> StageOutput:
    """Build a stage's output unless a complete one with the same key is already on disk. The key
    is the one the cache policy just computed for this run (hashing inputs once), if any."""
    transaction = get_transaction()
    key = transaction.key if transaction and transaction.key else stage_key(stage, params)
    out = stage_dir(params["work_dir"], stage, key)
    manifest = read_json(out / MANIFEST) if is_complete(out) else build(out)
    return StageOutput(stage=stage, key=key, path=str(out), manifest=manifest)


# Prefect options of every stage task: content-addressed cache, persisted results, I/O retries.
STAGE_TASK = {"cache_policy": StageCachePolicy(), "persist_result": True, **IO_RETRIES}
