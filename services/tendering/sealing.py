"""Sealed bids: the cryptography of tendering, pure and without storage.

Who can read what:

- A provider encrypts its bid to the call's opening public key with HPKE (RFC 9180: X25519,
  HKDF-SHA256, AES-256-GCM), the call, lot and bidder bound in HPKE's `info`, and signs the
  ciphertext with its Ed25519 key. The service checks the signature and stores the
  ciphertext only.
- The call's opening private key exists in the clear only inside the unit of work that
  publishes the call: it is encrypted (AES-256-GCM) under a random 32-byte wrapping key,
  the wrapping key is split k-of-n by Shamir's scheme over GF(256), each share is sealed
  (HPKE) to one opening-committee member's X25519 key, and both keys are forgotten. The
  database holds the wrapped key, the sealed shares and a SHA-256 commitment per share.
- After the submission deadline, k members decrypt their shares on their own machines and
  submit them; the service checks each against its commitment, and with k of them rebuilds
  the wrapping key, unwraps the private key and opens every bid at once.

So before the deadline neither the database, nor the logs, nor the service's own keys,
nor any k-1 committee members can read a bid.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hpke
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat

from services.runtime.domain import ed25519_public_key

# Re-exported: bids, calls and bidder keys name keys by it.
from services.runtime.domain import key_fingerprint as key_fingerprint  # noqa: PLC0414

SUITE = hpke.Suite(hpke.KEM.X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM)
KEY_LENGTH = 32
SHARE_LENGTH = 1 + KEY_LENGTH
"""A share: its x coordinate (1..255) and one y byte per secret byte."""


class SealingError(ValueError):
    """A bid, share or key that does not verify or decrypt."""


# -- Shamir's secret sharing over GF(2^8) -------------------------------------------------------
# The field of AES: polynomial x^8 + x^4 + x^3 + x + 1 (0x11B). Exponent and logarithm
# tables with generator 3 make multiplication and division table look-ups.

_EXP = [0] * 510
_LOG = [0] * 256


def _build_tables() -> None:
    value = 1
    for power in range(255):
        _EXP[power] = value
        _LOG[value] = power
        # multiply by the generator 3 = x + 1: value * 2 (reduced) xor value
        doubled = value << 1
        if doubled & 0x100:
            doubled ^= 0x11B
        value = doubled ^ value
    for power in range(255, 510):
        _EXP[power] = _EXP[power - 255]


_build_tables()


def gf_mul(a: int, b: int) -> int:
    if a == 0 or b == 0:
        return 0
    return _EXP[_LOG[a] + _LOG[b]]


def gf_div(a: int, b: int) -> int:
    if b == 0:
        raise ZeroDivisionError("division by zero in GF(256)")
    if a == 0:
        return 0
    return _EXP[(_LOG[a] - _LOG[b]) % 255]


def split_secret(secret: bytes, threshold: int, count: int) -> list[bytes]:
    """`count` shares of `secret`, any `threshold` of which rebuild it and fewer reveal nothing.

    Each byte of the secret is the constant term of its own random polynomial of degree
    threshold-1; share i (x = i, 1-based) holds every polynomial's value at x.
    """
    if not 1 <= threshold <= count <= 255:
        raise ValueError("need 1 <= threshold <= count <= 255")
    shares = [bytearray([x]) for x in range(1, count + 1)]
    for byte in secret:
        coefficients = [byte, *secrets.token_bytes(threshold - 1)]
        for share in shares:
            x, y = share[0], 0
            for coefficient in reversed(coefficients):  # Horner
                y = gf_mul(y, x) ^ coefficient
            share.append(y)
    return [bytes(share) for share in shares]


def combine_shares(shares: Sequence[bytes]) -> bytes:
    """The secret from `threshold` distinct shares, by Lagrange interpolation at x = 0.

    With fewer shares than the threshold the result is a wrong value, not an error: callers
    check it (here, the AES-GCM tag of the wrapped key does).
    """
    if not shares:
        raise ValueError("no shares")
    xs = [share[0] for share in shares]
    if len(set(xs)) != len(xs) or 0 in xs:
        raise ValueError("shares must have distinct, non-zero x coordinates")
    length = len(shares[0])
    if any(len(share) != length for share in shares):
        raise ValueError("shares differ in length")
    secret = bytearray()
    for position in range(1, length):
        value = 0
        for i, share in enumerate(shares):
            basis = 1
            for j, other in enumerate(xs):
                if i != j:
                    # l_i(0) = prod x_j / (x_j - x_i); subtraction is xor in GF(2^8)
                    basis = gf_mul(basis, gf_div(other, other ^ xs[i]))
            value ^= gf_mul(share[position], basis)
        secret.append(value)
    return bytes(secret)


def share_commitment(share: bytes, call: str) -> str:
    """Hex SHA-256 binding a share to its call, kept so a submitted share can be checked."""
    return hashlib.sha256(b"kasvu-share/v1\n" + call.encode() + b"\n" + share).hexdigest()


# -- keys ----------------------------------------------------------------------------------------


def raw_public(key: X25519PrivateKey | Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def raw_private(key: X25519PrivateKey) -> bytes:
    return key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())


def x25519_public(raw: bytes, field: str) -> X25519PublicKey:
    try:
        return X25519PublicKey.from_public_bytes(raw)
    except ValueError:
        raise SealingError(f"{field} must be a raw 32-byte X25519 public key") from None


def ed25519_public(raw: bytes, field: str) -> Ed25519PublicKey:
    key = ed25519_public_key(raw)
    if key is None:
        raise SealingError(f"{field} must be a raw 32-byte Ed25519 public key")
    return key


@dataclass(frozen=True)
class OpeningKeys:
    """What is stored of a call's opening key: no part of it opens anything alone."""

    public_key: bytes
    wrapped_private_key: bytes
    """nonce (12 bytes) + AES-256-GCM of the raw private key, the call's name as AAD."""
    sealed_shares: tuple[bytes, ...]
    """Share i sealed (HPKE) to committee member i's X25519 key."""
    commitments: tuple[str, ...]


