"""Domain errors. The gRPC layer maps each to its status code; nothing
below the API layer knows about gRPC."""

from __future__ import annotations


class CoordinatorError(Exception):
    """Base class; ``str(err)`` is the message the client sees."""


class InvalidArgument(CoordinatorError):
    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field


class NotFound(CoordinatorError):
    pass


class AlreadyExists(CoordinatorError):
    pass


class FailedPrecondition(CoordinatorError):
    pass


class ResourceExhausted(CoordinatorError):
    pass


class PermissionDenied(CoordinatorError):
    pass


class Unavailable(CoordinatorError):
    pass


class DeadlineExceeded(CoordinatorError):
    pass


class Internal(CoordinatorError):
    pass
