"""``relaynet simulate``: bring a network up, print its edges and a live status table."""

from __future__ import annotations

import signal
import sys

import anyio

from relay.simulate import status
from relay.simulate.network import RelayNetwork
from relay.simulate.progress import StartupProgress
from relay.simulate.spec import NetworkSpec


async def run_simulation(
    spec: NetworkSpec,
    relays_per_region: int,
    refresh_s: float,
    duration_s: float | None,
    relays_in_containers: bool = False,
    networking: str = "host",
) -> int:
    progress = StartupProgress()
    progress.tick_every(1.0)
    try:
        async with RelayNetwork(
            spec,
            relays_per_region=relays_per_region,
            relays_in_containers=relays_in_containers,
            networking=networking,
            progress=progress.step,
        ) as network:
            progress.done()
            await _show(network, refresh_s, duration_s)
    finally:
        progress.done()
    print("relaynet simulate: stopped; containers and relays removed", flush=True)
    return 0


async def _show(network: RelayNetwork, refresh_s: float, duration_s: float | None) -> None:
    print("relaynet simulate: network up", flush=True)
    for region, url in network.edges().items():
        print(f"  {region:<12} {url}", flush=True)
    print("Ctrl-C to stop; everything started here is removed on exit.\n", flush=True)
    tty = sys.stdout.isatty()
    with anyio.move_on_after(duration_s) if duration_s else _forever():
        async with anyio.create_task_group() as tg:

            async def stop_on_signal() -> None:
                with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                    async for _ in signals:
                        tg.cancel_scope.cancel()
                        return

            tg.start_soon(stop_on_signal)
            while True:
                regions = await anyio.to_thread.run_sync(status.region_rows, network)
                table = status.render(regions, await status.link_rows(network))
                print(("\x1b[H\x1b[2J" if tty else "") + table + "\n", flush=True)
                await anyio.sleep(refresh_s)


class _forever:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None
