"""How a process signs in to NATS: its user and password, its own reply inbox, and TLS.

The server gives each service's user leave to subscribe only under that user's inbox prefix
(`kasvuctl/natsauth.py` derives the permissions), so no service can read the replies and the
pulled events meant for another.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

INBOX_ROOT = "_INBOX"


def inbox_prefix(user: str) -> str:
    """Where a user's replies arrive: JetStream API answers, publish acks, pulled messages."""
    return f"{INBOX_ROOT}.{user}"


class NatsTlsError(ValueError):
    """The TLS files for the NATS connection do not make a usable client context."""


def tls_context(ca: Path | None, cert: Path | None, key: Path | None) -> ssl.SSLContext | None:
    """A client context verifying the server against `ca` (the system's CAs without it), with
    a client certificate when `cert` and `key` are given; None when no file is given."""
    if ca is None and cert is None and key is None:
        return None
    if (cert is None) != (key is None):
        raise NatsTlsError("a NATS client certificate needs both KASVU_NATS_TLS_CERT and KASVU_NATS_TLS_KEY")
    try:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca) if ca else None)
        if cert is not None and key is not None:
            context.load_cert_chain(str(cert), str(key))
    except (OSError, ssl.SSLError) as e:
        raise NatsTlsError(f"cannot use the NATS TLS files: {e}") from e
    return context


@dataclass(frozen=True)
class NatsAccess:
    """What `bus.connect` passes to nats.connect beyond the URL; empty means anonymous, which
    only a development server without users accepts."""

    user: str = ""
    password: str = field(default="", repr=False)
    tls: ssl.SSLContext | None = None

    def connect_options(self) -> dict[str, Any]:
        options: dict[str, Any] = {}
        if self.user:
            options.update(user=self.user, password=self.password, inbox_prefix=inbox_prefix(self.user))
        if self.tls is not None:
            options["tls"] = self.tls
        return options
