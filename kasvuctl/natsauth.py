"""NATS users for the suite: one per catalog service, allowed exactly what the catalog says it
does, and an administrator for tooling; their passwords, kept in a folder of their own, and
the `authorization` block nats-server reads (bcrypt hashes only).

A service's user may publish its own subjects and the JetStream API calls for its own stream
and for the consumers it declares in the catalog (`ServiceEntry.consumes`), acknowledge what
those consumers deliver, and subscribe only under its own inbox prefix. It cannot publish
another service's events, delete or purge any stream, or read a consumer it does not own.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import bcrypt

from services.runtime.catalog import CATALOG, Consumption, ServiceEntry, entry
from services.runtime.natsaccess import NatsAccess, inbox_prefix

ADMIN_USER = "kasvu-admin"
"""Operators' and tools' user (inspecting streams, replaying dead letters): may do anything."""
JS_API = "$JS.API"
AUTH_DIR = "nats-auth"
"""The folder under the data dir where `kasvu run` keeps the NATS passwords."""
PASSWORDS_FILE = "passwords.json"
AUTH_CONF = "auth.conf"
BCRYPT_COST = 11
"""nats-server checks the hash on every connect; 11 is what `nats server passwd` uses."""


@dataclass(frozen=True)
class Permissions:
    """Subjects a user may publish to and subscribe to; everything else is refused."""

    publish: tuple[str, ...]
    subscribe: tuple[str, ...]

    def as_config(self) -> dict[str, dict[str, list[str]]]:
        return {"publish": {"allow": list(self.publish)}, "subscribe": {"allow": list(self.subscribe)}}


def _consumer_subjects(
    consumption: Consumption, own_stream: str, catalog: Iterable[ServiceEntry]
) -> list[str]:
    stream = entry(consumption.stream_of, catalog).stream
    if consumption.durable:
        durable = consumption.durable
        return [
            f"{JS_API}.CONSUMER.INFO.{stream}.{durable}",
            # The filter is part of the subject of this create call, so the user can only make
            # (or remake) its consumer over exactly the subjects the catalog names.
            f"{JS_API}.CONSUMER.CREATE.{stream}.{durable}.{consumption.subject}",
            f"{JS_API}.CONSUMER.MSG.NEXT.{stream}.{durable}",
            # ack, nak, term and in-progress are replies to these subjects.
            f"$JS.ACK.{stream}.{durable}.>",
        ]
    if stream != own_stream:
        raise ValueError(
            f"ephemeral reads of {consumption.subject} are only allowed on the reader's own stream: "
            "their filter travels in the request body, where permissions cannot check it"
        )
    return [
        # nats-py finds the stream of an ordered consumer by its subject.
        f"{JS_API}.STREAM.NAMES",
        f"{JS_API}.CONSUMER.CREATE.{stream}",
        # Flow control replies of ordered push consumers.
        f"$JS.FC.{stream}.>",
    ]


def service_permissions(service: ServiceEntry, catalog: Iterable[ServiceEntry] = CATALOG) -> Permissions:
    """What the service's NATS user may do: derived from its catalog entry and nothing else."""
    entries = tuple(catalog)
    stream = service.stream
    publish = [
        *service.subjects,
        f"{JS_API}.STREAM.INFO.{stream}",
        f"{JS_API}.STREAM.CREATE.{stream}",
        f"{JS_API}.STREAM.UPDATE.{stream}",
        # The relay reads its stream's last message after a restart, to know what is stored.
        f"{JS_API}.STREAM.MSG.GET.{stream}",
    ]
    for consumption in service.consumes:
        publish.extend(_consumer_subjects(consumption, stream, entries))
    return Permissions(publish=tuple(dict.fromkeys(publish)), subscribe=(f"{inbox_prefix(service.name)}.>",))


def permission_map(catalog: Iterable[ServiceEntry] = CATALOG) -> dict[str, Permissions]:
    """Every NATS user of the suite and what it may do: a user per catalog service (the gateway
    speaks only gRPC, so it has none) and the administrator."""
    entries = tuple(catalog)
    users = {service.name: service_permissions(service, entries) for service in entries}
    users[ADMIN_USER] = Permissions(publish=(">",), subscribe=(">",))
    return users


