"""Bearer tokens for the suite: Ed25519-signed JWTs naming a role and an organisation."""

from __future__ import annotations

import os
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from services.runtime.domain import validate_business_id, validate_resource_id
from services.runtime.errors import InvalidArgument

ISSUER = "kasvu-gateway"
AUDIENCE = "kasvu"
# Pinned: the verifier never lets the token's own header choose the algorithm,
# which is what makes "alg: none" and HS256-with-the-public-key forgeries fail.
ALGORITHM = "EdDSA"
PRIVATE_KEY_NAME = "token-private.pem"
PUBLIC_KEY_NAME = "token-public.pem"
REVOKED_NAME = "revoked-tokens.txt"
LEEWAY = timedelta(seconds=30)
"""Clock skew tolerated between the issuer and a verifying service."""
MAX_LIFETIME = timedelta(hours=24)
"""Tokens are minted and accepted for at most this long: a leaked token cannot outlive a day."""


class Role(StrEnum):
    """What a principal may do; the organisation says where."""

    REGION_ADMIN = "region_admin"
    PROVIDER = "provider"
    SUPERVISOR = "supervisor"


@dataclass(frozen=True)
class Principal:
    """The caller named by a verified token.

    `organisation` is a region id (such as "pirkanmaa") for region admins and
    supervisors, and a business ID (Y-tunnus, such as "0737546-2") for providers.
    """

    role: Role
    organisation: str
    subject: str


class InvalidToken(Exception):
    """A token was refused; the message is short and safe to return to the caller."""


def generate_keypair(directory: Path) -> tuple[Path, Path]:
    """Writes an Ed25519 key pair as PEM files, unless both already exist.

    Returns (private key path, public key path).
    """
    private_path = directory / PRIVATE_KEY_NAME
    public_path = directory / PUBLIC_KEY_NAME
    if private_path.exists() and public_path.exists():
        return private_path, public_path
    directory.mkdir(parents=True, exist_ok=True)
    key = Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    # Created with 0600 from the start, so the key is never readable by others,
    # not even between open and chmod.
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(private_pem)
    os.chmod(private_path, 0o600)  # O_CREAT's mode does not apply to an existing file
    public_path.write_bytes(public_pem)
    return private_path, public_path


def check_organisation(principal: Principal) -> None:
    """Refuses an organisation that cannot belong to the role: a provider is a business ID
    (Y-tunnus, check digit and all), a region admin or supervisor a region's id."""
    try:
        if principal.role == Role.PROVIDER:
            if validate_business_id(principal.organisation, "org") != principal.organisation:
                raise ValueError(
                    f"write the business ID as {validate_business_id(principal.organisation, 'org')}"
                )
        else:
            validate_resource_id(principal.organisation, "org")
    except InvalidArgument as error:
        raise ValueError(
            f"{principal.organisation!r} is not an organisation of a {principal.role.value}: {error.message}"
        ) from None


def mint_token(private_key_pem: bytes, principal: Principal, ttl: timedelta = timedelta(hours=8)) -> str:
    """Signs a token for `principal` that expires after `ttl` (at most MAX_LIFETIME)."""
    if not timedelta(0) < ttl <= MAX_LIFETIME:
        raise ValueError(
            f"a token lives more than 0 and at most {MAX_LIFETIME.total_seconds() / 3600:g} hours"
        )
    check_organisation(principal)
    key = serialization.load_pem_private_key(private_key_pem, password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError("the token signing key must be an Ed25519 private key")
    now = datetime.now(UTC)
    claims = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": principal.subject,
        "role": principal.role.value,
        "org": principal.organisation,
        "iat": now,
        "nbf": now,
        "exp": now + ttl,
        "jti": uuid.uuid4().hex,
    }
    return jwt.encode(claims, key, algorithm=ALGORITHM)


def _load_public_key(public_key_pem: bytes) -> Ed25519PublicKey:
    key = serialization.load_pem_public_key(public_key_pem)
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError("the token verification key must be an Ed25519 public key")
    return key


# Most specific first: several of these subclass DecodeError or each other.
_REASONS: tuple[tuple[type[jwt.InvalidTokenError], str], ...] = (
    (jwt.ExpiredSignatureError, "expired"),
    (jwt.ImmatureSignatureError, "not yet valid"),
    (jwt.InvalidSignatureError, "bad signature"),
    (jwt.InvalidAlgorithmError, "algorithm not allowed"),
    (jwt.InvalidAudienceError, "wrong audience"),
    (jwt.InvalidIssuerError, "wrong issuer"),
    (jwt.MissingRequiredClaimError, "missing claim"),
    (jwt.DecodeError, "malformed"),
)


def _reason(error: jwt.InvalidTokenError) -> str:
    """A message safe to show: says what was wrong, never echoes the token."""
    return next((reason for kind, reason in _REASONS if isinstance(error, kind)), "invalid")


def _verify(
    key: Ed25519PublicKey, token: str, now: datetime | None, revoked: frozenset[str] = frozenset()
) -> Principal:
    return _check(key, token, now, revoked)[0]


