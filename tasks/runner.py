"""The library's pipeline drivers (`prepare`, `train_on`) run with every stage as its Prefect
task: retried on transient faults, a named task run in the UI. The order of the stages stays
written once, in the library."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from prefect import Task

from rnnlib.stages import InProcess

T = TypeVar("T")


class PrefectTasks(InProcess):
    """Runs each stage through the task that wraps it; `start` submits it, so it runs beside
    what follows. A stage without a task is an error, never silently run untracked."""

    def __init__(self, tasks: Iterable[Task]) -> None:
        self.tasks = {task.fn: task for task in tasks}

    def run(self, stage: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return self.tasks[stage](*args, **kwargs)

    def start(self, stage: Callable[..., T], *args: Any, **kwargs: Any) -> Callable[[], T]:
        return self.tasks[stage].submit(*args, **kwargs).result