def _share_info(call: str, index: int) -> bytes:
    return f"kasvu-share/v1\n{call}\n{index}".encode()


def create_opening_keys(call: str, member_keys: Sequence[bytes], threshold: int) -> OpeningKeys:
    """A fresh opening key pair for `call`; the private key and its wrapping key are forgotten."""
    private = X25519PrivateKey.generate()
    wrapping_key = AESGCM.generate_key(bit_length=256)
    nonce = os.urandom(12)
    wrapped = nonce + AESGCM(wrapping_key).encrypt(nonce, raw_private(private), call.encode())
    shares = split_secret(wrapping_key, threshold, len(member_keys))
    sealed = tuple(
        SUITE.encrypt(share, x25519_public(key, f"committee[{i}].public_key"), info=_share_info(call, i))
        for i, (share, key) in enumerate(zip(shares, member_keys, strict=True))
    )
    return OpeningKeys(
        public_key=raw_public(private),
        wrapped_private_key=wrapped,
        sealed_shares=sealed,
        commitments=tuple(share_commitment(share, call) for share in shares),
    )


def open_share(sealed_share: bytes, member_private_key: X25519PrivateKey, call: str, index: int) -> bytes:
    """What a committee member does on its own machine: decrypt its share."""
    try:
        return SUITE.decrypt(sealed_share, member_private_key, info=_share_info(call, index))
    except InvalidTag:
        raise SealingError("the share was not sealed to this key") from None


def check_share(share: bytes, commitment: str, call: str) -> bool:
    return len(share) == SHARE_LENGTH and hmac.compare_digest(share_commitment(share, call), commitment)