def _check(
    key: Ed25519PublicKey, token: str, now: datetime | None, revoked: frozenset[str]
) -> tuple[Principal, dict[str, Any]]:
    """The principal a valid token names, and its claims."""
    options: jwt.types.Options = {"require": ["exp", "iat", "iss", "aud", "sub", "jti"]}
    if now is not None:
        # PyJWT checks times against the wall clock; to verify "as of" another
        # moment, do the time checks here instead.
        options |= {"verify_exp": False, "verify_nbf": False, "verify_iat": False}
    try:
        claims = jwt.decode(
            token,
            key,
            algorithms=[ALGORITHM],
            audience=AUDIENCE,
            issuer=ISSUER,
            options=options,
            leeway=LEEWAY,
        )
    except jwt.InvalidTokenError as e:
        raise InvalidToken(_reason(e)) from e
    if now is not None:
        instant = now.timestamp()
        leeway = LEEWAY.total_seconds()
        if not isinstance(claims["exp"], int | float) or instant >= claims["exp"] + leeway:
            raise InvalidToken("expired")
        nbf = claims.get("nbf")
        if isinstance(nbf, int | float) and instant < nbf - leeway:
            raise InvalidToken("not yet valid")
    issued, expires = claims.get("iat"), claims.get("exp")
    if not isinstance(issued, int | float) or not isinstance(expires, int | float):
        raise InvalidToken("malformed")
    if expires - issued > MAX_LIFETIME.total_seconds():
        raise InvalidToken("lifetime too long")
    if str(claims.get("jti", "")) in revoked:
        raise InvalidToken("revoked")
    try:
        role = Role(str(claims.get("role")))
    except ValueError as e:
        raise InvalidToken("unknown role") from e
    organisation, subject = claims.get("org"), claims["sub"]
    if not isinstance(organisation, str) or not organisation or not isinstance(subject, str):
        raise InvalidToken("missing organisation")
    return Principal(role=role, organisation=organisation, subject=subject), claims


def verify_token(public_key_pem: bytes, token: str, now: datetime | None = None) -> Principal:
    """Returns the principal a valid token names; raises InvalidToken otherwise.

    `now` verifies as of another moment (tests, replays); the wall clock by default.
    """
    return _verify(_load_public_key(public_key_pem), token, now)


def token_id(token: str) -> str:
    """The id (jti) of a token, read without verifying it: for revoking one."""
    try:
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.InvalidTokenError as error:
        raise InvalidToken(_reason(error)) from error
    jti = claims.get("jti")
    if not isinstance(jti, str) or not jti:
        raise InvalidToken("missing claim")
    return jti


class RevocationList:
    """Token ids that must no longer be accepted, one per line in a file every service reads
    (`kasvu token revoke` writes it; on a cluster it is a mounted secret or config map). Read
    again when the file changes, at most once a second."""

    def __init__(self, path: Path | None) -> None:
        self._path = path
        self._ids: frozenset[str] = frozenset()
        self._stamp: tuple[float, int] | None = None
        self._checked = 0.0

    def ids(self) -> frozenset[str]:
        if self._path is None:
            return self._ids
        now = time.monotonic()
        if now - self._checked < 1.0:
            return self._ids
        self._checked = now
        try:
            stat = self._path.stat()
        except FileNotFoundError:
            self._ids, self._stamp = frozenset(), None
            return self._ids
        stamp = (stat.st_mtime, stat.st_size)
        if stamp != self._stamp:
            lines = self._path.read_text().splitlines()
            self._ids = frozenset(line.split("#", 1)[0].strip() for line in lines) - {""}
            self._stamp = stamp
        return self._ids


def revoke(path: Path, jti: str, note: str = "") -> None:
    """Adds a token id to the revocation list file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as file:
        file.write(f"{jti}{'  # ' + note if note else ''}\n")


class TokenVerifier:
    """Verifies `Authorization` header values against a public key read once from a file, and
    against the revocation list."""

    def __init__(
        self, public_key_file: Path, revoked_file: Path | None = None, *, remember: int = 4096
    ) -> None:
        self._key = _load_public_key(public_key_file.read_bytes())
        self._revoked = RevocationList(revoked_file)
        self._remember = remember
        self._verified: dict[str, tuple[Principal, str, float]] = {}
        """Token -> (principal, jti, exp) for tokens whose signature and claims were checked: a
        client sends the same token with every call, and the signature check is the costly part."""

    def verify(self, authorization_header_value: str) -> Principal:
        scheme, _, token = authorization_header_value.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise InvalidToken("expected a bearer token")
        revoked = self._revoked.ids()
        known = self._verified.get(token)
        if known is not None:
            principal, jti, expires = known
            # What can change since the first check: the clock, and the revocation list.
            if time.time() >= expires + LEEWAY.total_seconds():
                raise InvalidToken("expired")
            if jti in revoked:
                raise InvalidToken("revoked")
            return principal
        principal, claims = _check(self._key, token, None, revoked)
        if len(self._verified) >= self._remember:
            self._verified.pop(next(iter(self._verified)))
        self._verified[token] = (principal, str(claims["jti"]), float(claims["exp"]))
        return principal
