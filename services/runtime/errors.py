"""Domain errors: raised by the model and handlers, mapped to gRPC status codes at the edge."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FieldViolation:
    """One offending field of a request."""

    field: str
    """Dotted path as in the proto, e.g. "registration.business_id"."""
    description: str


class DomainError(Exception):
    """Base: a client's request cannot be carried out."""

    def __init__(
        self, message: str, violations: list[FieldViolation] | None = None, reason: str = ""
    ) -> None:
        super().__init__(message)
        self.message = message
        self.violations = list(violations or [])
        self.reason = reason


class InvalidArgument(DomainError):
    """The request itself is malformed or violates a rule on its fields."""


class NotFound(DomainError):
    """A named resource does not exist."""


class AlreadyExists(DomainError):
    """The resource the request would create exists already."""


class FailedPrecondition(DomainError):
    """The system is not in a state in which the request can be carried out."""


class PermissionDenied(DomainError):
    """The caller may not act on this resource (e.g. another tenant's)."""


class Unauthenticated(DomainError):
    """The caller presented no valid credentials."""


class Aborted(DomainError):
    """The request lost a race with a concurrent one; retrying it is safe."""


class Unavailable(DomainError):
    """The service cannot take the request now (shutting down, database away); retry later."""
