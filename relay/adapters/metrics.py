"""Prometheus metrics at ``GET /metrics``, read from live state at scrape time.

A collector asks the running parts for their numbers when scraped, so the
hot paths (fan-out, publish) carry no instrumentation cost. One registry per
relay, so several relays in one process (tests) do not mix.
"""

from __future__ import annotations

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
            for (reason, target), count in sorted(edge.redirects.items()):
                sent.add_metric([*self.labels.values(), reason, target], count)
            yield sent
        if edge is not None:
            if edge.hooks is not None:
                yield from self._hooks(edge.hooks)
            yield self._gauge(
                "relaynet_publishes_waiting_for_context",
                "Publishes held until their causal context (from another region) arrives.",
                edge.writer.waiting_for_context(),
            )
        if feeds is not None:
            yield self._gauge(
                "relaynet_channels",
                "Channels this relay holds a live NATS subscription for.",
                feeds.channel_count,
            )
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
            "Messages read from the peer's log by this instance.",
            labels=[*self.labels, "peer"],
        )
        for peer, peer_link in fed.links.items():
            values = [*self.labels.values(), peer]
            link.add_metric(values, 1.0 if peer_link.connected else 0.0)
            received.add_metric(values, peer_link.received)
        yield link
        yield received

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
