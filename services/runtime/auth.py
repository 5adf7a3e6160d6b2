"""Bearer tokens for the suite: Ed25519-signed JWTs naming a role and an organisation."""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

ISSUER = "kasvu-gateway"
AUDIENCE = "kasvu"
# Pinned: the verifier never lets the token's own header choose the algorithm,
# which is what makes "alg: none" and HS256-with-the-public-key forgeries fail.
ALGORITHM = "EdDSA"
PRIVATE_KEY_NAME = "token-private.pem"
PUBLIC_KEY_NAME = "token-public.pem"


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


def mint_token(private_key_pem: bytes, principal: Principal, ttl: timedelta = timedelta(hours=8)) -> str:
    """Signs a token for `principal` that expires after `ttl`."""
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


def _verify(key: Ed25519PublicKey, token: str, now: datetime | None) -> Principal:
    options: jwt.types.Options = {"require": ["exp", "iss", "aud", "sub"]}
    if now is not None:
        # PyJWT checks times against the wall clock; to verify "as of" another
        # moment, do the time checks here instead.
        options |= {"verify_exp": False, "verify_nbf": False, "verify_iat": False}
    try:
        claims = jwt.decode(
            token, key, algorithms=[ALGORITHM], audience=AUDIENCE, issuer=ISSUER, options=options
        )
    except jwt.InvalidTokenError as e:
        raise InvalidToken(_reason(e)) from e
    if now is not None:
        instant = now.timestamp()
        if not isinstance(claims["exp"], int | float) or instant >= claims["exp"]:
            raise InvalidToken("expired")
        nbf = claims.get("nbf")
        if isinstance(nbf, int | float) and instant < nbf:
            raise InvalidToken("not yet valid")
    try:
        role = Role(str(claims.get("role")))
    except ValueError as e:
        raise InvalidToken("unknown role") from e
    organisation, subject = claims.get("org"), claims["sub"]
    if not isinstance(organisation, str) or not organisation or not isinstance(subject, str):
        raise InvalidToken("missing organisation")
    return Principal(role=role, organisation=organisation, subject=subject)


def verify_token(public_key_pem: bytes, token: str, now: datetime | None = None) -> Principal:
    """Returns the principal a valid token names; raises InvalidToken otherwise.

    `now` verifies as of another moment (tests, replays); the wall clock by default.
    """
    return _verify(_load_public_key(public_key_pem), token, now)


class TokenVerifier:
    """Verifies `Authorization` header values against a public key read once from a file."""

    def __init__(self, public_key_file: Path) -> None:
        self._key = _load_public_key(public_key_file.read_bytes())

    def verify(self, authorization_header_value: str) -> Principal:
        scheme, _, token = authorization_header_value.strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise InvalidToken("expected a bearer token")
        return _verify(self._key, token.strip(), None)
