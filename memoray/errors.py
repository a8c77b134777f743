"""The contract's error codes, and the one exception type that carries them to the wire."""

from __future__ import annotations

from enum import StrEnum
from typing import Any


class ErrorCode(StrEnum):
    INVALID_INPUT = "INVALID_INPUT"
    UNAUTHORIZED = "UNAUTHORIZED"
    FORBIDDEN = "FORBIDDEN"
    NOT_FOUND = "NOT_FOUND"
    RATE_LIMIT_EXCEEDED = "RATE_LIMIT_EXCEEDED"
    STORAGE_FULL = "STORAGE_FULL"
    EMBEDDING_FAILED = "EMBEDDING_FAILED"
    QUERY_TIMEOUT = "QUERY_TIMEOUT"
    UNAVAILABLE = "UNAVAILABLE"


class MemorayError(Exception):
    """Raised anywhere in the server; the MCP layer turns it into a tool error result.

    Messages must be safe to show the caller: they name fields, never another workspace's data.
    """

    def __init__(self, code: ErrorCode, message: str, *, retry_after: float | None = None):
        super().__init__(message)
        self.code = ErrorCode(code)
        self.message = message
        self.retry_after = retry_after

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"code": self.code.value, "message": self.message}
        if self.retry_after is not None:
            out["retryAfter"] = round(self.retry_after, 3)
        return out

    def __reduce__(self):  # survives pickling across Ray process boundaries
        return (_rebuild, (self.code.value, self.message, self.retry_after))

    def __repr__(self) -> str:
        return f"MemorayError({self.code.value}, {self.message!r})"


def _rebuild(code: str, message: str, retry_after: float | None) -> MemorayError:
    return MemorayError(ErrorCode(code), message, retry_after=retry_after)


def invalid(message: str) -> MemorayError:
    return MemorayError(ErrorCode.INVALID_INPUT, message)


def not_found(message: str) -> MemorayError:
    return MemorayError(ErrorCode.NOT_FOUND, message)
