"""The ``history`` request and reply on the wire, for the SDK: both are the shared
``relay.protocol.frames`` Structs (``History`` and ``HistoryFrame``). ``ClientSession``
turns a reply into a ``HistoryReceived`` event.
"""

from __future__ import annotations

from collections.abc import Mapping

import msgspec

from relay.protocol.frames import MAX_HISTORY_LIMIT, History, HistoryFrame

history_decoder = msgspec.json.Decoder(HistoryFrame)


def history_request(channel: str, ref: int, limit: int, before: Mapping[str, int] | None) -> bytes:
    """The request frame; ``ValueError`` for a limit outside 1..MAX_HISTORY_LIMIT."""
    if not 1 <= limit <= MAX_HISTORY_LIMIT:
        raise ValueError(f"limit must be 1..{MAX_HISTORY_LIMIT}, not {limit!r}")
    before_body = dict(before) if before is not None else None
    # omit_defaults: an absent ``before`` is left out, as the browser client sends it
    return msgspec.json.encode(History(channel=channel, limit=limit, before=before_body, ref=ref))
