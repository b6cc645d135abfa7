"""Readable summary of an effective config (what ``relaynet config check FILE`` prints)."""

from __future__ import annotations

import os

from relay.config.schema import NamespaceRule, RelayConfig

__all__ = ["describe", "format_duration"]

_UNITS = (("d", 86400), ("h", 3600), ("m", 60), ("s", 1))
_LABEL_WIDTH = 12


def format_duration(seconds: float) -> str:
    """``86400`` -> ``"1d"``, ``5400`` -> ``"1h30m"``, ``2.5`` -> ``"2.5s"``."""
    if seconds != int(seconds) or seconds < 60:
        return f"{seconds:g}s"
    rest = int(seconds)
    parts = []
    for unit, size in _UNITS:
        count, rest = divmod(rest, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts)


def _line(label: str, text: str) -> str:
    return f"{label:<{_LABEL_WIDTH}} {text}"


def _namespace_line(rule: NamespaceRule, name: str, width: int, implicit: bool) -> str:
    prefix = f'prefix "{rule.prefix}"'
    if rule.prefix == "":
        prefix += " (every other channel)" if implicit else " (every channel)"
    history = (
        f"history {format_duration(rule.history_max_age_s)} / "
        f"{rule.history_max_messages} messages per channel"
    )
    stream = f"stream up to {rule.max_bytes} bytes" if rule.max_bytes else "no stream byte limit"
    if rule.max_bytes and rule.ordering == "total":
        stream += " (x 2: total order)"
    return (
        f"  {name:<{width}}  {prefix}; {history}; max message {rule.max_message_bytes} bytes; "
        f"{stream}"
    )


def describe(cfg: RelayConfig) -> str:
    """A multi-line, human-readable summary of the effective config ``cfg``."""
    relay, nats, limits = cfg.relay, cfg.nats, cfg.limits
    lines = [
        _line("region", cfg.region.name),
        _line("relay id", relay.id),
    ]
    listen = f"{relay.host}:{relay.port}"
    if relay.port == 0:
        listen += " (a free port is picked at startup)"
    lines.append(_line("listen", listen))
    if relay.public_url is not None:
        lines.append(_line("public URL", relay.public_url))
    else:
        lines.append(_line("public URL", f"{relay.effective_public_url} (from the listen address)"))
    lines.append(
        _line(
            "timing",
            f"heartbeat every {format_duration(relay.heartbeat_s)}, "
            f"shutdown grace {format_duration(relay.shutdown_grace_s)}",
        )
    )
    if nats.is_embedded:
        store = nats.store_dir
        if not os.path.isabs(store):
            store += f" (= {os.path.abspath(store)})"
        lines.append(
            _line("NATS", f"embedded nats-server on {nats.embedded_host}:{nats.embedded_port}")
        )
        lines.append(_line("", f"JetStream store {store}"))
    else:
        lines.append(_line("NATS", f"{', '.join(nats.servers)} (existing server)"))
    lines.append(
        _line(
            "JetStream",
            f"dedupe window {format_duration(nats.duplicate_window_s)}, "
            f"{nats.replicas} replica(s), "
            f"connect timeout {format_duration(nats.connect_timeout_s)}",
        )
    )
    lines.append(
        _line(
            "",
            f"store budget {nats.store_budget_bytes} bytes, "
            f"{cfg.reserved_store_bytes} reserved by the namespaces' streams",
        )
    )
    rules = cfg.all_namespaces
    implicit = [rule not in cfg.namespaces for rule in rules]
    names = [
        f"{r.name} (implicit)" if imp else r.name for r, imp in zip(rules, implicit, strict=True)
    ]
    width = max(len(name) for name in names)
    lines.append(_line("namespaces", f"{len(rules)} (the longest matching prefix wins)"))
    for rule, name, imp in zip(rules, names, implicit, strict=True):
        lines.append(_namespace_line(rule, name, width, imp))
    lines.append(_line("auth", cfg.auth.mode))
    if cfg.peers:
        lines.append(_line("peers", str(len(cfg.peers))))
        peer_width = max(len(peer.region) for peer in cfg.peers)
        for peer in cfg.peers:
            lines.append(
                f"  {peer.region:<{peer_width}}  edge {peer.edge_url}; nats {peer.nats_url}"
            )
    else:
        lines.append(_line("peers", "none (single region)"))
    lines.append(
        _line(
            "limits",
            f"frames up to {limits.max_frame_bytes} bytes, "
            f"outbox {limits.outbox_max_messages} messages, "
            f"{limits.max_subscriptions} subscriptions, "
            f"{limits.max_errors_per_minute} bad frames/minute per connection",
        )
    )
    return "\n".join(line.rstrip() for line in lines)
