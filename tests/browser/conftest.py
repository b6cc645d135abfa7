"""The browser tests need Chromium: skipped without it, except in CI (a failure there)."""

from __future__ import annotations

import os

import pytest

from tests.browser.chromium import CHROMIUM, chromium_available


@pytest.fixture(autouse=True)
def _need_chromium() -> None:
    if chromium_available():
        return
    message = f"{CHROMIUM} is missing: apt-get install -y chromium"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)
