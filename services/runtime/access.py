"""Who may do what: the one tenant check every handler uses, written as data a reader can audit."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from services.runtime.auth import Principal, Role
from services.runtime.errors import PermissionDenied, Unauthenticated


@dataclass(frozen=True)
class Grant:
    """A role acting for one organisation: a region id, or a provider's business ID."""

    role: Role
    organisation: str

    def admits(self, actor: Principal) -> bool:
        return actor.role == self.role and actor.organisation == self.organisation

    def __str__(self) -> str:
        return f"{self.role.value} of {self.organisation}"


def region_admin(region: str) -> Grant:
    return Grant(Role.REGION_ADMIN, region)


def supervisor(region: str) -> Grant:
    return Grant(Role.SUPERVISOR, region)


def provider(business_id: str) -> Grant:
    return Grant(Role.PROVIDER, business_id)


def require(actor: Principal | None, *, any_of: Iterable[Grant], action: str) -> Principal:
    """The actor, when one of the grants admits it; otherwise UNAUTHENTICATED (no token) or
    PERMISSION_DENIED naming who may and who asked."""
    grants = tuple(any_of)
    if actor is None:
        raise Unauthenticated(f"{action} needs a bearer token")
    if any(grant.admits(actor) for grant in grants):
        return actor
    allowed = " or ".join(str(grant) for grant in grants) or "nobody"
    raise PermissionDenied(
        f"{action} is for a {allowed}; the token is a {actor.role.value} of {actor.organisation}",
        reason="TENANT_MISMATCH",
    )


def require_system(actor: Principal | None, refusal: str) -> None:
    """For commands only the service itself issues (a timer's, a consumed event's): any caller
    with a token is refused, with `refusal` saying what the command runs on."""
    if actor is not None:
        raise PermissionDenied(refusal, reason="SYSTEM_ONLY")
