"""What every subscriber got and every publisher sent, checked against relaynet's guarantees.

Theory of operation
-------------------
Pure: no I/O, no clock. The fault run (``relay.bench.chaos``) records two kinds
of log and hands them to ``check``, which returns every violation it finds:

* a **subscriber** log per subscriber: per channel, every message its
  application was handed, in order (for the SDK, what a ``Subscription``
  yielded; for a plain protocol client, every ``message`` frame, across its
  resumes). A subscriber that reads from one region only says which one; an
  SDK subscriber that fails over between regions says none.
* a **publisher** log per publisher: its publishes in the order it sent them
  (channel, its own number ``n``, how many messages of that channel its
  application had read when it published, and the id its ack carried, or
  none if it was never acked), and the name of the subscriber log that holds
  what it read (its own subscription).

A message is identified by what its publisher put in its data: (publisher,
``n``), so every copy of one publish is recognised whatever id or origin it
carries. The checks, one violation kind each:

``lost``            an acked publish that a subscriber which stayed subscribed never got
``duplicate``       a publish handed to one subscriber twice (same data key or same id)
``unknown``         a message no publisher sent on that channel
``id_mismatch``     a message carrying another id than its publish's ack
``not_acked``       a publish never acked by the end (liveness)
``ended``           a subscription that ended before the end of the run
``publisher_order`` a publisher's messages out of the order it sent them (per channel;
                    this includes the per-connection order PROTOCOL.md promises)
``causal``          a message before one its publisher had read before publishing it
``causal_ts``       against the vector timestamps: a message before one of the same
                    origin with a smaller counter, or before one its ``ts`` covers
``region_order``    two subscribers of one region that disagree on the order of a channel
                    (each must be a prefix of the other, as far as each got)
``total_order``     on a total-order channel: two subscribers (any regions) that disagree
                    on the order, or a message whose (vector total, origin) is not
                    greater than the one before it

Every check reads whole sequences; nothing is sampled. A check reports at most
``MAX_PER_KIND`` violations per (kind, subscriber, channel) and then one more
saying how many it left out, so that a badly broken run stays readable.
"""

from __future__ import annotations

import bisect
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

LOST: Final = "lost"
DUPLICATE: Final = "duplicate"
UNKNOWN: Final = "unknown"
ID_MISMATCH: Final = "id_mismatch"
NOT_ACKED: Final = "not_acked"
ENDED: Final = "ended"
PUBLISHER_ORDER: Final = "publisher_order"
CAUSAL: Final = "causal"
CAUSAL_TS: Final = "causal_ts"
REGION_ORDER: Final = "region_order"
TOTAL_ORDER: Final = "total_order"
KINDS: Final = (
    LOST,
    DUPLICATE,
    UNKNOWN,
    ID_MISMATCH,
    NOT_ACKED,
    ENDED,
    PUBLISHER_ORDER,
    CAUSAL,
    CAUSAL_TS,
    REGION_ORDER,
    TOTAL_ORDER,
)
MAX_PER_KIND: Final = 20

Key = tuple[str, int]  # (publisher, n): one publish, whatever copy of it


@dataclass(frozen=True, slots=True)
class Delivery:
    """One message as a subscriber's application got it. ``publisher`` and ``n`` come
    from its data; None when the data was not a fault-run message."""

    id: str
    origin: str
    ts: Mapping[str, int]
    publisher: str | None
    n: int | None

    @property
    def key(self) -> Key | None:
        if self.publisher is None or self.n is None:
            return None
        return (self.publisher, self.n)

    def describe(self) -> str:
        ts = ",".join(f"{r}:{c}" for r, c in sorted(self.ts.items()))
        return f"{self.publisher}#{self.n} (id {self.id}, {self.origin} ts {{{ts}}})"


@dataclass
class SubscriberLog:
    name: str
    # The one region it reads from (it resumes there only); None: it fails over (the SDK).
    region: str | None
    received: dict[str, list[Delivery]] = field(default_factory=dict)
    # Why its subscription ended before the end of the run, if it did.
    ended: str | None = None


