"""Retry policy: transient faults (I/O, network) are retried with backoff; bad input and bugs
fail at once, because a retry cannot fix them (`rnnlib.errors.is_transient` tells which)."""

from __future__ import annotations

from typing import Any

from prefect.tasks import exponential_backoff

from rnnlib.errors import is_transient


def retry_on_transient(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect `retry_condition_fn`: retry only when the failure was transient."""
    try:
        state.result()
    except BaseException as exc:  # noqa: BLE001 - we classify whatever the task raised
        return is_transient(exc)
    return False


IO_RETRIES = {
    "retries": 3,
    "retry_delay_seconds": exponential_backoff(backoff_factor=2),
    "retry_jitter_factor": 0.2,
    "retry_condition_fn": retry_on_transient,
}
