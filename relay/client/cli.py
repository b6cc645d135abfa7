"""``relaynet sub`` / ``pub`` / ``edges``: the Python SDK from the command line.

Output for scripts goes to stdout (one JSON object per line for ``sub``, the
ack for ``pub``, a table for ``edges``); what the connection is doing goes to
stderr. ``register(subparsers)`` adds the three subcommands to the main parser.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any, TextIO

import anyio
import msgspec

from relay.client.client import Client, connect
from relay.client.directory import Survey
from relay.client.endpoints import relay_ws_url
from relay.client.errors import ClientError, PositionExpiredError, RequestRefused
from relay.client.probing import survey
from relay.client.running import run_async
from relay.client.session import Message
from relay.client.supervisor import ConnectionState

DEFAULT_SEEDS = "ws://127.0.0.1:8701/v1/ws"
# pub and edges give up after this long without a relay; sub keeps trying until stopped.
DEFAULT_TIMEOUT_S = 30.0


def parse_seeds(text: str) -> list[str]:
    """``--seeds``: comma-separated ws://, wss://, http:// or https:// URLs of relays."""
    seeds = [s.strip() for s in text.split(",") if s.strip()]
    if not seeds:
        raise ValueError("--seeds needs at least one URL")
    for seed in seeds:
        relay_ws_url(seed)  # ValueError says what is wrong with it
    return seeds


def parse_position(text: str) -> dict[str, int]:
    """``--from-position``: a JSON object region -> counter, e.g. ``{"us-east": 41}``."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"--from-position is not JSON: {exc}") from None
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and type(v) is int and v >= 0 for k, v in value.items()
    ):
        raise ValueError('--from-position must be a JSON object like {"us-east": 41}')
    return value


def parse_data(text: str) -> Any:
    """``pub`` data: JSON if it parses, else the text as a string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


class _Narrator:
    """Tells stderr what the connection does (the client is known once connected)."""

    def __init__(self, err: TextIO) -> None:
        self.err = err
        self.client: Client | None = None

    def __call__(self, state: ConnectionState) -> None:
        if state is ConnectionState.CONNECTED and self.client is not None:
            self.connected(self.client)
        elif state is ConnectionState.DISCONNECTED:
            self.say("disconnected; reconnecting")
        elif state is ConnectionState.SUSPENDED:
            self.say("no edge answers; still trying, less often")

    def connected(self, client: Client) -> None:
        self.say(f"connected to {client.region} (relay {client.relay}) at {client.url}")

    def say(self, text: str) -> None:
        print(f"relaynet: {text}", file=self.err, flush=True)


def _message_line(message: Message, client: Client) -> bytes:
    return msgspec.json.encode(
        {
            "channel": message.channel,
            "id": message.id,
            "data": msgspec.Raw(message.data_json),  # exactly the bytes the publisher sent
            "origin": message.origin,
            "ts": message.ts.to_dict(),
            "position": message.position.to_dict(),
            "region": client.region,
        }
    )


async def sub_command(
    channel: str,
    seeds: list[str],
    from_position: dict[str, int] | None,
    *,
    limit: int | None = None,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """Print every message of ``channel`` as one JSON line until Ctrl-C (or ``limit``
    messages). On the way out, stderr says which position to resume from. Ctrl-C
    surfaces as ``KeyboardInterrupt`` from ``anyio.run`` (exit code 130)."""
    out = sys.stdout if out is None else out
    narrator = _Narrator(sys.stderr if err is None else err)
    position: dict[str, int] | None = from_position
    try:
        async with connect(seeds, on_state=narrator) as client:
            narrator.client = client
            narrator.connected(client)
            sub = await client.subscribe(channel, from_position)
            count = 0
            async for message in sub:
                out.write(_message_line(message, client).decode() + "\n")
                out.flush()
                position = sub.position
                count += 1
                if limit is not None and count >= limit:
                    break
    except PositionExpiredError as exc:
        narrator.say(f"{exc}; resume with --from-position '{json.dumps(exc.earliest)}'")
        return 1
    except ClientError as exc:
        narrator.say(str(exc))
        return 1
    finally:  # also on Ctrl-C (the cancellation that comes before KeyboardInterrupt)
        if position is not None:
            narrator.say(f"resume with --from-position '{json.dumps(position)}'")
    return 0


async def pub_command(
    channel: str,
    data: str,
    seeds: list[str],
    *,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """Publish ``data`` (JSON if it parses, else a string) and print the ack as JSON."""
    out = sys.stdout if out is None else out
    narrator = _Narrator(sys.stderr if err is None else err)
    value = parse_data(data)
    try:
        with anyio.fail_after(timeout_s):
            async with connect(seeds) as client:
                ack = await client.publish(channel, value)
    except TimeoutError:
        narrator.say(f"no relay acknowledged within {timeout_s:g} s (seeds: {', '.join(seeds)})")
        return 1
    except RequestRefused as exc:
        narrator.say(f"refused: {exc}")
        return 1
    except ClientError as exc:
        narrator.say(str(exc))
        return 1
    line = {
        "op": "ack",
        "id": ack.id,
        "channel": ack.channel,
        "position": ack.position.to_dict(),
        "region": client.region,
        "relay": client.relay,
    }
    print(json.dumps(line, separators=(",", ":")), file=out, flush=True)
    return 0


def edges_table(result: Survey) -> str:
    """One row per edge in failover order, the chosen one marked with ``*``."""
    choice = result.choice
    header = ("", "REGION", "URL", "HEALTH", "RTT", "REASON")
    health = {(e.region, e.url): e.health for e in result.directory.edges}
    rows: list[tuple[str, ...]] = [header]
    for i, (region, url) in enumerate(result.candidates):
        rtt = result.edge_rtt_ms(url)
        rows.append(
            (
                "*" if i == 0 else "",
                region,
                url,
                health.get((region, url), "unknown"),
                "-" if rtt is None else f"{rtt:.1f} ms",
                choice.reasons.get(region, ""),
            )
        )
    widths = [max(len(row[c]) for row in rows) for c in range(len(header) - 1)]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False))
        + "  "
        + row[-1]
        for row in rows
    ]
    directory = result.directory
    if directory.region is not None:
        source = f"directory from {directory.source} (region {directory.region}"
        source += f", relay {directory.relay})" if directory.relay else ")"
    else:
        source = "no relay serves /v1/edges: the seeds that answered are the edges"
    return "\n".join([*(line.rstrip() for line in lines), source])


