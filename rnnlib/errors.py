"""Errors that point at the offending input, so a user can fix the data rather than the code."""

from __future__ import annotations


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

