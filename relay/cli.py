"""``relaynet``: run relays, a demo or a simulation; talk to a network; check configs; benchmark."""

from __future__ import annotations

import argparse
import ipaddress
import logging
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TypeVar

import anyio

from relay import __version__
from relay.client.running import event_loop_options, run_async
from relay.config.loader import ConfigError, load_config
from relay.config.schema import RelayConfig
from relay.gc_settings import settle_for_serving

DEFAULT_REGIONS = "us-east,eu-west,ap-south"


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    for noisy in ("websockets.server", "nats"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _setup_relay_logging(args: argparse.Namespace, cfg: RelayConfig, relay_id: str) -> None:
    """A relay's (or federate's) logging: every line stamped with its region and relay."""
    from relay import logging_setup

    logging_setup.setup(
        verbose=args.verbose, log_format=args.log_format, region=cfg.region.name, relay=relay_id
    )


def _cmd_status(args: argparse.Namespace) -> int:
    from relay.client.cli import parse_seeds
    from relay.status import run_status

    try:
        seeds = parse_seeds(args.seeds)
    except ValueError as exc:
        print(f"relaynet status: {exc}", file=sys.stderr)
        return 2
    if args.interval <= 0:
        print("relaynet status: --interval must be above 0", file=sys.stderr)
        return 2
    try:
        return run_async(run_status, seeds, args.watch, args.interval)
    except KeyboardInterrupt:  # --watch runs until stopped
        return 0


E = TypeVar("E", bound=BaseException)


def _load(path: str) -> RelayConfig | None:
    """The config, or None after printing every problem with it."""
    try:
        return load_config(path)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return None


def _cmd_relay(args: argparse.Namespace) -> int:
    from federation.adapters.nats_region_log import StoreBudgetExceeded
    from relay.node import NatsUnreachable, RelayNode

    cfg = _load(args.config)
    if cfg is None:
        return 1
    _setup_relay_logging(args, cfg, cfg.relay.id)
    if not _auth_usable(args.config, cfg) or not _tls_usable(args.config, cfg):
        return 1
    node = RelayNode(cfg)

    async def main() -> int:
        async with anyio.create_task_group() as tg:

            async def on_signals() -> None:
                with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                    async for signum in signals:
                        logging.getLogger("relaynet").info(
                            "%s: shutting down", signal.Signals(signum).name
                        )
                        if node.edge is None:  # still starting: nothing to drain
                            tg.cancel_scope.cancel()
                        node.stop()
                        return

            tg.start_soon(on_signals)
            try:
                await tg.start(node.run)
            except Exception as exc:
                # Reasons the relay cannot start that an operator fixes: one line, no trace.
                reason = _first(exc, NatsUnreachable) or _first(exc, StoreBudgetExceeded)
                if reason is None:
                    raise
                logging.getLogger("relaynet").error("%s", reason)
                tg.cancel_scope.cancel()
                return 1
            settle_for_serving()
            print(
                f"relaynet relay {cfg.relay.id} ({cfg.region.name}) ready on {node.url}", flush=True
            )
            await node.run_finished()
            tg.cancel_scope.cancel()
        return 0

    code: int = anyio.run(main, backend_options=event_loop_options())
    return code


def _auth_usable(path: str, cfg: RelayConfig) -> bool:
    """Check ``[auth]``'s key files before starting; warn about an exposed anonymous relay."""
    from relay.adapters.hooks import Hooks
    from relay.adapters.tokens import KeyConfigError, session_auth

    try:
        session_auth(cfg.auth)
        Hooks.from_config(cfg)  # reads the hooks' secret files
    except KeyConfigError as exc:
        print(f"{path}: {exc}", file=sys.stderr)
        return False
    if cfg.auth.mode == "anonymous" and not _is_loopback(cfg.relay.host):
        logging.getLogger("relaynet").warning(
            "ANONYMOUS RELAY ON A NON-LOOPBACK ADDRESS (%s): anyone who reaches it may %s; "
            'set [auth] mode = "token" (README, Security)',
            cfg.relay.host,
            "do anything on any channel" if "*" in dict(cfg.auth.anonymous) else "use it",
        )
    return True


def _tls_usable(path: str, cfg: RelayConfig) -> bool:
    """Load the listener's certificate before starting; warn about plain text on a network."""
    from relay.adapters.tls import TlsConfigError, server_ssl_context

    try:
        server_ssl_context(cfg.relay)
    except TlsConfigError as exc:
        print(f"{path}: {exc}", file=sys.stderr)
        return False
    behind_tls_proxy = (cfg.relay.public_url or "").startswith("wss://")
    if not cfg.relay.tls and not behind_tls_proxy and not _is_loopback(cfg.relay.host):
        logging.getLogger("relaynet").warning(
            "PLAIN-TEXT RELAY ON A NON-LOOPBACK ADDRESS (%s): tokens and messages cross the "
            "network unencrypted; set [relay] tls_cert_file and tls_key_file, or put it "
            'behind a TLS proxy and set public_url = "wss://..." (README, Security)',
            cfg.relay.host,
        )
    return True


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a name: it may resolve to anything


def _cmd_token_issue(args: argparse.Namespace) -> int:
    import json

    from relay.adapters.tokens import KeyConfigError, issue_token
    from relay.core.capabilities import CapabilityError

    try:
        secret = Path(args.secret_file).read_bytes().strip()
    except OSError as exc:
        print(f"relaynet token issue: {args.secret_file}: {exc.strerror}", file=sys.stderr)
        return 2
    try:
        caps = json.loads(args.caps)
        ttl_s = _duration_s(args.ttl)
        token = issue_token(secret, args.sub, caps, ttl_s, jti=args.jti)
    except (ValueError, CapabilityError, KeyConfigError, TypeError) as exc:
        print(f"relaynet token issue: {exc}", file=sys.stderr)
        return 2
    print(token)
    return 0


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _cmd_token_revoke(args: argparse.Namespace) -> int:
    from federation.adapters.nats_client import NatsClient, NatsOptionsError, describe_failure
    from relay.adapters.embedded_nats import region_nats_options
    from relay.adapters.revocations import ensure_stream, new_revocation, publish_revocation
    from relay.core.revocations import BadRevocation, check_revocation, revocation_stream

    cfg = _load(args.config)
    if cfg is None:
        return 1
    issued_before = None
    try:
        if args.issued_before is not None:
            if args.sub is None:
                raise ValueError("--issued-before goes with --sub")
            issued_before = _instant(args.issued_before)
        rev = check_revocation(
            new_revocation(cfg.region.name, jti=args.jti, sub=args.sub, issued_before=issued_before)
        )
    except (ValueError, BadRevocation) as exc:
        print(f"relaynet token revoke: {exc}", file=sys.stderr)
        return 2
    url = cfg.nats.url
    if url == "embedded":  # the region's relay runs the server; connect to it
        url = f"nats://{cfg.nats.embedded_host}:{cfg.nats.embedded_port}"
    options = region_nats_options(cfg.nats, url)
    failures: list[Exception] = []

    async def failed(exc: Exception) -> None:
        failures.append(exc)  # reported once below, not as nats-py's tracebacks

    async def main() -> int:
        nc = NatsClient()
        await nc.connect_with(
            options,
            name=f"relaynet-token-revoke-{cfg.region.name}",
            connect_timeout=cfg.nats.connect_timeout_s,
            allow_reconnect=False,
            max_reconnect_attempts=1,
            error_cb=failed,
        )
        try:
            js = nc.jetstream(timeout=cfg.nats.connect_timeout_s)
            await ensure_stream(js, cfg.region.name, cfg.auth.revocation_retention_s)
            return await publish_revocation(js, rev)
        finally:
            with anyio.CancelScope(shield=True), anyio.move_on_after(5):
                await nc.close()

    try:
        seq = anyio.run(main)
    except NatsOptionsError as exc:
        print(f"{args.config}: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:
        why = describe_failure(failures[-1] if failures else exc, options)
        print(f"relaynet token revoke: NATS of {cfg.region.name} at {url}: {why}", file=sys.stderr)
        return 1
    print(
        f"revoked {rev.describe()} (id {rev.id}): stored in {revocation_stream(rev.region)} "
        f"at seq {seq}, kept {cfg.auth.revocation_retention_s:g} s; relays of every region "
        "that reads this one close its connections with 4005 and refuse it from now on",
        flush=True,
    )
    if cfg.auth.mode != "token":
        print(f"note: {args.config} is not in token mode; its relays take no tokens anyway")
    return 0


def _instant(text: str) -> float:
    """``now`` or an ISO 8601 time (UTC without an offset) -> seconds since the epoch."""
    import datetime

    if text == "now":
        return time.time()
    try:
        moment = datetime.datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"bad time {text!r}: use ISO 8601 (2026-01-31T12:00:00Z) or 'now'"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    return moment.timestamp()


def _duration_s(text: str) -> float:
    """``90``, ``90s``, ``15m``, ``1h``, ``7d`` -> seconds."""
    unit = _UNITS.get(text[-1:])
    number = text[:-1] if unit is not None else text
    try:
        value = float(number) * (unit or 1)
    except ValueError:
        raise ValueError(f"bad duration {text!r}: use e.g. 90s, 15m, 1h, 7d") from None
    if not 0 < value < 10 * 365 * 86400:
        raise ValueError(f"bad duration {text!r}: must be positive")
    return value


def _first(exc: BaseException, kind: type[E]) -> E | None:
    """``exc`` itself, or the first of its kind inside (task groups wrap what they raise)."""
    if isinstance(exc, kind):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = _first(inner, kind)
            if found is not None:
                return found
    return None


def _cmd_federate(args: argparse.Namespace) -> int:
    import os

    from federation.service import FederationService

    cfg = _load(args.config)
    if cfg is None:
        return 1
    if not cfg.peers:
        print(f"{args.config}: no [[peers]]: nothing to federate", file=sys.stderr)
        return 1
    _setup_relay_logging(args, cfg, f"{cfg.relay.id}-federate")
    url = cfg.nats.url
    if url == "embedded":  # the region's relay runs the server; connect to it
        url = f"nats://{cfg.nats.embedded_host}:{cfg.nats.embedded_port}"
    from federation.adapters.nats_client import NatsClient, NatsOptionsError, connect_kwargs
    from relay.adapters.embedded_nats import region_nats_options

    # embedded: the relay user's password in the relay's store_dir, its TLS certificate
    options = region_nats_options(cfg.nats, url)
    try:  # unreadable files are reported now, not as a connection that never comes
        connect_kwargs(options)
    except NatsOptionsError as exc:
        print(f"{args.config}: {exc}", file=sys.stderr)
        return 1

    async def main() -> None:
        nc = NatsClient()
        await nc.connect_with(
            options,
            name=f"relaynet-federate-{cfg.region.name}",
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.5,
        )
        try:
            async with anyio.create_task_group() as tg:
                service = FederationService(
                    cfg.region_settings(), nc, f"{cfg.relay.id}-federate-{os.getpid()}"
                )
                await tg.start(service.run)
                settle_for_serving()
                print(f"relaynet federate {cfg.region.name} ready: peers "
                      + ", ".join(p.region for p in cfg.peers), flush=True)  # fmt: skip
                with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                    async for _ in signals:
                        break
                tg.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True):
                await nc.drain()

    anyio.run(main, backend_options=event_loop_options())
    return 0


def _cmd_simulate(args: argparse.Namespace) -> int:
    from pathlib import Path

    from relay.simulate.spec import SpecError, parse_matrix, parse_regions, uniform
    from relay.simulate.spec import parse_duration_ms as duration

    try:
        if args.latency_matrix:
            path = Path(args.latency_matrix)
            try:
                text = path.read_text()
            except OSError as exc:
                raise SpecError(
                    f"--latency-matrix {path}: cannot read it ({exc.strerror})"
                ) from None
            spec = parse_matrix(text, str(path))
            if args.regions and parse_regions(args.regions) != spec.regions:
                raise SpecError(f"--regions does not match the regions of {path}; give one")
        else:
            spec = uniform(parse_regions(args.regions or DEFAULT_REGIONS), duration(args.latency))
        if args.network == "bridge" and args.relays_in_containers:
            raise SpecError(
                "--network bridge runs relays as local processes; leave out "
                "--relays-in-containers (relays in containers use host networking)"
            )
    except SpecError as exc:
        print(f"relaynet simulate: {exc}", file=sys.stderr)
        return 2
    from relay.simulate import missing_extra

    if (reason := missing_extra()) is not None:
        print(f"relaynet simulate: {reason}", file=sys.stderr)
        return 2
    from relay.simulate.runner import run_simulation

    _setup_logging(args.verbose)
    if not args.verbose:
        logging.getLogger("relaynet").setLevel(logging.WARNING)
        logging.getLogger("federation").setLevel(logging.WARNING)
    from relay.simulate.relay_image import ImageError

    try:
        return run_async(
            run_simulation,
            spec,
            args.relays_per_region,
            args.refresh,
            args.duration,
            args.relays_in_containers,
            args.network,
        )
    except ImageError as exc:  # checked before anything starts: nothing is left running
        print(f"relaynet simulate: --relays-in-containers: {exc}", file=sys.stderr)
        return 2
    except RuntimeError as exc:  # no Docker engine, a port taken, a relay that will not start
        print(f"relaynet simulate: {exc}", file=sys.stderr)
        return 1


def _cmd_demo(args: argparse.Namespace) -> int:
    from relay.demo import run_demo

    _setup_logging(args.verbose)
    if not args.verbose:
        for name in ("relaynet", "federation"):
            logging.getLogger(name).setLevel(logging.WARNING)
    return run_async(run_demo, args.duration)


def _cmd_config_check(args: argparse.Namespace) -> int:
    from relay.config.summary import describe

    cfg = _load(args.file)
    if cfg is None:
        return 1
    print(f"{args.file}: OK")
    print(describe(cfg))
    return 0


def _cmd_bench_fanout(args: argparse.Namespace) -> int:
    from relay.bench.fanout import run_fanout

    _setup_logging(False)
    logging.getLogger("relaynet").setLevel(logging.WARNING)
    return run_async(run_fanout, args.subscribers, args.seconds, args.rate, args.size)


def _cmd_bench_federation(args: argparse.Namespace) -> int:
    from relay.bench.federation import run_federation_bench

    _setup_logging(False)
    logging.getLogger("relaynet").setLevel(logging.WARNING)
    logging.getLogger("federation").setLevel(logging.WARNING)  # in-process LinkProxy lines
    return run_async(run_federation_bench, args.latency_ms, args.seconds, args.rate)


def _cmd_bench_failover(args: argparse.Namespace) -> int:
    from relay.bench.failover import run_failover_bench

    _setup_logging(False)
    for name in ("relaynet", "federation"):  # the SDK's reconnect lines, in-process LinkProxy
        logging.getLogger(name).setLevel(logging.WARNING)
    return run_async(
        run_failover_bench,
        args.connects,
        args.trials,
        args.stop_trials,
        args.rate,
        args.latency_ms,
    )


def _cmd_bench_compare(args: argparse.Namespace) -> int:
    from pathlib import Path

    from relay.bench.compare import Plan, run_compare

    def names(text: str) -> tuple[str, ...]:
        return tuple(part.strip() for part in text.split(",") if part.strip())

    def numbers(text: str, option: str) -> tuple[int, ...] | None:
        try:
            return tuple(int(part) for part in names(text))
        except ValueError:
            print(f"bench compare: {option} takes numbers separated by commas", file=sys.stderr)
            return None

    subscribers = numbers(args.subscribers, "--subscribers")
    idle = numbers(args.idle, "--idle")
    channels = numbers(args.channels, "--channels")
    spread = numbers(args.spread, "--spread")
    if subscribers is None or idle is None or channels is None or spread is None:
        return 2
    _setup_logging(False)
    logging.getLogger("relaynet").setLevel(logging.WARNING)
    plan = Plan(
        names(args.scenarios),
        subscribers,
        idle,
        names(args.systems),
        args.seconds,
        args.rounds,
        channels,
        spread,
    )
    return run_async(run_compare, plan, Path(args.json) if args.json else None)


def _cmd_bench_chaos(args: argparse.Namespace) -> int:
    from pathlib import Path

    from relay.bench.chaos import run_chaos

    _setup_logging(False)
    # The SDK's reconnect lines and the in-process link proxies: thousands in a fault run.
    for name in ("relaynet", "federation"):
        logging.getLogger(name).setLevel(logging.ERROR)
    seconds = args.seconds if args.seconds is not None else 60.0 * args.minutes
    json_path = Path(args.json) if args.json else None
    return run_async(run_chaos, seconds, args.seed, json_path, args.keep)


def _cmd_bench_presence(args: argparse.Namespace) -> int:
    from pathlib import Path

    from relay.bench.presence import run_presence_bench

    _setup_logging(False)
    for name in ("relaynet", "federation"):  # in-process LinkProxy lines when links are cut
        logging.getLogger(name).setLevel(logging.WARNING)
    timing = {
        "suspect_after_s": args.suspect_after_s,
        "remove_after_s": args.remove_after_s,
        "snapshot_s": args.snapshot_s,
    }
    json_path = Path(args.json) if args.json else None
    return run_async(
        run_presence_bench, args.latency_ms, args.rounds, args.heal_rounds, timing, json_path
    )


def _cmd_bench_fuzz(args: argparse.Namespace) -> int:
    from relay.bench.fuzz import run_fuzz

    _setup_logging(False)
    # The SDK's reconnect lines are not the run's business; the report is.
    logging.getLogger("relaynet").setLevel(logging.ERROR)
    return run_async(run_fuzz, args.frames, args.seed, args.connections, args.keep)


def _cmd_bench_rollout(args: argparse.Namespace) -> int:
    from pathlib import Path

    from relay.bench.rollout import run_rollout

    _setup_logging(False)
    # The SDK's warnings stay visible (the report counts them too); its reconnect lines and
    # the in-process link proxies' do not.
    logging.getLogger("relaynet").setLevel(logging.WARNING)
    logging.getLogger("federation").setLevel(logging.ERROR)
    json_path = Path(args.json) if args.json else None
    return run_async(
        run_rollout,
        args.region,
        args.clients,
        args.rate,
        args.before_s,
        args.after_s,
        json_path,
        args.keep,
    )


def _log_format_option(parser: argparse.ArgumentParser) -> None:
    from relay.logging_setup import LOG_FORMATS

    parser.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        default="text",
        help="text (default), or json: one object per line (time, level, logger, message, "
        "region, relay, connection, exception) for log pipelines",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="relaynet", description=__doc__)
    parser.add_argument("--version", action="version", version=f"relaynet {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    relay = sub.add_parser("relay", help="run one relay of a region")
    relay.add_argument("--config", required=True, help="region config file (TOML)")
    relay.add_argument("-v", "--verbose", action="store_true")
    _log_format_option(relay)
    relay.set_defaults(func=_cmd_relay)

    federate = sub.add_parser(
        "federate", help="run only the federation links of a region (see [federation])"
    )
    federate.add_argument("--config", required=True, help="region config file (TOML)")
    federate.add_argument("-v", "--verbose", action="store_true")
    _log_format_option(federate)
    federate.set_defaults(func=_cmd_federate)

    status = sub.add_parser(
        "status",
        help="regions, relays, connections, link lag and health of a network, as tables",
        description="Reads /v1/edges from the first seed that answers, then /v1/ready and "
        "/metrics of every relay it lists. Exit 1 if no seed answers.",
    )
    status.add_argument(
        "--seeds",
        default="ws://127.0.0.1:8701/v1/ws",
        help="comma-separated URLs of relays (ws://, wss://, http://, https://)",
    )
    status.add_argument("--watch", action="store_true", help="redraw in place until Ctrl-C")
    status.add_argument(
        "--interval", type=float, default=2.0, help="seconds between redraws (--watch; 2)"
    )
    status.set_defaults(func=_cmd_status)

    demo = sub.add_parser("demo", help="three regions on this machine, with demo pages")
    demo.add_argument("--duration", type=float, help="stop after this many seconds")
    demo.add_argument("-v", "--verbose", action="store_true")
    demo.set_defaults(func=_cmd_demo)

    simulate = sub.add_parser(
        "simulate", help="several regions on this machine: NATS containers, relays, links"
    )
    simulate.add_argument("--regions", help=f"comma-separated (default {DEFAULT_REGIONS})")
    simulate.add_argument("--latency", default="50ms", help="one-way latency of every link")
    simulate.add_argument("--latency-matrix", help="file: one-way latency per directed link")
    simulate.add_argument("--relays-per-region", type=int, default=1)
    simulate.add_argument(
        "--relays-in-containers",
        action="store_true",
        help="run relays in containers of the deploy/Dockerfile image (built without a "
        "registry) instead of as local processes",
    )
    simulate.add_argument(
        "--network",
        choices=("host", "bridge"),
        default="host",
        help="host: NATS containers on loopback ports of the host network (default); "
        "bridge: on a bridge network of their own, published on loopback ports",
    )
    simulate.add_argument("--refresh", type=float, default=2.0, help="status table interval")
    simulate.add_argument("--duration", type=float, help="stop after this many seconds")
    simulate.add_argument("-v", "--verbose", action="store_true")
    simulate.set_defaults(func=_cmd_simulate)

    token = sub.add_parser("token", help="client tokens (JWT) for relays in token mode")
    token_sub = token.add_subparsers(dest="token_command", required=True)
    issue = token_sub.add_parser("issue", help="print an HS256 token signed with a secret file")
    issue.add_argument("--secret-file", required=True, help="the [auth] secret_file")
    issue.add_argument("--sub", required=True, help="the client's identity (sub claim)")
    issue.add_argument(
        "--caps",
        required=True,
        help='capabilities, JSON: {"chat:*": ["subscribe", "publish", "history"]}',
    )
    issue.add_argument("--ttl", default="1h", help="lifetime: 90s, 15m, 1h, 7d (default 1h)")
    issue.add_argument("--jti", default=None, help="token id (jti claim), optional")
    issue.set_defaults(func=_cmd_token_issue)
    revoke = token_sub.add_parser(
        "revoke",
        help="revoke tokens in every region: one by jti, or a sub's (all, or issued before T)",
    )
    revoke.add_argument("--config", required=True, help="region config file (TOML)")
    which = revoke.add_mutually_exclusive_group(required=True)
    which.add_argument("--jti", help="revoke the token with this id (jti claim)")
    which.add_argument("--sub", help="revoke the tokens of this sub (all, or --issued-before)")
    revoke.add_argument(
        "--issued-before",
        metavar="ISO|now",
        help="with --sub: only tokens whose iat is before this time (ISO 8601, UTC if no "
        "offset, or 'now'); fresh tokens issued later still work",
    )
    revoke.set_defaults(func=_cmd_token_revoke)

    config = sub.add_parser("config", help="config file tools")
    config_sub = config.add_subparsers(dest="config_command", required=True)
    check = config_sub.add_parser("check", help="validate a config file and print it")
    check.add_argument("file")
    check.set_defaults(func=_cmd_config_check)

    bench = sub.add_parser("bench", help="benchmarks that print figures")
    bench_sub = bench.add_subparsers(dest="bench_command", required=True)
    fanout = bench_sub.add_parser("fanout", help="one publisher, N subscribers, one relay")
    fanout.add_argument("--subscribers", type=int, default=100)
    fanout.add_argument("--seconds", type=float, default=5.0)
    fanout.add_argument("--rate", type=int, default=0, help="target msgs/s (0 = as fast as acks)")
    fanout.add_argument("--size", type=int, default=100, help="payload bytes")
    fanout.set_defaults(func=_cmd_bench_fanout)
    fed = bench_sub.add_parser("federation", help="three regions on loopback, links with latency")
    fed.add_argument("--latency-ms", type=float, default=50.0, help="one-way latency per link")
    fed.add_argument("--seconds", type=float, default=5.0)
    fed.add_argument("--rate", type=int, default=0, help="msgs/s of the fixed-rate phase (0 = 100)")
    fed.set_defaults(func=_cmd_bench_federation)
    failover = bench_sub.add_parser(
        "failover", help="SDK connect time, and kill-to-resumed-delivery time across regions"
    )
    failover.add_argument("--connects", type=int, default=20, help="timed connects")
    failover.add_argument("--trials", type=int, default=10, help="failovers after a SIGKILL")
    failover.add_argument(
        "--stop-trials", type=int, default=1, help="failovers after a SIGSTOP (frozen relay)"
    )
    failover.add_argument("--rate", type=int, default=50, help="msgs/s published meanwhile")
    failover.add_argument(
        "--latency-ms",
        type=float,
        default=25.0,
        help="one-way latency from the client to the next region (twice that to the third)",
    )
    failover.set_defaults(func=_cmd_bench_failover)
    compare = bench_sub.add_parser(
        "compare",
        help="relaynet beside Socket.IO 4, ws and Python websockets (not multi-region: "
        "that is `bench federation`)",
        description="Measures relaynet, a Socket.IO 4 room, a ws broadcast and a Python "
        "websockets broadcast with one Node load generator (npm installs the pinned packages "
        "into .relaynet/bench-node on first use), interleaved rounds, and prints each "
        "system's figures, the ratios relaynet ÷ Socket.IO and the generator's own ceiling. "
        "The multi-region overhead is not part of it: see `relaynet bench federation`.",
    )
    compare.add_argument(
        "--scenarios",
        default="fanout,latency,idle,publish-rate,connect-rate,channels,spread",
        help="comma-separated, from fanout,latency,idle,publish-rate,connect-rate,channels,"
        "spread (default all)",
    )
    compare.add_argument(
        "--subscribers", default="10,100,1000", help="fan-out sizes (default 10,100,1000)"
    )
    compare.add_argument("--seconds", type=float, default=5.0, help="publishing time per run (5)")
    compare.add_argument(
        "--rounds", type=int, default=3, help="interleaved rounds (3); figures are their medians"
    )
    compare.add_argument(
        "--channels",
        default="1,4,16",
        help="channel counts of the channels scenario, relaynet only (default 1,4,16)",
    )
    compare.add_argument(
        "--spread",
        default="1,16,256",
        help="channel counts of the spread scenario, relaynet only (default 1,16,256)",
    )
    compare.add_argument(
        "--idle", default="1000,5000,10000", help="idle connection counts (default 1000,5000,10000)"
    )
    compare.add_argument(
        "--systems",
        default="relaynet,socketio,ws,python",
        help="comma-separated; picows too with the bench extra (default: all but picows)",
    )
    compare.add_argument(
        "--json", help="write every run and the medians here (default .relaynet/bench-compare.json)"
    )
    compare.set_defaults(func=_cmd_bench_compare)
    chaos = bench_sub.add_parser(
        "chaos",
        help="a seeded randomized fault run over three regions that checks every guarantee",
        description="Starts three regions (nats-servers, relays: two in us-east) as processes "
        "with a cut/hold proxy on every federation link, runs SDK publishers and subscribers "
        "and plain protocol subscribers, and meanwhile cuts and holds links, kills and "
        "restarts relays, nats-servers and whole regions, and freezes processes, at random "
        "from the seed. Then it heals everything, waits for every acked message to reach "
        "every subscriber, and checks every subscriber's whole history: no loss, no "
        "duplicate, causal order, one order per region, total order, publisher order. "
        "Exit 1 on any violation; the seed replays the same faults.",
    )
    length = chaos.add_mutually_exclusive_group()
    length.add_argument("--minutes", type=float, default=1.0, help="minutes of faults (1)")
    length.add_argument("--seconds", type=float, help="seconds of faults, for short runs")
    chaos.add_argument("--seed", type=int, help="replay this seed (default: random, printed)")
    chaos.add_argument("--json", help="write everything (figures, faults, violations) here")
    chaos.add_argument(
        "--keep", action="store_true", help="keep the temporary directory (logs, stores)"
    )
    chaos.set_defaults(func=_cmd_bench_chaos)
    fuzz = bench_sub.add_parser(
        "fuzz",
        help="seeded hostile frames at a live relay while a good client publishes and reads",
        description="Starts a nats-server and a relay (processes), sends seeded hostile "
        "frames over several connections (bad JSON, wrong types, deep nesting, bad channels, "
        "unknown ops, every op with mutated fields, binary and oversized frames, subscribe "
        "churn, garbage tokens) while an SDK client publishes to and reads its own channel. "
        "Exit 1 unless the good client lost and duplicated nothing, the relay is alive and "
        "healthy, its peak RSS stayed under the bound, every close had a documented code "
        "and its log has no traceback; the seed replays the same frames.",
    )
    fuzz.add_argument("--frames", type=int, default=10_000, help="hostile frames (10000)")
    fuzz.add_argument("--seed", type=int, help="replay this seed (default: random, printed)")
    fuzz.add_argument("--connections", type=int, default=4, help="hostile connections at once (4)")
    fuzz.add_argument("--keep", action="store_true", help="keep the temporary directory (logs)")
    fuzz.set_defaults(func=_cmd_bench_fuzz)
    rollout = bench_sub.add_parser(
        "rollout",
        help="a rolling deploy under traffic: every relay of a region replaced, nothing lost",
        description="Starts three regions (a nats-server and two relays each, processes), "
        "runs SDK clients in every region that publish at a steady rate and subscribe, then "
        "replaces every relay of a region one by one as an orchestrator would (SIGTERM, wait "
        "for the exit, start it again on its port, wait until ready and listed by its "
        "siblings). Checks every history (no loss, no duplicate, publisher, causal and "
        "region order) and that no client raised an error to its application; prints "
        "rollout times, reconnects, delivery gaps and publish->ack latency before and during "
        "the rollout. Exit 1 on any violation.",
    )
    rollout.add_argument(
        "--region",
        default="us-east",
        choices=["us-east", "eu-west", "ap-south", "all"],
        help="the region whose relays are replaced, or all (each region in turn); us-east",
    )
    rollout.add_argument("--clients", type=int, default=4, help="SDK clients per region (4)")
    rollout.add_argument(
        "--rate", type=float, default=5.0, help="publishes per second per client (5)"
    )
    rollout.add_argument(
        "--before-s", type=float, default=10.0, help="seconds of traffic before the rollout (10)"
    )
    rollout.add_argument(
        "--after-s", type=float, default=5.0, help="seconds of traffic after it (5)"
    )
    rollout.add_argument("--json", help="write every figure, error and violation here")
    rollout.add_argument(
        "--keep", action="store_true", help="keep the temporary directory (logs, stores)"
    )
    rollout.set_defaults(func=_cmd_bench_rollout)
    presence = bench_sub.add_parser(
        "presence",
        help="presence convergence across three regions, through a partition and its heal",
        description="Starts three regions (a nats-server and a relay process each, a cut/heal "
        "proxy with latency on every federation link) and a presence watcher in each. Measures "
        "how long an enter, update and leave in one region take to reach the others; then cuts "
        "one region off, changes members on both sides, and measures how long until each side "
        "shows the other's members unreachable and removed, and after the heal until every "
        "region's presence.get is the truth again (no phantom, none missing). Exit 1 if "
        "presence does not converge within a bound.",
    )
    presence.add_argument("--rounds", type=int, default=5, help="enter/update/leave rounds (5)")
    presence.add_argument(
        "--heal-rounds", type=int, default=1, help="partition and heal rounds (1; 0 for none)"
    )
    presence.add_argument(
        "--latency-ms", type=float, default=50.0, help="one-way latency per link (50)"
    )
    for option in ("--suspect-after-s", "--remove-after-s", "--snapshot-s"):
        presence.add_argument(
            option, type=float, help="the relays' [presence] setting (default: the relay's)"
        )
    presence.add_argument("--json", help="write the settings, every sample and failures here")
    presence.set_defaults(func=_cmd_bench_presence)
    from relay.client.cli import register as register_client_commands

    register_client_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
