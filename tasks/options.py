"""Prefect options shared by rnnlib's tasks.

Stages are cached by content in the library (`rnnlib.stages`: the output folder is named by a key
of code, parameters and inputs), so Prefect's own cache is off: its default keys on the flow
run, `TASK_SOURCE` on the task's lines only (not the library it calls), and a persisted result
would be a pickle to load. A task whose output is already on disk runs, finds it and returns
at once. Only transient faults are retried.
"""

from __future__ import annotations

from prefect.cache_policies import NONE

from rnnlib_tasks.retries import IO_RETRIES

TASK_OPTIONS = {"cache_policy": NONE, "persist_result": False, **IO_RETRIES}
