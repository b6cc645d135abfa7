"""The audit log: one JSON object per line for every security event of a relay.

Events: ``auth_failed`` (a token refused, with the reason), ``denied`` (an operation
refused: op, channel, reason), ``authed`` and ``renewed`` (a token accepted: sub, jti),
``expired`` and ``revoked`` (a connection closed for its token), and
``revocation_received`` (a revocation read from some region's stream). Every line has
the same keys -- ``time`` (ISO 8601, UTC), ``event``, ``region``, ``relay``,
``connection``, ``sub``, ``jti``, ``channel``, ``op``, ``reason`` -- null where they do
not apply, plus a few event-specific ones. What a line may hold is only what these
callers pass: identifiers and short reasons, never a token, a key or message data.

``[auth] audit_file`` names a file (appended to, created mode 0600: it names users);
without one, lines go to the logger ``relaynet.audit`` at INFO, so they land wherever
the relay's logs go.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
from typing import IO, Any

from relay.config.schema import RelayConfig

log = logging.getLogger("relaynet.audit")


class AuditLog:
    def __init__(self, region: str, relay: str, path: str | None = None) -> None:
        self.region = region
        self.relay = relay
        self.path = path
        self._file: IO[str] | None = None
        self._failed = False
        if path is not None:
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            self._file = os.fdopen(fd, "a", buffering=1, encoding="utf-8")

    @classmethod
    def from_config(cls, cfg: RelayConfig) -> AuditLog:
        return cls(cfg.region.name, cfg.relay.id, cfg.auth.audit_file)

    def record(
        self,
        event: str,
        *,
        connection: str | None = None,
        sub: str | None = None,
        jti: str | None = None,
        channel: str | None = None,
        op: str | None = None,
        reason: str | None = None,
        **extra: Any,
    ) -> None:
        line = json.dumps(
            {
                "time": datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds"),
                "event": event,
                "region": self.region,
                "relay": self.relay,
                "connection": connection,
                "sub": sub,
                "jti": jti,
                "channel": channel,
                "op": op,
                "reason": reason,
                **extra,
            },
            ensure_ascii=False,
            separators=(",", ":"),
        )
        if self._file is None:
            log.info("%s", line)
            return
        try:
            self._file.write(line + "\n")
        except OSError as exc:  # a full disk must not take the relay down with it
            if not self._failed:
                log.error("audit log %s: cannot write (%s); lines go here instead", self.path, exc)
            self._failed = True
            log.info("%s", line)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
