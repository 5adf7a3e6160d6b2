"""Autogenerates a migration against a scratch SQLite database at the current heads.

Usage:
  python scripts/new_migration.py registry "add something"   # the registry's own tables
  python scripts/new_migration.py --runtime "add something"  # the runtime's tables (every service)
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from alembic import command

from services.runtime.migrate import RUNTIME_BRANCH, RUNTIME_VERSIONS, alembic_config, upgrade

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("service", nargs="?", help="registry, selfmonitoring or tendering")
    parser.add_argument("message")
    parser.add_argument("--runtime", action="store_true", help="a revision of the runtime's branch")
    args = parser.parse_args()
    # The runtime's revisions are generated through a service's env.py (any will do: every
    # service database holds the runtime's tables).
    service = args.service or "tendering"
    script_location = ROOT / "services" / service / "migrations"
    versions = script_location / "versions"
    if args.runtime:
        head, branch_label, version_path = f"{RUNTIME_BRANCH}@head", None, RUNTIME_VERSIONS
    elif any(versions.glob("*.py")):
        head, branch_label, version_path = f"{service}@head", None, versions
    else:
        head, branch_label, version_path = "base", service, versions
    with tempfile.TemporaryDirectory() as scratch:
        url = f"sqlite+aiosqlite:///{Path(scratch) / 'scratch.db'}"
        upgrade(url, script_location)
        command.revision(
            alembic_config(url, script_location),
            message=args.message,
            autogenerate=True,
            head=head,
            branch_label=branch_label,
            version_path=str(version_path),
        )


if __name__ == "__main__":
    main()
