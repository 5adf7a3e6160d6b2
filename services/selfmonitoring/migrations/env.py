"""Alembic environment of the self-monitoring database."""

from sqlmodel import SQLModel

from services.runtime.migrate import run_env
from services.selfmonitoring import store

run_env(SQLModel.metadata, store.SELFMONITORING_TABLES)
