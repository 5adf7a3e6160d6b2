"""Alembic environment of the tendering database."""

from sqlmodel import SQLModel

from services.runtime.migrate import run_env
from services.tendering import alliance_store, store

run_env(SQLModel.metadata, (*store.TENDERING_TABLES, *alliance_store.TABLES))
