"""Alembic environment of the tendering database (runtime tables until calls for tenders arrive)."""

from sqlmodel import SQLModel

from services.runtime.migrate import run_env

run_env(SQLModel.metadata, ())
