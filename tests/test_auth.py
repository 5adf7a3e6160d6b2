"""Bearer tokens: what verifies, and every way a token is refused."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import stat
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from services.runtime.auth import (
    InvalidToken,
    Principal,
    Role,
    TokenVerifier,
    generate_keypair,
    mint_token,
    revoke,
    token_id,
    verify_token,
)

ADMIN = Principal(role=Role.REGION_ADMIN, organisation="pirkanmaa", subject="admin-1")
PROVIDER = Principal(role=Role.PROVIDER, organisation="0737546-2", subject="provider-7")


@pytest.fixture
def keys(tmp_path: Path) -> tuple[bytes, bytes]:
    private, public = generate_keypair(tmp_path / "keys")
    return private.read_bytes(), public.read_bytes()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _claims(**overrides: object) -> dict[str, object]:
    now = datetime.now(UTC)
    claims: dict[str, object] = {
        "iss": "kasvu-gateway",
        "aud": "kasvu",
        "sub": "admin-1",
        "role": "region_admin",
        "org": "pirkanmaa",
        "iat": now,
        "exp": now + timedelta(hours=1),
        "jti": "token-1",
    }
    claims.update(overrides)
    return claims


def _signing_key(private_pem: bytes) -> Ed25519PrivateKey:
    key = serialization.load_pem_private_key(private_pem, password=None)
    assert isinstance(key, Ed25519PrivateKey)
    return key


def test_round_trip_returns_the_principal(keys: tuple[bytes, bytes]) -> None:
    private, public = keys
    for principal in (ADMIN, PROVIDER, Principal(Role.SUPERVISOR, "pirkanmaa", "avi-3")):
        assert verify_token(public, mint_token(private, principal)) == principal


def test_keypair_is_generated_once_and_private_key_is_owner_only(tmp_path: Path) -> None:
    private, public = generate_keypair(tmp_path)
    first = private.read_bytes(), public.read_bytes()
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert b"PRIVATE KEY" in first[0] and b"PUBLIC KEY" in first[1]
    generate_keypair(tmp_path)
    assert (private.read_bytes(), public.read_bytes()) == first


def test_expired_token_is_refused(keys: tuple[bytes, bytes]) -> None:
    private, public = keys
    token = mint_token(private, ADMIN, ttl=timedelta(minutes=5))
    assert verify_token(public, token, now=datetime.now(UTC) + timedelta(minutes=4)) == ADMIN
    with pytest.raises(InvalidToken, match="expired"):
        verify_token(public, token, now=datetime.now(UTC) + timedelta(minutes=6))
    past = datetime.now(UTC) - timedelta(hours=2)
    stale = jwt.encode(
        _claims(iat=past, exp=past + timedelta(hours=1)), _signing_key(private), algorithm="EdDSA"
    )
    with pytest.raises(InvalidToken, match="expired"):
        verify_token(public, stale)


def test_a_little_clock_skew_is_tolerated_but_not_more(keys: tuple[bytes, bytes]) -> None:
    private, public = keys
    token = mint_token(private, ADMIN, ttl=timedelta(minutes=5))
    expiry = datetime.now(UTC) + timedelta(minutes=5)
    assert verify_token(public, token, now=expiry + timedelta(seconds=20)) == ADMIN
    with pytest.raises(InvalidToken, match="expired"):
        verify_token(public, token, now=expiry + timedelta(seconds=45))


def test_a_token_that_would_live_longer_than_a_day_is_neither_minted_nor_accepted(
    keys: tuple[bytes, bytes],
) -> None:
    private, public = keys
    with pytest.raises(ValueError, match="at most 24 hours"):
        mint_token(private, ADMIN, ttl=timedelta(hours=1_000_000))
    now = datetime.now(UTC)
    forged_long = jwt.encode(
        _claims(iat=now, exp=now + timedelta(days=30)), _signing_key(private), algorithm="EdDSA"
    )
    with pytest.raises(InvalidToken, match="lifetime too long"):
        verify_token(public, forged_long)


@pytest.mark.parametrize(
    "principal",
    [
        Principal(Role.PROVIDER, "not-a-business-id", "p"),
        Principal(Role.PROVIDER, "0737546-3", "p"),  # wrong check digit
        # Fullwidth digits would make a second identity for the same business.
        Principal(
            Role.PROVIDER, "".join(chr(0xFF10 + int(c)) if c.isdigit() else c for c in "0737546-2"), "p"
        ),
        Principal(Role.REGION_ADMIN, "Pirkanmaa!", "a"),
    ],
)
def test_tokens_are_minted_only_for_organisations_that_can_exist(
    keys: tuple[bytes, bytes], principal: Principal
) -> None:
    private, _ = keys
    with pytest.raises(ValueError, match="is not an organisation"):
        mint_token(private, principal)


def test_a_revoked_token_is_refused_by_the_verifier_within_a_second(
    keys: tuple[bytes, bytes], tmp_path: Path
) -> None:
    private, _ = keys
    public_file = tmp_path / "keys" / "token-public.pem"
    revoked = tmp_path / "keys" / "revoked-tokens.txt"
    verifier = TokenVerifier(public_file, revoked)
    token, other = mint_token(private, ADMIN), mint_token(private, ADMIN)
    assert verifier.verify(f"Bearer {token}") == ADMIN

    revoke(revoked, token_id(token), note="laptop lost")
    time.sleep(1.1)  # the list is read again at most once a second

    with pytest.raises(InvalidToken, match="revoked"):
        verifier.verify(f"Bearer {token}")
    assert verifier.verify(f"Bearer {other}") == ADMIN


def test_token_signed_with_another_key_is_refused(keys: tuple[bytes, bytes], tmp_path: Path) -> None:
    _, public = keys
    other_private, _ = generate_keypair(tmp_path / "other")
    forged = mint_token(other_private.read_bytes(), ADMIN)
    with pytest.raises(InvalidToken, match="bad signature"):
        verify_token(public, forged)


def test_token_with_tampered_claims_is_refused(keys: tuple[bytes, bytes]) -> None:
    private, public = keys
    header, payload, signature = mint_token(private, PROVIDER).split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["role"] = "region_admin"
    tampered = ".".join([header, _b64(json.dumps(claims).encode()), signature])
    with pytest.raises(InvalidToken, match="bad signature"):
        verify_token(public, tampered)


def test_hs256_token_keyed_with_the_public_key_is_refused(keys: tuple[bytes, bytes]) -> None:
    _, public = keys
    # The classic algorithm-confusion forgery: HMAC keyed with the public PEM.
    header = _b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = _claims(iat=1, exp=int(datetime.now(UTC).timestamp()) + 3600)
    payload = _b64(json.dumps(body).encode())
    mac = hmac.new(public, f"{header}.{payload}".encode(), hashlib.sha256).digest()
    with pytest.raises(InvalidToken, match="algorithm not allowed"):
        verify_token(public, f"{header}.{payload}.{_b64(mac)}")


def test_unsigned_token_is_refused(keys: tuple[bytes, bytes]) -> None:
    _, public = keys
    body = _claims(iat=1, exp=int(datetime.now(UTC).timestamp()) + 3600)
    header = _b64(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    unsigned = f"{header}.{_b64(json.dumps(body).encode())}."
    with pytest.raises(InvalidToken, match="algorithm not allowed"):
        verify_token(public, unsigned)


def test_wrong_audience_or_issuer_is_refused(keys: tuple[bytes, bytes]) -> None:
    private, public = keys
    key = _signing_key(private)
    with pytest.raises(InvalidToken, match="wrong audience"):
        verify_token(public, jwt.encode(_claims(aud="someone-else"), key, algorithm="EdDSA"))
    with pytest.raises(InvalidToken, match="wrong issuer"):
        verify_token(public, jwt.encode(_claims(iss="evil"), key, algorithm="EdDSA"))


def test_token_without_expiry_or_with_unknown_role_is_refused(keys: tuple[bytes, bytes]) -> None:
    private, public = keys
    key = _signing_key(private)
    claims = _claims()
    del claims["exp"]
    with pytest.raises(InvalidToken, match="missing claim"):
        verify_token(public, jwt.encode(claims, key, algorithm="EdDSA"))
    with pytest.raises(InvalidToken, match="unknown role"):
        verify_token(public, jwt.encode(_claims(role="root"), key, algorithm="EdDSA"))


@pytest.mark.parametrize("token", ["", "not-a-jwt", "a.b.c", "eyJhbGciOiJFZERTQSJ9..", "....."])
def test_malformed_token_is_refused(keys: tuple[bytes, bytes], token: str) -> None:
    _, public = keys
    with pytest.raises(InvalidToken):
        verify_token(public, token)


def test_verifier_reads_bearer_header(keys: tuple[bytes, bytes], tmp_path: Path) -> None:
    private, public = keys
    public_file = tmp_path / "public.pem"
    public_file.write_bytes(public)
    verifier = TokenVerifier(public_file)
    token = mint_token(private, PROVIDER)
    assert verifier.verify(f"Bearer {token}") == PROVIDER
    assert verifier.verify(f"bearer  {token} ") == PROVIDER
    for header in (token, f"Basic {token}", "Bearer ", ""):
        with pytest.raises(InvalidToken, match="expected a bearer token"):
            verifier.verify(header)


def test_a_token_the_verifier_remembers_is_still_refused_once_it_expires(
    keys: tuple[bytes, bytes], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    private, public = keys
    public_file = tmp_path / "public.pem"
    public_file.write_bytes(public)
    verifier = TokenVerifier(public_file)
    token = mint_token(private, PROVIDER, ttl=timedelta(minutes=5))
    assert verifier.verify(f"Bearer {token}") == PROVIDER  # checked in full, then remembered
    started = time.time()

    monkeypatch.setattr(time, "time", lambda: started + 4 * 60)
    assert verifier.verify(f"Bearer {token}") == PROVIDER
    monkeypatch.setattr(time, "time", lambda: started + 6 * 60)
    with pytest.raises(InvalidToken, match="expired"):
        verifier.verify(f"Bearer {token}")
