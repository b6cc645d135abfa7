"""How many connections each token subject holds on this relay (``limits.max_connections_per_sub``).

Pure bookkeeping: a connection is admitted once its first token is accepted
(``admit``), and released when it ends (``release``). Only authenticated
connections count: anonymous ones have no subject to share a budget. Counted
per relay process, so the bound is on what one ``sub`` can hold of one relay's
file descriptors and memory, not a network-wide quota.
"""

from __future__ import annotations


class ConnectionsPerSub:
    def __init__(self, limit: int) -> None:
        """``limit``: connections one subject may hold at once; 0 for no limit."""
        if limit < 0:
            raise ValueError(f"limit must be >= 0, not {limit}")
        self.limit = limit
        self._held: dict[str, int] = {}

    def admit(self, sub: str) -> bool:
        """Count one more connection of ``sub``, unless that would pass the limit."""
        held = self._held.get(sub, 0)
        if self.limit and held >= self.limit:
            return False
        self._held[sub] = held + 1
        return True

    def release(self, sub: str) -> None:
        """A connection of ``sub`` that ``admit`` counted has ended."""
        held = self._held.get(sub, 0)
        if held <= 1:
            self._held.pop(sub, None)  # no entry left behind per subject ever seen
        else:
            self._held[sub] = held - 1

    def held(self, sub: str) -> int:
        return self._held.get(sub, 0)

    def __len__(self) -> int:
        """Subjects holding at least one connection."""
        return len(self._held)