def write_private(path: Path, text: str) -> None:
    """Writes `text` readable by the owner only, replacing the file in one step."""
    temporary = path.with_name(f".{path.name}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(temporary, 0o600)  # O_CREAT's mode does not apply to a file left by a crash
    os.replace(temporary, path)


@dataclass(frozen=True)
class Credential:
    password: str
    bcrypt_hash: str


class NatsAuth:
    """The suite's NATS users in a folder: passwords and their hashes (`passwords.json`), the
    server's `auth.conf`, and a `<user>.env` per user for the processes, all mode 0600.

    Passwords are generated once and kept, so a restart reuses them; `rotate` replaces some.
    """

    def __init__(self, directory: Path, catalog: Iterable[ServiceEntry] = CATALOG) -> None:
        self.directory = directory
        self.permissions = permission_map(catalog)
        self.credentials: dict[str, Credential] = {}

    @property
    def config_file(self) -> Path:
        return self.directory / AUTH_CONF

    def ensure(self, rotate: Iterable[str] = ()) -> NatsAuth:
        """Loads the kept passwords, makes the missing (and the rotated) ones, writes the files."""
        rotated = set(rotate)
        unknown = rotated - set(self.permissions)
        if unknown:
            raise ValueError(
                f"no NATS user {', '.join(sorted(unknown))} (known: {', '.join(self.permissions)})"
            )
        self.directory.mkdir(parents=True, exist_ok=True)
        os.chmod(self.directory, 0o700)
        kept = self._load()
        for user in self.permissions:
            credential = kept.get(user)
            if credential is None or user in rotated:
                password = secrets.token_urlsafe(32)
                hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(BCRYPT_COST)).decode()
                credential = Credential(password, hashed)
            self.credentials[user] = credential
        write_private(
            self.directory / PASSWORDS_FILE,
            json.dumps(
                {
                    user: {"password": c.password, "bcrypt": c.bcrypt_hash}
                    for user, c in self.credentials.items()
                },
                indent=2,
            )
            + "\n",
        )
        write_private(self.config_file, self.authorization())
        for user, credential in self.credentials.items():
            write_private(
                self.directory / f"{user}.env",
                f"KASVU_NATS_USER={user}\nKASVU_NATS_PASSWORD={credential.password}\n",
            )
        return self

    def _load(self) -> dict[str, Credential]:
        path = self.directory / PASSWORDS_FILE
        if not path.exists():
            return {}
        data = json.loads(path.read_text())
        return {user: Credential(str(item["password"]), str(item["bcrypt"])) for user, item in data.items()}

    def authorization(self) -> str:
        """The server's `authorization` block: users, bcrypt hashes and permissions. No
        anonymous user: a connection without a known user and password is refused."""
        users = [
            {
                "user": user,
                "password": self.credentials[user].bcrypt_hash,
                "permissions": permissions.as_config(),
            }
            for user, permissions in self.permissions.items()
        ]
        # NATS reads JSON; one user per line keeps the file readable.
        lines = ",\n".join(f"    {json.dumps(user)}" for user in users)
        return (
            "# Generated by kasvu (kasvuctl/natsauth.py) from the service catalog; do not edit.\n"
            f"authorization {{\n  users: [\n{lines}\n  ]\n}}\n"
        )

    def access(self, user: str) -> NatsAccess:
        """Connection options for `user`, as its process would connect."""
        return NatsAccess(user=user, password=self.credentials[user].password)

    def environment(self, user: str) -> dict[str, str]:
        """The KASVU_NATS_* variables that make a process connect as `user`."""
        return {"KASVU_NATS_USER": user, "KASVU_NATS_PASSWORD": self.credentials[user].password}


def ensure_auth(
    directory: Path, catalog: Iterable[ServiceEntry] = CATALOG, rotate: Iterable[str] = ()
) -> NatsAuth:
    """The suite's NATS users in `directory`, made or reused (see NatsAuth)."""
    return NatsAuth(directory, catalog).ensure(rotate)


def without_nats_sign_in(env: Mapping[str, str]) -> dict[str, str]:
    """`env` less any KASVU_NATS_USER / KASVU_NATS_PASSWORD, so no process inherits another's."""
    return {k: v for k, v in env.items() if k not in {"KASVU_NATS_USER", "KASVU_NATS_PASSWORD"}}
