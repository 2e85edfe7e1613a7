"""Errors that point at the offending input, so a user can fix the data rather than the code."""

from __future__ import annotations

from functools import cache


class InputError(ValueError):
    """Deterministic bad input (missing/empty file, unknown column, corrupt data).

    Retrying cannot fix it, so orchestration layers must fail at once on it.
    """

    def __init__(self, reason: str, *, file: str | None = None, row: int | None = None) -> None:
        self.reason = reason
        self.file = file
        self.row = row
        where = ""
        if file is not None:
            where = f"{file}"
            if row is not None:
                where += f", row {row}"
            where += ": "
        super().__init__(f"{where}{reason}")


@cache
def _transient() -> tuple[type[BaseException], ...]:
    """Faults a retry may cure: timeouts, dropped connections, and the HTTP client's errors that
    mean the connection failed rather than the resource is bad. aiohttp is imported here, when a
    failure is classified, rather than by every import of rnnlib."""
    try:
        import aiohttp
    except ImportError:
        return (TimeoutError, ConnectionError)
    return (TimeoutError, ConnectionError, aiohttp.ClientConnectionError, aiohttp.ClientPayloadError)


PERMANENT_OS_ERRORS = (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError)


def is_transient(exc: BaseException | None) -> bool:
    """Whether retrying may help: I/O and network faults yes; bad input and bugs no. fsspec
    reports a dropped HTTP connection as FileNotFoundError caused by the network error, so the
    whole cause chain is looked at."""
    if exc is None or isinstance(exc, InputError):
        return False
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, _transient()):
            return True
        cause = cause.__cause__ or cause.__context__
    return isinstance(exc, OSError) and not isinstance(exc, PERMANENT_OS_ERRORS)
