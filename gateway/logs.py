"""Structured logs: one line per event of note, ``key=value`` text or JSON lines.

One configuration (:func:`logging_config`, a :func:`logging.config.dictConfig` schema) is
applied in the process that parses the command line and, through uvicorn's ``log_config``,
in every worker process ``--workers N`` starts, so each worker logs in the same format at the
same level. (Without it a spawned worker had no handler: its info lines vanished and its
warnings came out through :data:`logging.lastResort`, unformatted.)
"""

from __future__ import annotations

import logging
import logging.config
import time
from typing import Any, Final

import msgspec

__all__ = ["TEXT_FORMAT", "JsonFormatter", "configure_logging", "logging_config"]

_json: Final = msgspec.json.Encoder()

#: the text format: time, level, logger, message
TEXT_FORMAT: Final = "%(asctime)s %(levelname)s %(name)s %(message)s"


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``ts`` (UTC, milliseconds), ``level``, ``logger``, ``msg``
    and ``exc`` (the traceback) when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return _json.encode(entry).decode()


def logging_config(level: str = "info", fmt: str = "text") -> dict[str, Any]:
    """The logging configuration as a :func:`logging.config.dictConfig` dict (what uvicorn's
    ``log_config`` takes): one stderr handler on the root logger at ``level`` (``debug``,
    ``info``, ``warning``, ``error``) in ``fmt`` (``text`` or ``json``); uvicorn's loggers
    propagate to it; httpx only from warnings on (it logs one line per request)."""
    formatter: dict[str, Any] = (
        {"()": f"{__name__}.JsonFormatter"} if fmt == "json" else {"format": TEXT_FORMAT}
    )
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"gateway": formatter},
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "formatter": "gateway",
                "stream": "ext://sys.stderr",
            }
        },
        "root": {"level": level.upper(), "handlers": ["stderr"]},
        "loggers": {
            "uvicorn": {"handlers": [], "propagate": True},
            "uvicorn.error": {"handlers": [], "propagate": True},
            "uvicorn.access": {"handlers": [], "propagate": True},
            "httpx": {"level": "WARNING"},
        },
    }


def configure_logging(level: str = "info", fmt: str = "text") -> None:
    """Apply :func:`logging_config` to this process."""
    logging.config.dictConfig(logging_config(level, fmt))
