"""Log lines that say where they come from: region, relay and (when known) connection.

Set up once per relay process (``setup``): a handler on the root logger whose
filter stamps every record with the process's region and relay. A line about one
client connection names it: the code that logs it passes
``extra={"connection": id}``. Not a context variable: tasks
a connection starts by the way (a channel's commit loop, a gap fill, the NATS
subscription of a channel) serve everyone afterwards and would carry its id. Two
formats:

* ``text`` (default): ``time level region/relay [connection] logger: message``;
* ``json``: one object per line with ``time`` (UTC, ISO 8601), ``level``,
  ``logger``, ``message``, ``region``, ``relay``, ``connection`` (when known) and
  ``exception`` (the formatted traceback, when there is one), for log pipelines.

Tokens never reach a log line: anything shaped like a JWT (three base64url
segments, the first a JSON header) is replaced by ``<token>`` in the message and
the exception text, whichever code logged it.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from datetime import UTC, datetime
from typing import Final, Literal, TextIO

LogFormat = Literal["text", "json"]
LOG_FORMATS: Final = ("text", "json")

# A JWT's header is base64url of '{"' (eyJ); signature optional (alg none is refused
# anyway, but never printed either).
_TOKEN: Final = re.compile(r"eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")
TEXT_FORMAT: Final = "%(asctime)s %(levelname)-7s %(origin)s %(name)s: %(message)s"


def redact(text: str) -> str:
    return _TOKEN.sub("<token>", text)


class ContextFilter(logging.Filter):
    """Adds ``region``, ``relay`` and ``connection`` to every record it sees (and
    ``origin``, the three as the text format shows them)."""

    def __init__(self, region: str, relay: str) -> None:
        super().__init__()
        self.region = region
        self.relay = relay

    def filter(self, record: logging.LogRecord) -> bool:
        record.region = self.region
        record.relay = self.relay
        connection = getattr(record, "connection", None) or ""
        record.connection = connection
        where = f"{self.region}/{self.relay}" if self.region or self.relay else "-"
        record.origin = f"{where} [{connection}]" if connection else where
        return True


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line (a traceback is a field, not lines)."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": redact(record.getMessage()),
            "region": getattr(record, "region", ""),
            "relay": getattr(record, "relay", ""),
        }
        connection = getattr(record, "connection", "")
        if connection:
            line["connection"] = connection
        if record.exc_info:
            line["exception"] = redact(self.formatException(record.exc_info))
        elif record.exc_text:
            line["exception"] = redact(record.exc_text)
        if record.stack_info:
            line["stack"] = redact(self.formatStack(record.stack_info))
        return json.dumps(line, ensure_ascii=False, default=str)


def setup(
    *,
    verbose: bool = False,
    log_format: LogFormat = "text",
    region: str = "",
    relay: str = "",
    stream: TextIO | None = None,
) -> logging.Handler:
    """Log to ``stream`` (stderr) in ``log_format``, every line stamped with ``region``,
    ``relay`` and the current connection. Replaces the root handlers this installed
    before (a CLI command sets logging up once; tests may call it again)."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.addFilter(ContextFilter(region, relay))
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    handler.set_name("relaynet")
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == "relaynet"]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    for noisy in ("websockets.server", "nats"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    return handler
