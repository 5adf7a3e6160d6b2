"""Alembic environment of the registry's database."""

from sqlmodel import SQLModel

from services.registry import store
from services.runtime.migrate import run_env

run_env(SQLModel.metadata, store.REGISTRY_TABLES)
