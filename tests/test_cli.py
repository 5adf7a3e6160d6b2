"""The `kasvu` command and the `kasvu run` plan, run as real processes."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import nats as nats_client
import pytest
from nats import errors as nats_errors

from kasvuctl.launcher import Plan, build_processes, wait_for_tcp
from services.runtime.auth import InvalidToken, Principal, Role, verify_token
from services.runtime.catalog import process_names


def _kasvu(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KASVU_")}
    env["KASVU_DATA_DIR"] = str(data_dir)
    return subprocess.run(
        [sys.executable, "-m", "kasvuctl.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
        check=False,
    )


def test_token_command_prints_a_token_the_public_key_verifies(tmp_path: Path) -> None:
    result = _kasvu(tmp_path, "token", "--role", "region_admin", "--org", "pirkanmaa", "--subject", "admin-1")
    assert result.returncode == 0, result.stderr
    token = result.stdout.strip()
    assert "\n" not in token
    public = (tmp_path / "keys" / "token-public.pem").read_bytes()
    assert verify_token(public, token) == Principal(Role.REGION_ADMIN, "pirkanmaa", "admin-1")


def test_token_ttl_is_honoured_and_keys_are_reused(tmp_path: Path) -> None:
    first = _kasvu(tmp_path, "token", "--role", "provider", "--org", "0737546-2", "--ttl-hours", "1")
    public = (tmp_path / "keys" / "token-public.pem").read_bytes()
    second = _kasvu(tmp_path, "token", "--role", "supervisor", "--org", "pirkanmaa")
    assert first.returncode == 0 and second.returncode == 0, first.stderr + second.stderr
    assert (tmp_path / "keys" / "token-public.pem").read_bytes() == public
    one_hour = verify_token(public, first.stdout.strip(), now=datetime.now(UTC) + timedelta(minutes=50))
    assert one_hour.role is Role.PROVIDER and one_hour.organisation == "0737546-2"
    with pytest.raises(InvalidToken, match="expired"):
        verify_token(public, first.stdout.strip(), now=datetime.now(UTC) + timedelta(minutes=70))
    assert verify_token(public, second.stdout.strip(), now=datetime.now(UTC) + timedelta(hours=7)).role is (
        Role.SUPERVISOR
    )


@pytest.mark.parametrize(
    ("arguments", "complaint"),
    [
        (("--role", "provider", "--org", "not-a-business-id"), "is not an organisation"),
        (("--role", "region_admin", "--org", "pirkanmaa", "--ttl-hours", "1000000"), "at most 24 hours"),
        (("--role", "region_admin", "--org", "pirkanmaa", "--ttl-hours", "0"), "at most 24 hours"),
    ],
)
def test_token_command_refuses_impossible_organisations_and_long_lives(
    tmp_path: Path, arguments: tuple[str, ...], complaint: str
) -> None:
    result = _kasvu(tmp_path, "token", *arguments)
    assert result.returncode == 2
    assert result.stdout == ""
    assert complaint in result.stderr


def test_a_revoked_token_is_listed_by_its_id_for_every_service(tmp_path: Path) -> None:
    token = _kasvu(tmp_path, "token", "--role", "supervisor", "--org", "pirkanmaa").stdout.strip()
    result = _kasvu(tmp_path, "token", "--revoke", token)
    assert result.returncode == 0, result.stderr
    from services.runtime.auth import token_id

    revoked = (tmp_path / "keys" / "revoked-tokens.txt").read_text().split()
    assert revoked == [token_id(token)]
    assert token not in result.stdout  # only the id is echoed, never the token


def test_token_command_rejects_unknown_role(tmp_path: Path) -> None:
    result = _kasvu(tmp_path, "token", "--role", "root", "--org", "pirkanmaa")
    assert result.returncode == 2
    assert result.stdout == ""
    assert "invalid choice" in result.stderr


def test_keys_command_creates_an_owner_only_private_key(tmp_path: Path) -> None:
    result = _kasvu(tmp_path, "keys")
    assert result.returncode == 0, result.stderr
    private = tmp_path / "keys" / "token-private.pem"
    assert private.stat().st_mode & 0o077 == 0
    assert b"PUBLIC KEY" in (tmp_path / "keys" / "token-public.pem").read_bytes()


def each_process(plan: Plan, variable: str) -> dict[str, str | None]:
    """`variable` in the environment of each planned process but nats-server."""
    return {name: env.get(variable) for name, _, env in plan[1:]}


def test_run_plan_starts_durable_nats_then_the_four_services(tmp_path: Path) -> None:
    env = {
        "PATH": os.environ.get("PATH", ""),
        "KASVU_NATS_URL": "nats://127.0.0.1:14222",
        "KASVU_LOG_LEVEL": "DEBUG",
        "KASVU_GRPC_ADDRESS": "127.0.0.1:9999",
        "KASVU_TENDERING_ADDRESS": "127.0.0.1:15053",
    }
    plan = build_processes(tmp_path / "data", env)

    assert [name for name, _, _ in plan] == ["nats", *process_names()]
    assert [name for name, _, _ in plan] == ["nats", "registry", "selfmonitoring", "tendering", "gateway"]
    _, nats_argv, nats_env = plan[0]
    assert Path(nats_argv[0]) == Path(sys.executable).parent / "nats-server"
    config = Path(nats_argv[nats_argv.index("-c") + 1])
    text = config.read_text()
    settings = [line.strip() for line in text.splitlines() if not line.strip().startswith("#")]
    assert "sync_interval: always" in settings
    assert 'listen: "127.0.0.1:14222"' in settings
    assert f'store_dir: "{(tmp_path / "data" / "nats").resolve()}"' in settings

    for name, argv, service_env in plan[1:]:
        assert argv[-3:] == [sys.executable, "-m", f"services.{name}"]
        assert "--wait-for" in argv and argv[argv.index("--wait-for") + 1] == "127.0.0.1:14222"
        assert service_env["KASVU_LOG_LEVEL"] == "DEBUG"
        assert service_env["KASVU_NATS_URL"] == "nats://127.0.0.1:14222"
        assert Path(service_env["KASVU_DATA_DIR"]).is_absolute()
    # Each service signs in to NATS as its own user; the gateway, which speaks only gRPC, not at all.
    users = each_process(plan, "KASVU_NATS_USER")
    assert users == {name: name for name in ("registry", "selfmonitoring", "tendering")} | {"gateway": None}
    passwords = each_process(plan, "KASVU_NATS_PASSWORD")
    assert passwords["gateway"] is None and len({passwords[name] for name in users} - {None}) == 3
    assert config.stat().st_mode & 0o077 == 0
    assert "authorization {" in text and not any(str(p) in text for p in passwords.values())
    assert each_process(build_processes(tmp_path / "data", env), "KASVU_NATS_PASSWORD") == passwords

    assert each_process(plan, "KASVU_GRPC_ADDRESS") == {
        "registry": "127.0.0.1:50051",
        "selfmonitoring": "127.0.0.1:50052",
        "tendering": "127.0.0.1:15053",
        "gateway": None,
    }
    assert nats_env["KASVU_DATA_DIR"] == str((tmp_path / "data").resolve())


def _connects(url: str, **options: str) -> bool:
    async def attempt() -> bool:
        try:
            client = await nats_client.connect(url, allow_reconnect=False, connect_timeout=2, **options)
        except nats_errors.Error:
            return False
        await client.close()
        return True

    return asyncio.run(attempt())


def test_planned_nats_server_lets_in_only_the_planned_users_and_releases_the_services(
    tmp_path: Path, unused_tcp_port: int
) -> None:
    plan = build_processes(tmp_path, {"KASVU_NATS_URL": f"nats://127.0.0.1:{unused_tcp_port}"})
    _, argv, _ = plan[0]
    nats = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert wait_for_tcp("127.0.0.1", unused_tcp_port, 10.0)
        registry_env = plan[1][2]
        url = registry_env["KASVU_NATS_URL"]
        assert not _connects(url)  # anonymous
        assert not _connects(url, user="registry", password="guessed")
        assert _connects(
            url, user=registry_env["KASVU_NATS_USER"], password=registry_env["KASVU_NATS_PASSWORD"]
        )
        assert (tmp_path / "nats" / "jetstream").is_dir()
        wrapped = subprocess.run(
            [*plan[1][1][:-3], sys.executable, "-c", "print('started')"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert (wrapped.returncode, wrapped.stdout) == (0, "started\n")
    finally:
        nats.terminate()
        nats.wait(timeout=10)


def test_service_wrapper_gives_up_when_nats_never_listens(unused_tcp_port: int) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "kasvuctl.launcher",
            "--wait-for",
            f"127.0.0.1:{unused_tcp_port}",
            "--timeout",
            "0.3",
            "--",
            sys.executable,
            "-c",
            "print('started')",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 1
    assert "started" not in result.stdout


def test_run_plan_serves_nats_over_tls_when_given_a_certificate(tmp_path: Path) -> None:
    env = {
        "KASVU_NATS_URL": "nats://127.0.0.1:14222",
        "KASVU_NATS_SERVER_TLS_CERT": str(tmp_path / "server.pem"),
        "KASVU_NATS_SERVER_TLS_KEY": str(tmp_path / "server-key.pem"),
    }
    plan = build_processes(tmp_path / "data", env)

    text = Path(plan[0][1][-1]).read_text()
    assert f'cert_file: "{tmp_path / "server.pem"}"' in text and "verify: true\n" not in text
    assert set(each_process(plan, "KASVU_NATS_URL").values()) == {"tls://127.0.0.1:14222"}
    with pytest.raises(ValueError, match="go together"):
        build_processes(tmp_path / "data", {"KASVU_NATS_SERVER_TLS_CERT": str(tmp_path / "server.pem")})


def test_nats_auth_command_writes_the_users_for_a_deployment_and_rotates_one(tmp_path: Path) -> None:
    made = _kasvu(tmp_path, "nats-auth", "--dir", str(tmp_path / "secrets"))
    assert made.returncode == 0, made.stderr
    assert "auth.conf" in made.stdout and "registry.env" in made.stdout
    before = (tmp_path / "secrets" / "registry.env").read_text()
    assert before.startswith("KASVU_NATS_USER=registry\nKASVU_NATS_PASSWORD=")
    tendering = (tmp_path / "secrets" / "tendering.env").read_text()

    rotated = _kasvu(tmp_path, "nats-auth", "--dir", str(tmp_path / "secrets"), "--rotate", "registry")
    assert rotated.returncode == 0, rotated.stderr
    assert "new password for registry" in rotated.stdout
    assert (tmp_path / "secrets" / "registry.env").read_text() != before
    assert (tmp_path / "secrets" / "tendering.env").read_text() == tendering

    unknown = _kasvu(tmp_path, "nats-auth", "--rotate", "gateway")
    assert unknown.returncode == 2 and "no NATS user gateway" in unknown.stderr
    assert not (tmp_path / "nats-auth").exists()
