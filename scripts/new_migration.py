"""Autogenerates a migration for one service against a scratch SQLite database at head.

Usage: python scripts/new_migration.py registry "add something"
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from alembic import command

from services.runtime.migrations import alembic_config, upgrade

ROOT = Path(__file__).resolve().parent.parent


def main(service: str, message: str) -> None:
    script_location = ROOT / "services" / service / "migrations"
    with tempfile.TemporaryDirectory() as scratch:
        url = f"sqlite+aiosqlite:///{Path(scratch) / 'scratch.db'}"
        upgrade(url, script_location)
        command.revision(alembic_config(url, script_location), message=message, autogenerate=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