@dataclass(frozen=True, slots=True)
class Publish:
    channel: str
    n: int
    # Messages of ``channel`` the publisher's application had read when it published this.
    seen: int
    # The id its ack carried; None: never acked.
    id: str | None
    # Why it was not acked, when the publisher knows (an error, still in flight at the end).
    error: str | None = None


@dataclass
class PublisherLog:
    name: str
    publishes: list[Publish] = field(default_factory=list)  # in the order sent
    # The subscriber log holding what this publisher read (its own subscription), if any.
    reader: str | None = None


@dataclass(frozen=True, slots=True)
class Violation:
    kind: str
    channel: str
    subscriber: str | None  # None: about a publisher
    detail: str
    count: int = 1  # more than 1: a summary of violations left out (see MAX_PER_KIND)

    def __str__(self) -> str:
        where = f"{self.subscriber}, " if self.subscriber else ""
        return f"{self.kind} ({where}{self.channel}): {self.detail}"


class _Found:
    """Violations, capped per (kind, subscriber, channel)."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.items: list[Violation] = []
        self._counts: Counter[tuple[str, str | None, str]] = Counter()

    def add(self, kind: str, channel: str, subscriber: str | None, detail: str) -> None:
        slot = (kind, subscriber, channel)
        self._counts[slot] += 1
        if self._counts[slot] <= self.cap:
            self.items.append(Violation(kind, channel, subscriber, detail))

    def finish(self) -> list[Violation]:
        for (kind, subscriber, channel), count in self._counts.items():
            if count > self.cap:
                more = f"... and {count - self.cap} more of this kind here"
                self.items.append(Violation(kind, channel, subscriber, more, count - self.cap))
        return self.items


def count_by_kind(violations: Iterable[Violation]) -> dict[str, int]:
    """How many of each kind, the ones left out included."""
    counts: Counter[str] = Counter()
    for v in violations:
        counts[v.kind] += v.count
    return dict(counts)


def violations_json(violations: Sequence[Violation]) -> dict[str, Any]:
    """What the benchmarks' ``--json`` reports say of the violations found."""
    by_kind = count_by_kind(violations)
    return {
        "count": sum(by_kind.values()),
        "by_kind": by_kind,
        "list": [
            {"kind": v.kind, "channel": v.channel, "subscriber": v.subscriber, "detail": v.detail}
            for v in violations
        ],
    }


def check(
    subscribers: Sequence[SubscriberLog],
    publishers: Sequence[PublisherLog],
    *,
    total_order_channels: Iterable[str] = (),
    cap: int = MAX_PER_KIND,
) -> list[Violation]:
    """Every violation of the guarantees in these logs (see the module docstring)."""
    found = _Found(cap)
    totals = set(total_order_channels)
    sent = _index_publishes(publishers, found)
    channels = sorted({ch for s in subscribers for ch in s.received} | set(sent))
    readers = {s.name: s for s in subscribers}
    ranks = {channel: _ranks(publishers, channel) for channel in channels}
    for sub in subscribers:
        if sub.ended is not None:
            found.add(ENDED, "*", sub.name, sub.ended)
        for channel in channels:
            got = sub.received.get(channel, [])
            _check_identity(sub, channel, got, sent.get(channel, {}), found)
            _check_publisher_order(sub.name, channel, got, ranks[channel], found)
            _check_causal(sub.name, channel, got, publishers, readers, found)
            _check_causal_ts(sub.name, channel, got, found)
            if channel in totals:
                _check_total_keys(sub.name, channel, got, found)
    by_region: dict[str, list[SubscriberLog]] = defaultdict(list)
    for sub in subscribers:
        if sub.region is not None:
            by_region[sub.region].append(sub)
    for channel in channels:
        for group in by_region.values():
            _check_one_order(REGION_ORDER, channel, group, found)
        if channel in totals:
            _check_one_order(TOTAL_ORDER, channel, list(subscribers), found)
    return found.finish()


