"""The Origin allow-list against a real browser: Chromium sends the page's origin with every
WebSocket upgrade and cannot be made to lie, so a relay that does not list it refuses the
page (HTTP 403; the page sees the connection fail), while one that lists it lets it in."""

from __future__ import annotations

from pathlib import Path

import pytest

from relay.harness.toolkit import free_ports
from tests.browser.chromium import chromium
from tests.browser.pages import ws_url
from tests.support.relays import make_config, running_relays, timeout

pytestmark = [pytest.mark.anyio, pytest.mark.integration]

OPEN = (
    "(url) => new Promise((resolve) => {"
    " const ws = new WebSocket(url);"
    " ws.onopen = () => { ws.close(); resolve('open'); };"
    " ws.onclose = (e) => resolve(`closed ${e.code}`); })"
)


async def test_a_page_of_an_origin_not_listed_is_refused(tmp_path: Path, nats_url: str) -> None:
    home, elsewhere = free_ports(2)
    page_origin = f"http://127.0.0.1:{home}"
    welcoming = make_config(
        nats_url=nats_url, relay_id="r1", port=home, relay={"allowed_origins": [page_origin]}
    )
    closed = make_config(
        nats_url=nats_url,
        relay_id="r2",
        port=elsewhere,
        relay={"allowed_origins": ["https://app.example.com"]},
    )
    async with running_relays(welcoming, closed):
        async with chromium(tmp_path / "chromium.log") as browser:
            # Any page of the welcoming relay: its origin is what counts, not its path.
            page = await browser.new_page(f"{page_origin}/v1/ping")
            assert await page.evaluate(f"({OPEN})({ws_url(home)!r})", timeout(20)) == "open"
            refused = await page.evaluate(f"({OPEN})({ws_url(elsewhere)!r})", timeout(20))
            assert refused == "closed 1006", page.console
