"""The gateway's look at the Authorization header: present and well-formed for methods that need
a sign-in, before any body is read. The services verify the token; the gateway only reads it."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import jwt

from services.gateway.errors import GatewayError

# A compact JWS: three base64url parts. The header is passed to the services as gRPC metadata,
# which must be printable ASCII, so anything else is refused here and never reaches them.
_TOKEN = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")
MAX_HEADER_LENGTH = 4096


def unauthenticated(message: str) -> GatewayError:
    """A 401 as the services give it, with the challenge RFC 6750 asks for."""
    return GatewayError(401, "UNAUTHENTICATED", message, headers={"WWW-Authenticate": "Bearer"})


@dataclass(frozen=True)
class Bearer:
    """A bearer token's claims as read, not verified: the service the call goes to verifies it.

    Whatever the gateway does with them (ending a stream at `expires_at`, counting streams per
    `principal`) only ever follows a call the service has accepted with this very token.
    """

    claims: dict[str, Any]

    @property
    def expires_at(self) -> float | None:
        """The token's expiry (POSIX seconds), when it names one."""
        exp = self.claims.get("exp")
        return float(exp) if isinstance(exp, int | float) and not isinstance(exp, bool) else None

    @property
    def principal(self) -> tuple[str, str, str]:
        """Who the token names: role, organisation and subject."""
        role, organisation, subject = (str(self.claims.get(claim, "")) for claim in ("role", "org", "sub"))
        return role, organisation, subject


def read_bearer(authorization: str | None, *, required: bool) -> Bearer | None:
    """The token of an `Authorization: Bearer …` header; None when there is none and none is
    required. Raises a 401 GatewayError for a missing (when required) or malformed header."""
    if authorization is None or not authorization.strip():
        if required:
            raise unauthenticated("this method needs a bearer token (Authorization: Bearer <token>)")
        return None
    if len(authorization) > MAX_HEADER_LENGTH or not authorization.isascii():
        raise unauthenticated("invalid bearer token: malformed")
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise unauthenticated("invalid bearer token: expected a bearer token")
    if not _TOKEN.fullmatch(token):
        raise unauthenticated("invalid bearer token: malformed")
    try:
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.InvalidTokenError:
        raise unauthenticated("invalid bearer token: malformed") from None
    return Bearer(claims)
