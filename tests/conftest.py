from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.nats import nats_server


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # nats-py and websockets' asyncio API


@pytest.fixture
def nats_url(tmp_path: Path) -> Iterator[str]:
    """A real nats-server with JetStream, fresh for each test."""
    with nats_server(tmp_path / "nats") as url:
        yield url


@pytest.fixture(autouse=True)
def _logging_left_as_found() -> Iterator[None]:
    """Tests that run a CLI command in-process configure logging (levels, a root handler)
    for the process; the tests after them must still see every relay's log lines."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    levels = {name: logger.level for name, logger in _loggers()}
    yield
    for name, logger in _loggers():
        logger.setLevel(levels.get(name, logging.NOTSET))
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)


def _loggers() -> list[tuple[str, logging.Logger]]:
    return [
        (name, logger)
        for name, logger in logging.root.manager.loggerDict.items()
        if isinstance(logger, logging.Logger)
    ]
