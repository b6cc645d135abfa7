"""Entries skipped as malformed (``federation.entry_checks``): one error line and one count
per entry, whichever read path met it first, however often it is read again.

A bad entry stays in the stream until retention removes it, so every resume, history page
or fill that crosses it meets it again; an operator needs to hear of it once, with the
channel and stream sequence to find it (never its body, which may hold anything).
"""

from __future__ import annotations

import logging
from collections import OrderedDict

#: Bad entries remembered (to log and count each once); older ones may be reported again.
REMEMBERED = 4096


class BadEntries:
    def __init__(self, logger: logging.Logger) -> None:
        self.logger = logger
        #: Distinct bad entries met, by where they were read: ``live`` (the relay's live
        #: feed), ``log`` (reads of the region's own log), ``peer`` (a peer's log, by a link).
        self.counts: dict[str, int] = {}
        self._seen: OrderedDict[tuple[str, str, int], None] = OrderedDict()

    def skipped(self, source: str, where: str, seq: int, reason: str) -> None:
        key = (source, where, seq)
        if key in self._seen:
            self._seen.move_to_end(key)
            self.logger.debug("%s: skipped bad entry %s seq %d again", source, where, seq)
            return
        self._seen[key] = None
        if len(self._seen) > REMEMBERED:
            self._seen.popitem(last=False)
        self.counts[source] = self.counts.get(source, 0) + 1
        self.logger.error(
            "skipped a malformed NATS entry (%s): %s, stream sequence %d: %s",
            source,
            where,
            seq,
            reason,
        )
