"""The NATS users are derived from the catalog: what each service may publish and read, and
how their passwords are made, kept and rotated. (tests/integration/test_nats_permissions.py
shows a real nats-server enforcing them.)"""

from __future__ import annotations

import json
import stat
from pathlib import Path

import bcrypt
import pytest
from kasvu.selfmonitoring.v1 import events_pb2

from kasvuctl.natsauth import ADMIN_USER, PASSWORDS_FILE, Permissions, ensure_auth, permission_map
from services.registry import consumers as registry_consumers
from services.runtime.catalog import CATALOG, GATEWAY, Consumption, ServiceEntry, entry


def allows(patterns: tuple[str, ...], subject: str) -> bool:
    """NATS subject matching: `*` is one token, a final `>` one or more."""
    wanted = subject.split(".")
    for pattern in patterns:
        tokens = pattern.split(".")
        if tokens[-1] == ">":
            head = tokens[:-1]
            if len(wanted) > len(head) and all(p in ("*", w) for p, w in zip(head, wanted, strict=False)):
                return True
        elif len(tokens) == len(wanted) and all(p in ("*", w) for p, w in zip(tokens, wanted, strict=True)):
            return True
    return False


def test_every_catalog_service_has_a_user_the_gateway_none_and_tools_an_administrator() -> None:
    users = permission_map()
    assert set(users) == {*(service.name for service in CATALOG), ADMIN_USER}
    assert GATEWAY not in users  # it speaks only gRPC
    assert users[ADMIN_USER] == Permissions(publish=(">",), subscribe=(">",))


def test_the_registry_may_publish_its_own_events_and_read_only_the_events_it_consumes() -> None:
    assert permission_map()["registry"] == Permissions(
        publish=(
            "kasvu.registry.v1.>",
            "$JS.API.STREAM.INFO.KASVU_REGISTRY",
            "$JS.API.STREAM.CREATE.KASVU_REGISTRY",
            "$JS.API.STREAM.UPDATE.KASVU_REGISTRY",
            "$JS.API.STREAM.MSG.GET.KASVU_REGISTRY",
            *(
                permission
                for durable, event in (
                    ("registry-breaches", "BreachOpened"),
                    ("registry-breach-resolutions", "BreachResolved"),
                )
                for permission in (
                    f"$JS.API.CONSUMER.INFO.KASVU_SELFMONITORING.{durable}",
                    f"$JS.API.CONSUMER.CREATE.KASVU_SELFMONITORING.{durable}.kasvu.selfmonitoring.v1.{event}.*",
                    f"$JS.API.CONSUMER.MSG.NEXT.KASVU_SELFMONITORING.{durable}",
                    f"$JS.ACK.KASVU_SELFMONITORING.{durable}.>",
                )
            ),
            *(
                permission
                for durable, event in (
                    ("registry-market-failures-declared", "MarketFailureDeclared"),
                    ("registry-market-failures-lifted", "MarketFailureLifted"),
                )
                for permission in (
                    f"$JS.API.CONSUMER.INFO.KASVU_TENDERING.{durable}",
                    f"$JS.API.CONSUMER.CREATE.KASVU_TENDERING.{durable}.kasvu.tendering.v1.{event}.*",
                    f"$JS.API.CONSUMER.MSG.NEXT.KASVU_TENDERING.{durable}",
                    f"$JS.ACK.KASVU_TENDERING.{durable}.>",
                )
            ),
        ),
        subscribe=("_INBOX.registry.>",),
    )


def test_selfmonitoring_reads_its_own_stream_back_for_the_alert_feed() -> None:
    permissions = permission_map()["selfmonitoring"]
    assert allows(permissions.publish, "$JS.API.CONSUMER.CREATE.KASVU_SELFMONITORING")
    assert allows(permissions.publish, "$JS.API.STREAM.NAMES")
    assert allows(permissions.publish, "$JS.FC.KASVU_SELFMONITORING.abc.1")
    assert not allows(permissions.publish, "$JS.API.CONSUMER.CREATE.KASVU_REGISTRY")


