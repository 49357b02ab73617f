"""The one error an expression evaluation raises."""

from __future__ import annotations

from typing import Literal

from ..errors import KeystageError

ErrorKind = Literal["compile", "runtime", "timeout", "resource", "result_type"]

KIND_LABELS = {
    "compile": "cannot compile",
    "runtime": "error",
    "timeout": "timed out",
    "resource": "over a limit",
    "result_type": "wrong result",
}


class ExpressionError(KeystageError):
    """An expression could not be compiled or evaluated.

    ``kind`` is one of ``compile``, ``runtime``, ``timeout``, ``resource``, ``result_type``;
    ``line`` (and, for compile errors, ``column``) point into the admin's own text, counted
    from 1. ``log_lines`` and ``messages`` hold what the expression produced before it failed.
    """

    def __init__(self, kind: ErrorKind, message: str, *, line: int | None = None, column: int | None = None,
                 log_lines: tuple[str, ...] = (), messages: tuple[str, ...] = ()) -> None:
        self.kind: ErrorKind = kind
        self.message = message
        self.line = line
        self.column = column
        self.log_lines = log_lines
        self.messages = messages
        super().__init__(self.describe())

    def describe(self) -> str:
        where = ""
        if self.line is not None:
            where = f"line {self.line}" + (f", column {self.column}" if self.column is not None else "") + ": "
        return f"{KIND_LABELS[self.kind]}: {where}{self.message}"

    def as_json(self) -> dict[str, object]:
        return {"kind": self.kind, "line": self.line, "column": self.column, "message": self.message}