def unwrap_opening_key(keys_wrapped: bytes, shares: Sequence[bytes], call: str) -> X25519PrivateKey:
    """The opening private key from k shares; SealingError when they do not rebuild it."""
    try:
        wrapping_key = combine_shares(shares)
        private = AESGCM(wrapping_key).decrypt(keys_wrapped[:12], keys_wrapped[12:], call.encode())
    except (InvalidTag, ValueError):
        raise SealingError("the shares do not rebuild the opening key") from None
    return X25519PrivateKey.from_private_bytes(private)


# -- bids ----------------------------------------------------------------------------------------


def bid_info(call: str, lot: str, bidder: str) -> bytes:
    """HPKE `info` of a bid: a ciphertext for one call, lot and bidder opens for no other."""
    return f"kasvu-bid/v1\n{call}\n{lot}\n{bidder}".encode()


def seal_bid(plaintext: bytes, call_public_key: bytes, call: str, lot: str, bidder: str) -> bytes:
    """What a provider's client does: HPKE single-shot encryption (enc || ciphertext)."""
    return SUITE.encrypt(
        plaintext, x25519_public(call_public_key, "call.opening_public_key"), info=bid_info(call, lot, bidder)
    )


def sign_sealed_bid(sealed: bytes, provider_key: Ed25519PrivateKey) -> bytes:
    return provider_key.sign(sealed)


def verify_bid_signature(sealed: bytes, signature: bytes, provider_public_key: bytes) -> None:
    key = ed25519_public(provider_public_key, "bid.public_key")
    try:
        key.verify(signature, sealed)
    except InvalidSignature:
        raise SealingError("the signature does not verify against the bid's key") from None


def bidder_key_proof_message(bidder: str, public_key: bytes) -> bytes:
    """What a provider signs with a key to enrol it for its bids: a fixed prefix (so no signature
    made for another purpose can serve as this one), the bidder and the key's 32 raw bytes (so a
    proof for one bidder enrols the key for no other)."""
    return b"kasvu-bidder-key/v1\n" + bidder.encode() + b"\n" + public_key


def sign_bidder_key(bidder: str, provider_key: Ed25519PrivateKey) -> bytes:
    """What a provider's client does to enrol `provider_key`: proof that it holds the key."""
    return provider_key.sign(bidder_key_proof_message(bidder, raw_public(provider_key)))


def verify_bidder_key_proof(bidder: str, public_key: bytes, proof: bytes) -> None:
    key = ed25519_public(public_key, "bidder_key.public_key")
    try:
        key.verify(proof, bidder_key_proof_message(bidder, public_key))
    except InvalidSignature:
        raise SealingError("is not a signature of this key over its enrolment for this bidder") from None


def open_bid(sealed: bytes, private_key: X25519PrivateKey, call: str, lot: str, bidder: str) -> bytes:
    try:
        return SUITE.decrypt(sealed, private_key, info=bid_info(call, lot, bidder))
    except (InvalidTag, ValueError):
        raise SealingError("the bid does not open with this call's key for its lot and bidder") from None


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# -- receipts ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Receipt:
    """What the service signs for a bid it received: which bid, which ciphertext, when."""

    bid: str
    call: str
    lot: str
    bidder: str
    ciphertext_sha256: str
    receive_time: str
    """RFC 3339, UTC."""

    def canonical(self) -> bytes:
        """UTF-8 JSON of the fields, keys sorted, no whitespace: the bytes the service signs."""
        return json.dumps(self.__dict__, sort_keys=True, separators=(",", ":")).encode()


def sign_receipt(receipt: Receipt, key: Ed25519PrivateKey) -> bytes:
    return key.sign(receipt.canonical())


def verify_receipt(receipt: Receipt, signature: bytes, service_public_key: bytes) -> bool:
    """A provider's check that the service signed this receipt."""
    try:
        ed25519_public(service_public_key, "receipt_public_key").verify(signature, receipt.canonical())
    except (InvalidSignature, SealingError):
        return False
    return True