def test_no_service_may_publish_anothers_events_or_touch_anothers_stream_or_delete_any() -> None:
    users = permission_map()
    for service in CATALOG:
        publish = users[service.name].publish
        assert allows(publish, f"{service.event_package}.SomethingHappened.pirkanmaa")
        for other in CATALOG:
            for call in ("STREAM.DELETE", "STREAM.PURGE", "STREAM.MSG.DELETE", "CONSUMER.LIST"):
                assert not allows(publish, f"$JS.API.{call}.{other.stream}"), (service.name, call)
            assert not allows(publish, f"$JS.API.CONSUMER.DELETE.{other.stream}.registry-breaches")
            assert not allows(publish, f"$JS.API.CONSUMER.DURABLE.CREATE.{other.stream}.registry-breaches")
            if other is not service:
                assert not allows(publish, f"{other.event_package}.SomethingHappened.pirkanmaa")
                assert not allows(publish, f"$JS.API.STREAM.UPDATE.{other.stream}")
                assert not allows(publish, f"$JS.API.STREAM.MSG.GET.{other.stream}")
                assert not allows(users[service.name].subscribe, f"_INBOX.{other.name}.x")
        assert not allows(users[service.name].subscribe, "kasvu.registry.v1.TermsPublished.pirkanmaa")


def test_the_registrys_consumer_is_the_one_the_catalog_names() -> None:
    breaches = registry_consumers.BREACHES
    assert breaches in entry("registry").consumes
    assert f"{events_pb2.BreachOpened.DESCRIPTOR.full_name}.*" == registry_consumers.BREACHES_SUBJECT
    assert entry(breaches.stream_of).stream == registry_consumers.BREACHES_STREAM


def test_every_consumption_reads_a_catalog_stream_within_its_owners_subjects() -> None:
    for service in CATALOG:
        for consumption in service.consumes:
            owner = entry(consumption.stream_of)
            assert consumption.subject.startswith(f"{owner.event_package}."), consumption
            assert consumption.durable or owner is service, consumption


def test_the_readmes_permission_table_names_every_durable_consumer_with_its_stream_and_filter() -> None:
    """The README's Security section is what operators read; it must not fall behind the catalog."""
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    table = readme.split("### NATS users and their permissions", 1)[1].split("### ", 1)[0]
    rows = {line.split("|")[1].strip(): line for line in table.splitlines() if line.startswith("| ")}
    for service in CATALOG:
        row = rows[service.name]
        assert f"`{service.stream}`" in row, service.name
        for consumption in service.consumes:
            if not consumption.durable:
                continue
            owner = entry(consumption.stream_of)
            short_filter = consumption.subject.removeprefix(f"{owner.event_package}.")
            assert f"`{consumption.durable}`" in row, consumption
            assert f"`{short_filter}`" in row, consumption
            assert f"`{owner.stream}`" in row, consumption


def test_an_ephemeral_read_of_another_services_stream_gets_no_user() -> None:
    snooper = ServiceEntry(
        name="snooper",
        grpc_port=50099,
        stream="KASVU_SNOOPER",
        event_package="kasvu.snooper.v1",
        consumes=(Consumption(stream_of="registry", subject="kasvu.registry.v1.>"),),
    )
    with pytest.raises(ValueError, match="own stream"):
        permission_map((*CATALOG, snooper))


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_passwords_are_owner_only_hashed_for_the_server_and_kept_across_restarts(tmp_path: Path) -> None:
    first = ensure_auth(tmp_path / "auth")
    again = ensure_auth(tmp_path / "auth")

    assert _mode(tmp_path / "auth") == 0o700
    for path in (tmp_path / "auth").iterdir():
        assert _mode(path) == 0o600, path.name
    for user, credential in first.credentials.items():
        assert again.credentials[user].password == credential.password
        assert bcrypt.checkpw(credential.password.encode(), credential.bcrypt_hash.encode())
        assert credential.password not in first.config_file.read_text()
        assert credential.bcrypt_hash in first.config_file.read_text()
        assert (tmp_path / "auth" / f"{user}.env").read_text() == (
            f"KASVU_NATS_USER={user}\nKASVU_NATS_PASSWORD={credential.password}\n"
        )
    assert len({credential.password for credential in first.credentials.values()}) == len(first.credentials)


def test_rotating_a_user_changes_its_password_only(tmp_path: Path) -> None:
    before = ensure_auth(tmp_path).credentials
    after = ensure_auth(tmp_path, rotate=["registry"]).credentials

    assert after["registry"].password != before["registry"].password
    assert {user: c.password for user, c in after.items() if user != "registry"} == {
        user: c.password for user, c in before.items() if user != "registry"
    }
    kept = json.loads((tmp_path / PASSWORDS_FILE).read_text())
    assert kept["registry"]["password"] == after["registry"].password


def test_rotating_an_unknown_user_is_refused_naming_the_known_ones(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"no NATS user gateway.*registry"):
        ensure_auth(tmp_path, rotate=["gateway"])
