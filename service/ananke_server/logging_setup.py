"""Logging: JSON lines (default) or text, each record carrying the request id
of the call it was logged in (a context variable, set per call)."""

from __future__ import annotations

import json
import logging
import sys
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any, TextIO

from .settings import Settings

# The request id of the call being served in this task; "" outside calls.
request_id_var: ContextVar[str] = ContextVar("ananke_request_id", default="")

# LogRecord attributes that are not `extra=` fields.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
    "message",
    "asctime",
    "request_id",
}


def bind_request_id(request_id: str) -> None:
    """Makes `request_id` the id logged for the rest of the current call."""
    request_id_var.set(request_id)


class RequestIdFilter(logging.Filter):
    """Puts the current call's request id on every record as `request_id`."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not getattr(record, "request_id", ""):
            record.request_id = request_id_var.get()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, request_id, extra fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        request_id = getattr(record, "request_id", "") or request_id_var.get()
        if request_id:
            entry["request_id"] = request_id
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """The classic line format, with the request id in brackets when there is one."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        request_id = getattr(record, "request_id", "")
        return f"{line} [request_id={request_id}]" if request_id else line


def configure_logging(settings: Settings, stream: TextIO | None = None) -> None:
    """Installs the one root handler in the configured format and level."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if settings.log_format == "json" else TextFormatter())
    handler.addFilter(RequestIdFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(settings.log_level.upper())


def prompt_fields(settings: Settings, prompt: str | None, messages: Any) -> dict[str, Any]:
    """What a log record may say about a prompt: sizes always, text only with log_prompts."""
    chars = len(prompt) if prompt is not None else sum(len(content) for _, content in messages)
    fields: dict[str, Any] = {"prompt_chars": chars}
    if settings.log_prompts:
        fields["prompt"] = prompt if prompt is not None else [list(m) for m in messages]
    return fields
