"""The `kasvu` command: token keys, bearer tokens for trying the API, NATS users, audit checks, and running
the suite."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path

from services.runtime.auth import Principal, Role, mint_token
from services.runtime.catalog import CATALOG
from services.runtime.settings import Settings


def _keys(args: argparse.Namespace) -> int:
    from kasvuctl.launcher import KeyFilesError, ensure_keys

    try:
        private, public = ensure_keys(Settings())
    except KeyFilesError as e:
        print(e, file=sys.stderr)
        return 1
    print(f"private key: {private}\npublic key:  {public}")
    return 0


def _token(args: argparse.Namespace) -> int:
    from kasvuctl.launcher import KeyFilesError, ensure_keys

    if args.revoke:
        return _revoke(args.revoke)
    if args.role is None or args.org is None:
        print("--role and --org are required to mint a token", file=sys.stderr)
        return 2
    try:
        private, _ = ensure_keys(Settings())
    except KeyFilesError as e:
        print(e, file=sys.stderr)
        return 1
    principal = Principal(role=Role(args.role), organisation=args.org, subject=args.subject)
    try:
        token = mint_token(private.read_bytes(), principal, ttl=timedelta(hours=args.ttl_hours))
    except ValueError as error:
        print(error, file=sys.stderr)
        return 2
    # Only the token on stdout, so `TOKEN=$(kasvu token ...)` works.
    print(token)
    return 0


def _revoke(token_or_id: str) -> int:
    from services.runtime.auth import InvalidToken, revoke, token_id

    jti = token_or_id
    if token_or_id.count(".") == 2:
        try:
            jti = token_id(token_or_id)
        except InvalidToken as error:
            print(f"not a token: {error}", file=sys.stderr)
            return 2
    path = Settings().resolved_revoked_tokens_file()
    revoke(path, jti)
    print(f"revoked {jti}: every service refuses it within a second ({path})")
    return 0


def _nats_auth(args: argparse.Namespace) -> int:
    from kasvuctl.natsauth import AUTH_CONF, AUTH_DIR, PASSWORDS_FILE, ensure_auth

    directory = args.dir or Settings().data_dir / AUTH_DIR
    try:
        auth = ensure_auth(directory, rotate=args.rotate)
    except ValueError as e:
        print(e, file=sys.stderr)
        return 2
    for user in args.rotate:
        print(f"new password for {user}")
    print(
        f"NATS users in {directory}:\n"
        f"  {AUTH_CONF}: nats-server's users and permissions (bcrypt hashes); include it in its config\n"
        f"  <user>.env: KASVU_NATS_USER and KASVU_NATS_PASSWORD for each process "
        f"({', '.join(f'{user}.env' for user in auth.credentials)})\n"
        f"  {PASSWORDS_FILE}: the passwords, reused next time; keep it private"
    )
    return 0


def _audit_verify(args: argparse.Namespace) -> int:
    from kasvuctl.audit import verify_service

    settings = Settings(service=args.service)
    url = args.database_url or settings.resolved_database_url()
    return verify_service(args.service, url, expect=args.expect)


def _dead_letters(args: argparse.Namespace) -> int:
    from kasvuctl import deadletters

    url = args.database_url or Settings(service=args.service).resolved_database_url()
    if args.dead_letter_command == "list":
        return deadletters.list_dead_letters(args.service, url, include_replayed=args.all)
    return deadletters.replay_dead_letters(args.service, url, args.ids)


def _run(args: argparse.Namespace) -> int:
    from kasvuctl import launcher

    return launcher.main()


def _demo(args: argparse.Namespace) -> int:
    # Imported by name: the demo is optional and pulls in clients the rest of the CLI does not need.
    demo = importlib.import_module("kasvuctl.demo")
    code = demo.main(args.demo_args)
    return code if isinstance(code, int) else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kasvu",
        description="Kasvu: procure and supervise growth services. Settings come from KASVU_* variables.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    keys = commands.add_parser("keys", help="generate the token signing key pair in the data dir")
    keys.set_defaults(handler=_keys)

    token = commands.add_parser("token", help="print a bearer token (generates keys if missing)")
    token.add_argument("--role", choices=[role.value for role in Role])
    token.add_argument(
        "--org",
        help='region id for region_admin/supervisor ("pirkanmaa"), business ID for provider',
    )
    token.add_argument("--subject", default="kasvu-cli", help="who the token is for (default: kasvu-cli)")
    token.add_argument(
        "--ttl-hours", type=float, default=8.0, help="lifetime in hours (default: 8, at most 24)"
    )
    token.add_argument(
        "--revoke",
        metavar="TOKEN_OR_ID",
        default="",
        help="revoke a token (or its id) instead of minting one",
    )
    token.set_defaults(handler=_token)

    nats_auth = commands.add_parser(
        "nats-auth",
        help="make (or reuse) the NATS users: nats-server's auth.conf and an env file per service",
    )
    nats_auth.add_argument(
        "--dir", type=Path, default=None, help="where to write them (default: <data dir>/nats-auth)"
    )
    nats_auth.add_argument(
        "--rotate", action="append", default=[], metavar="USER", help="give USER a new password (repeatable)"
    )
    nats_auth.set_defaults(handler=_nats_auth)

    audit = commands.add_parser("audit", help="check a service's audit chain")
    audit_commands = audit.add_subparsers(dest="audit_command", required=True, metavar="ACTION")
    verify = audit_commands.add_parser(
        "verify", help="recompute the hash chain; name the first broken record (exit 1) or print the head"
    )
    verify.add_argument("service", choices=[entry.name for entry in CATALOG])
    verify.add_argument(
        "--database-url",
        default="",
        help="the service's database (default: KASVU_DATABASE_URL or its SQLite file)",
    )
    verify.add_argument(
        "--expect",
        default="",
        metavar="SEQ:HASH",
        help="a head printed by an earlier run: fails if that record is gone or differs (catches truncation)",
    )
    verify.set_defaults(handler=_audit_verify)

    dead = commands.add_parser("deadletters", help="list or replay events a service's consumers gave up on")
    dead_commands = dead.add_subparsers(dest="dead_letter_command", required=True, metavar="ACTION")
    for action, text in (
        ("list", "list the dead letters"),
        ("replay", "ask the service to apply them again"),
    ):
        sub = dead_commands.add_parser(action, help=text)
        sub.add_argument("service", choices=[entry.name for entry in CATALOG])
        sub.add_argument(
            "--database-url", default="", help="the service's database (default: its SQLite file)"
        )
        if action == "list":
            sub.add_argument("--all", action="store_true", help="include replayed ones")
        else:
            sub.add_argument("ids", nargs="+", type=int, help="dead letter ids from `list`")
        sub.set_defaults(handler=_dead_letters)

    run = commands.add_parser("run", help="run nats-server and all services locally until Ctrl-C")
    run.set_defaults(handler=_run)

    demo = commands.add_parser("demo", help="walk through the suite against a running `kasvu run`")
    demo.add_argument("demo_args", nargs="*", help="passed on to the demo (options too)")
    demo.set_defaults(handler=_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if arguments[:1] == ["demo"]:
        # The demo parses its own options, values and all; argparse here would split them.
        return _demo(argparse.Namespace(demo_args=arguments[1:]))
    args = parser.parse_args(arguments)
    code: int = args.handler(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