# --- what was sent ------------------------------------------------------------------------


def _index_publishes(
    publishers: Sequence[PublisherLog], found: _Found
) -> dict[str, dict[Key, Publish]]:
    sent: dict[str, dict[Key, Publish]] = defaultdict(dict)
    for pub in publishers:
        for p in pub.publishes:
            sent[p.channel][(pub.name, p.n)] = p
            if p.id is None:
                why = f": {p.error}" if p.error else ""
                found.add(NOT_ACKED, p.channel, None, f"{pub.name}#{p.n} was never acked{why}")
    return sent


def _check_identity(
    sub: SubscriberLog,
    channel: str,
    got: Sequence[Delivery],
    sent: Mapping[Key, Publish],
    found: _Found,
) -> None:
    """Unknown, duplicate, id_mismatch, lost."""
    keys: dict[Key, int] = {}
    ids: dict[str, int] = {}
    for i, d in enumerate(got):
        key = d.key
        publish = sent.get(key) if key is not None else None
        if publish is None:
            found.add(UNKNOWN, channel, sub.name, f"#{i}: {d.describe()} was never sent here")
        elif publish.id is not None and d.id != publish.id:
            found.add(
                ID_MISMATCH, channel, sub.name, f"#{i}: {d.describe()}, its ack said {publish.id}"
            )
        if key is not None and key in keys:
            found.add(DUPLICATE, channel, sub.name, f"#{i}: {d.describe()}, also #{keys[key]}")
        elif d.id in ids:
            found.add(DUPLICATE, channel, sub.name, f"#{i}: id {d.id} again, also #{ids[d.id]}")
        if key is not None:
            keys.setdefault(key, i)
        ids.setdefault(d.id, i)
    if sub.ended is not None:
        return  # it did not stay subscribed: nothing to expect
    for key, publish in sent.items():
        if publish.id is not None and key not in keys:
            found.add(
                LOST, channel, sub.name, f"{key[0]}#{key[1]} (id {publish.id}) acked, never got"
            )


# --- orders -------------------------------------------------------------------------------


def _ranks(publishers: Sequence[PublisherLog], channel: str) -> dict[Key, int]:
    """Each publish's place among its publisher's publishes on the channel, in send order."""
    rank: dict[Key, int] = {}
    for pub in publishers:
        mine = [p for p in pub.publishes if p.channel == channel]
        rank |= {(pub.name, p.n): r for r, p in enumerate(mine)}
    return rank


def _check_publisher_order(
    name: str, channel: str, got: Sequence[Delivery], rank: Mapping[Key, int], found: _Found
) -> None:
    last: dict[str, tuple[int, int, Delivery]] = {}  # publisher -> its latest here
    for i, d in _firsts(got):
        key = d.key
        if key is None or key not in rank:
            continue
        r = rank[key]
        before = last.get(key[0])
        if before is not None and r < before[0]:
            found.add(
                PUBLISHER_ORDER,
                channel,
                name,
                f"#{i}: {d.describe()} after #{before[1]}: {before[2].describe()}, "
                f"which {key[0]} sent later",
            )
        else:
            last[key[0]] = (r, i, d)


def _check_causal(
    name: str,
    channel: str,
    got: Sequence[Delivery],
    publishers: Sequence[PublisherLog],
    readers: Mapping[str, SubscriberLog],
    found: _Found,
) -> None:
    """A publish after everything its publisher had read on the channel before it."""
    where: dict[Key, int] = {}
    for i, d in enumerate(got):
        if d.key is not None:
            where.setdefault(d.key, i)
    for pub in publishers:
        reader = readers.get(pub.reader) if pub.reader is not None else None
        if reader is None:
            continue
        read = [d.key for d in reader.received.get(channel, [])]
        # latest[k]: the largest index here of the first k messages the publisher read
        latest = [-1]
        for key in read:
            latest.append(max(latest[-1], where.get(key, -1) if key is not None else -1))
        for p in pub.publishes:
            if p.channel != channel:
                continue
            at = where.get((pub.name, p.n))
            seen = min(p.seen, len(read))
            if at is None or latest[seen] <= at:
                continue
            dep = next(k for k in read[:seen] if k is not None and where.get(k, -1) > at)
            found.add(
                CAUSAL,
                channel,
                name,
                f"#{at}: {pub.name}#{p.n} (published after reading {dep[0]}#{dep[1]}) "
                f"before it, at #{where[dep]}",
            )


