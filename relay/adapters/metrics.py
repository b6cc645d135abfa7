"""Prometheus metrics at ``GET /metrics``, read from live state at scrape time.

A collector asks the running parts for their numbers when scraped, so the
hot paths (fan-out, publish) carry no instrumentation cost beyond plain ints
(``relay.adapters.stats``, ``ChannelFeed.delivered``, ``relay.core.histogram``).
One registry per relay, so several relays in one process (tests) do not mix.
Counters are exported with the ``_total`` suffix prometheus-client adds.
"""

from __future__ import annotations

import collections.abc
import itertools
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from relay.adapters.hooks import LATENCY_BUCKETS_S, Hooks
from relay.core.circuit import BreakerState
from relay.core.histogram import Histogram

if TYPE_CHECKING:
    from federation.service import FederationService
    from relay.adapters.feed_manager import FeedManager
    from relay.adapters.ws_edge import WsEdge


class RelayCollector:
    def __init__(
        self,
        region: str,
        relay: str,
        edge: Callable[[], WsEdge | None],
        feeds: Callable[[], FeedManager | None],
        federation: Callable[[], FederationService | None],
    ) -> None:
        self.labels = {"region": region, "relay": relay}
        self._edge, self._feeds, self._federation = edge, feeds, federation

    def _gauge(self, name: str, doc: str, value: float) -> GaugeMetricFamily:
        g = GaugeMetricFamily(name, doc, labels=list(self.labels))
        g.add_metric(list(self.labels.values()), value)
        return g

    def _counter(
        self, name: str, doc: str, label: str, counts: collections.abc.Mapping[str, int]
    ) -> CounterMetricFamily:
        c = CounterMetricFamily(name, doc, labels=[*self.labels, label])
        for key, count in sorted(counts.items()):
            c.add_metric([*self.labels.values(), key], count)
        return c

    def _histogram(self, name: str, doc: str, histogram: Histogram) -> HistogramMetricFamily:
        h = HistogramMetricFamily(name, doc, labels=list(self.labels))
        h.add_metric(list(self.labels.values()), histogram.cumulative(), histogram.sum_s)
        return h

    def collect(self) -> Iterator[Metric]:
        edge, feeds, fed = self._edge(), self._feeds(), self._federation()
        if edge is not None:
            yield self._gauge(
                "relaynet_connections", "Open client connections.", len(edge.connections)
            )
            yield self._gauge(
                "relaynet_subscriptions",
                "Channel subscriptions of connected clients.",
                sum(len(c.subscriptions) for c in edge.connections),
            )
            sent = CounterMetricFamily(
                "relaynet_redirects",
                "Clients sent elsewhere (reason: overloaded, draining), and clients this relay "
                "refused or let go with nowhere to send them (target none).",
                labels=[*self.labels, "reason", "target"],
            )
            seen = dict.fromkeys(
                itertools.product(("draining", "overloaded"), ("none", "sibling")), 0
            )
            for (reason, target), count in sorted((seen | dict(edge.redirects)).items()):
                sent.add_metric([*self.labels.values(), reason, target], count)
            yield sent
        if edge is not None:
            yield from self._traffic(edge)
            if edge.hooks is not None:
                yield from self._hooks(edge.hooks)
            yield self._gauge(
                "relaynet_publishes_waiting_for_context",
                "Publishes held until their causal context (from another region) arrives.",
                edge.writer.waiting_for_context(),
            )
            sharing = edge.writer.sharing
            for name, doc, count in (
                ("writer_batches", "JetStream atomic batches the writer sent (groups of two "
                 "entries or more; a refused shared batch's groups sent again count too).",
                 sharing.batches),
                ("writer_shared_batches", "Batches that held the groups of several channels "
                 "of one stream.", sharing.shared),
                ("writer_shared_refused", "Shared batches refused whole (a head had moved or "
                 "an id was stored already), whose groups were then sent again one by one.",
                 sharing.refused_shared),
            ):  # fmt: skip
                c = CounterMetricFamily(f"relaynet_{name}", doc, labels=list(self.labels))
                c.add_metric(list(self.labels.values()), count)
                yield c
        if feeds is not None:
            yield self._gauge(
                "relaynet_channels",
                "Channels this relay holds a live NATS subscription for.",
                feeds.channel_count,
            )
            yield self._counter(
                "relaynet_messages_delivered",
                "Live messages handed to subscribers of this relay, one per subscriber, by "
                "namespace (replays of a resume or history not counted).",
                "namespace",
                feeds.delivered(),
            )
            yield self._histogram(
                "relaynet_store_to_fanout_seconds",
                "From JetStream storing a message (its Nats-Time-Stamp: the NATS server's "
                "clock) to this relay handing it to every local subscriber; stored messages "
                "carry no send time, and publish -> store is relaynet_publish_ack_seconds. "
                "Includes clock skew between the NATS server's host and this one.",
                feeds.broker.store_to_fanout,
            )
            c = CounterMetricFamily(
                "relaynet_gaps_lost",
                "Gaps in a channel's live feed that could not be filled (its subscribers "
                "were closed with 4002 to resume).",
                labels=list(self.labels),
            )
            c.add_metric(list(self.labels.values()), feeds.gaps_lost)
            yield c
        yield self._bad_entries(feeds, fed)
        if fed is None:
            return
        stats = fed.writer.stats
        buffered = fed.writer.buffered()
        yield self._gauge(
            "relaynet_federation_buffered_messages",
            "Remote messages waiting for their causal predecessors (all channels).",
            sum(buffered.values()),
        )
        yield self._gauge(
            "relaynet_federation_buffered_peak",
            "Most remote messages that waited at once in one channel.",
            stats.buffered_peak,
        )
        for name, doc, value in (
            ("applied", "Remote messages appended to this region's log.", stats.applied),
            ("copies_dropped", "Remote messages dropped as already applied.",
             stats.duplicates_dropped),
            ("dup_entries", "Republished ids recorded as dup entries.", stats.dup_entries),
        ):  # fmt: skip
            c = CounterMetricFamily(f"relaynet_federation_{name}", doc, labels=list(self.labels))
            c.add_metric(list(self.labels.values()), value)
            yield c
        link = GaugeMetricFamily(
            "relaynet_federation_link_up",
            "1 while this instance serves the link to the peer and is connected.",
            labels=[*self.labels, "peer"],
        )
        received = CounterMetricFamily(
            "relaynet_federation_link_received",
            "Messages read from the peer's log by this instance (its rate is the link's "
            "throughput).",
            labels=[*self.labels, "peer"],
        )
        pending = GaugeMetricFamily(
            "relaynet_federation_link_pending_messages",
            "Messages of the peer's log not yet delivered over the link, as of the last one "
            "delivered (0 on instances that do not serve the link).",
            labels=[*self.labels, "peer"],
        )
        lag = GaugeMetricFamily(
            "relaynet_federation_link_lag_seconds",
            "How far behind the peer's log the link reads: 0 when nothing is pending, else "
            "the age of the last message read (peer's store time; clock skew included).",
            labels=[*self.labels, "peer"],
        )
        now = time.time()
        for peer, peer_link in fed.links.items():
            values = [*self.labels.values(), peer]
            link.add_metric(values, 1.0 if peer_link.connected else 0.0)
            received.add_metric(values, peer_link.received)
            pending.add_metric(values, peer_link.pending_messages)
            lag.add_metric(values, peer_link.lag_s(now))
        yield link
        yield received
        yield pending
        yield lag

    def _traffic(self, edge: WsEdge) -> Iterator[Metric]:
        stats = edge.stats
        yield self._counter(
            "relaynet_messages_published",
            "Publishes this relay acknowledged (stored), WebSocket, SSE and HTTP, by namespace.",
            "namespace",
            stats.published,
        )
        yield self._histogram(
            "relaynet_publish_ack_seconds",
            "From a publish reaching this relay (after its checks) to its ack: the backend's "
            "publish hook, the region writer's queue and the JetStream store.",
            stats.publish_ack,
        )
        yield self._counter(
            "relaynet_errors",
            "Error frames sent to clients (WebSocket, SSE and HTTP API bodies), by code; "
            "rate_limited is a refusal by the rate limits.",
            "code",
            stats.errors,
        )
        yield self._counter(
            "relaynet_connections_closed",
            "Connections this relay closed, by reason (slow_consumer, write_timeout, gap, "
            "unavailable, going_away, too_many_errors, unauthorized, token_expired, ...); a "
            "client closing its own is not counted.",
            "reason",
            stats.closes,
        )
        yield self._counter(
            "relaynet_auth_failures",
            "Credentials refused, by where: connect (?token= or the connect hook), auth (an "
            "auth frame), http (HTTP API and SSE).",
            "op",
            stats.auth_failures,
        )
        http = CounterMetricFamily(
            "relaynet_http_requests",
            "Plain HTTP requests answered (the API, SSE, health, metrics ...), by route "
            "template, method and status.",
            labels=[*self.labels, "route", "method", "status"],
        )
        for (route, method, status), count in sorted(stats.http.items()):
            http.add_metric([*self.labels.values(), route, method, str(status)], count)
        yield http
        yield self._gauge("relaynet_sse_streams", "Open SSE streams.", edge.http.sse_streams)
        nats_up = edge.http.nats_connected()
        for name, doc, value in (
            ("relaynet_nats_connected", "1 while the relay's NATS connection is up.", nats_up),
            ("relaynet_jetstream_available", "1 while JetStream answers the relay's probe.",
             nats_up and edge.available()),
            ("relaynet_draining", "1 while the relay shuts down (it takes no new clients).",
             edge.state() == "draining"),
        ):  # fmt: skip
            yield self._gauge(name, doc, 1.0 if value else 0.0)
        if edge.presence is not None:
            channels, members = edge.presence.member_count()
            yield self._gauge(
                "relaynet_presence_members",
                "Presence members this relay knows of (every region's), in all channels.",
                members,
            )
            yield self._gauge(
                "relaynet_presence_channels", "Channels with presence members.", channels
            )

    def _hooks(self, hooks: Hooks) -> Iterator[Metric]:
        names = [*self.labels, "hook", "kind"]
        calls = CounterMetricFamily(
            "relaynet_hook_calls",
            "Backend hook calls by outcome: accept, replace (a publish's data replaced), "
            "reject, error (bad status or answer, unreachable, after retries), timeout, "
            "circuit_open (refused at once by the open breaker, nothing sent).",
            labels=[*names, "outcome"],
        )
        latency = HistogramMetricFamily(
            "relaynet_hook_latency_seconds",
            "Time a hook call took, retries included (calls the breaker refused excluded).",
            labels=names,
        )
        breaker = GaugeMetricFamily(
            "relaynet_hook_breaker_state",
            "1 for the state each hook's circuit breaker is in (closed, open, half_open).",
            labels=[*self.labels, "hook", "state"],
        )
        base = list(self.labels.values())
        for name, endpoint in sorted(hooks.endpoints.items()):
            for (kind, outcome), count in sorted(endpoint.calls.items()):
                calls.add_metric([*base, name, kind, outcome], count)
            for kind, stats in sorted(endpoint.latency.items()):
                buckets = [
                    (str(b), n) for b, n in zip(LATENCY_BUCKETS_S, stats.buckets, strict=True)
                ]
                latency.add_metric(
                    [*base, name, kind], [*buckets, ("+Inf", stats.count)], stats.sum_s
                )
            state = endpoint.breaker_state()
            for each in BreakerState:
                breaker.add_metric([*base, name, each.value], 1.0 if each is state else 0.0)
        yield calls
        yield latency
        yield breaker

    def _bad_entries(
        self, feeds: FeedManager | None, fed: FederationService | None
    ) -> CounterMetricFamily:
        trackers = [] if feeds is None else [feeds.broker.log.bad_entries]
        if fed is not None:
            trackers += [link.bad_entries for link in fed.links.values()]
            if fed.sequencer is not None:
                trackers.append(fed.sequencer.bad_entries)
        counts: dict[str, int] = dict.fromkeys(("live", "log", "peer"), 0)
        for tracker in trackers:
            for source, count in tracker.counts.items():
                counts[source] = counts.get(source, 0) + count
        c = CounterMetricFamily(
            "relaynet_nats_bad_entries",
            "Malformed entries read from NATS and skipped, each counted once, by where they "
            "were read: live (a channel's live feed; also frames claiming a sequence the "
            "stream does not hold), log (the region's own streams), peer (a peer's log).",
            labels=[*self.labels, "source"],
        )
        for source, count in sorted(counts.items()):
            c.add_metric([*self.labels.values(), source], count)
        return c


def make_registry(collector: RelayCollector) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return registry


def render(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)
