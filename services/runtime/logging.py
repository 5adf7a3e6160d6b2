"""Structured JSON logs on stdout, with the request id of the call being served."""

from __future__ import annotations

import contextvars
import logging
import sys

from pythonjsonlogger.json import JsonFormatter

request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="")


class _ContextFilter(logging.Filter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self._service = service

    def filter(self, record: logging.LogRecord) -> bool:
        record.service = self._service
        request_id = request_id_var.get()
        if request_id:
            record.request_id = request_id
        return True


def configure_logging(service: str, level: str = "INFO") -> None:
    """One JSON object per line; the fields are identifiers, never personal data."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(
        JsonFormatter(
            "{asctime}{levelname}{name}{message}",
            style="{",
            rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
        )
    )
    handler.addFilter(_ContextFilter(service))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # The NATS client logs reconnect noise at INFO; our callbacks log what matters.
    logging.getLogger("nats").setLevel(logging.WARNING)