async def edges_command(
    seeds: list[str],
    *,
    probes: int = 3,
    timeout_s: float = 2.0,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """Fetch the edge directory, probe every edge, print the table and the choice."""
    out = sys.stdout if out is None else out
    result = await survey(seeds, probes=probes, timeout_s=timeout_s)
    if result is None:
        print(
            f"relaynet: no seed answered ({', '.join(seeds)})",
            file=sys.stderr if err is None else err,
            flush=True,
        )
        return 1
    print(edges_table(result), file=out, flush=True)
    return 0


# --- argparse ------------------------------------------------------------------------------


def _seeds(args: argparse.Namespace) -> list[str] | None:
    try:
        return parse_seeds(args.seeds)
    except ValueError as exc:
        print(f"relaynet: {exc}", file=sys.stderr)
        return None


def _cmd_sub(args: argparse.Namespace) -> int:
    seeds = _seeds(args)
    if seeds is None:
        return 2
    try:
        position = parse_position(args.from_position) if args.from_position else None
    except ValueError as exc:
        print(f"relaynet: {exc}", file=sys.stderr)
        return 2
    return run_async(sub_command, args.channel, seeds, position)


def _cmd_pub(args: argparse.Namespace) -> int:
    seeds = _seeds(args)
    if seeds is None:
        return 2
    return run_async(pub_command, args.channel, args.data, seeds)


def _cmd_edges(args: argparse.Namespace) -> int:
    seeds = _seeds(args)
    if seeds is None:
        return 2

    async def run() -> int:
        return await edges_command(seeds, probes=args.probes)

    return run_async(run)


def register(sub: Any) -> None:
    """Add ``sub``, ``pub`` and ``edges`` to the main parser's subparsers."""
    seeds_help = f"comma-separated ws:// or http:// URLs of any relays (default {DEFAULT_SEEDS})"

    p = sub.add_parser("sub", help="print a channel's messages as JSON lines (until Ctrl-C)")
    p.add_argument("channel")
    p.add_argument("--from-position", metavar="JSON", help='resume from e.g. {"us-east": 41}')
    p.add_argument("--seeds", default=DEFAULT_SEEDS, help=seeds_help)
    p.set_defaults(func=_cmd_sub)

    p = sub.add_parser("pub", help="publish one message and print its ack")
    p.add_argument("channel")
    p.add_argument("data", help="JSON if it parses, else sent as a string")
    p.add_argument("--seeds", default=DEFAULT_SEEDS, help=seeds_help)
    p.set_defaults(func=_cmd_pub)

    p = sub.add_parser("edges", help="the edge directory, measured RTTs and the edge chosen")
    p.add_argument("--seeds", default=DEFAULT_SEEDS, help=seeds_help)
    p.add_argument("--probes", type=int, default=3, help="RTT probes per edge (median)")
    p.set_defaults(func=_cmd_edges)


def main(argv: Sequence[str] | None = None) -> int:
    """Stand-alone entry (``python -m relay.client.cli``) until relay/cli.py wires these in."""
    parser = argparse.ArgumentParser(prog="relaynet", description=__doc__)
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