def _check_causal_ts(name: str, channel: str, got: Sequence[Delivery], found: _Found) -> None:
    """Against the messages' own vector timestamps: per origin in counter order, and
    after every delivered message that its ``ts`` covers."""
    # origin -> counters in delivery order, and (counter, index) sorted by counter
    firsts = _firsts(got)
    by_origin: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for i, d in firsts:
        counter = d.ts.get(d.origin, 0)
        entries = by_origin[d.origin]
        if entries and counter <= entries[-1][0]:
            found.add(
                CAUSAL_TS,
                channel,
                name,
                f"#{i}: {d.describe()} after {d.origin}:{entries[-1][0]} at #{entries[-1][1]}",
            )
        entries.append((counter, i))
    counters: dict[str, list[int]] = {}
    latest: dict[str, list[int]] = {}  # prefix maximum of the index, by counter
    for origin, entries in by_origin.items():
        ordered = sorted(entries)
        counters[origin] = [c for c, _ in ordered]
        running, prefix = -1, []
        for _, i in ordered:
            running = max(running, i)
            prefix.append(running)
        latest[origin] = prefix
    for i, d in firsts:
        for region, count in d.ts.items():
            if region == d.origin or region not in counters:
                continue
            covered = bisect.bisect_right(counters[region], count)
            if covered and latest[region][covered - 1] > i:
                at = latest[region][covered - 1]
                found.add(
                    CAUSAL_TS,
                    channel,
                    name,
                    f"#{i}: {d.describe()} before #{at}, {got[at].describe()}, which its ts covers",
                )


def _check_total_keys(name: str, channel: str, got: Sequence[Delivery], found: _Found) -> None:
    previous: tuple[int, str] | None = None
    for i, d in _firsts(got):
        key = (sum(d.ts.values()), d.origin)
        if previous is not None and key <= previous:
            found.add(
                TOTAL_ORDER,
                channel,
                name,
                f"#{i}: {d.describe()} has key {key}, not above {previous} before it",
            )
        previous = key


def _check_one_order(
    kind: str, channel: str, group: Sequence[SubscriberLog], found: _Found
) -> None:
    """Every sequence of the group a prefix of the longest one."""
    if len(group) < 2:
        return
    sequences = {
        s.name: [_identity(d) for _, d in _firsts(s.received.get(channel, []))] for s in group
    }
    reference = max(sequences, key=lambda n: len(sequences[n]))
    longest = sequences[reference]
    for name, seq in sequences.items():
        if name == reference:
            continue
        for i, item in enumerate(seq):
            if item != longest[i]:
                found.add(
                    kind,
                    channel,
                    name,
                    f"#{i}: {_show(item)}, where {reference} has {_show(longest[i])} "
                    f"(the {i} before agree)",
                )
                break


def _firsts(got: Sequence[Delivery]) -> list[tuple[int, Delivery]]:
    """(index, delivery) without repeats of a publish or an id: order checks look at
    first copies only (``duplicate`` reports the others)."""
    seen: set[Key | str] = set()
    firsts = []
    for i, d in enumerate(got):
        key = d.key
        if d.id in seen or (key is not None and key in seen):
            continue
        seen.add(d.id)
        if key is not None:
            seen.add(key)
        firsts.append((i, d))
    return firsts


def _identity(d: Delivery) -> Key | str:
    return d.key if d.key is not None else d.id


def _show(item: Key | str) -> str:
    return item if isinstance(item, str) else f"{item[0]}#{item[1]}"
