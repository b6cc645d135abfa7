"""relay.simulate.containers against a real Docker engine (nothing mocked).

No engine: skipped locally with the reason, but a failure when CI=true (start one with
tests/docker_engine.sh). Every container gets a label value private to this module
and is removed in a finally block; the last check asserts none is left.
"""

from __future__ import annotations

import os
import socket
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import docker
import nats
import pytest

from relay.adapters.embedded_nats import find_nats_server
from relay.harness.toolkit import free_port
from relay.simulate import containers
from relay.simulate.containers import ContainerError, NatsContainer, PortInUseError

pytestmark = pytest.mark.integration

SESSION = f"test-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module", autouse=True)
def engine() -> Iterator[None]:
    reason = containers.docker_available()
    if reason is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI must run the Docker tests: {reason}")
        pytest.skip(reason)
    try:
        yield
    finally:
        containers.remove_leftovers(SESSION)


@pytest.fixture(scope="module")
def docker_client() -> Iterator[Any]:
    client = docker.from_env()
    try:
        yield client
    finally:
        client.close()


@pytest.fixture(scope="module")
def image() -> str:
    return containers.ensure_nats_image()


def ours(client: Any, session: str = SESSION) -> list[Any]:
    return list(
        client.containers.list(all=True, filters={"label": f"{containers.LABEL}={session}"})
    )


def new_container(image: str, tmp_path: Path, region: str = "eu", **kw: Any) -> NatsContainer:
    return NatsContainer(
        region,
        client_port=kw.pop("client_port", None) or free_port(),
        monitor_port=kw.pop("monitor_port", None) or free_port(),
        store_dir=tmp_path / f"{region}-store",
        image=image,
        session=kw.pop("session", SESSION),
        **kw,
    )


@pytest.fixture
def server(image: str, tmp_path: Path) -> Iterator[NatsContainer]:
    container = new_container(image, tmp_path)
    try:
        container.start()
        yield container
    finally:
        container.remove()


def test_image_is_built_from_the_binary_once_then_reused(docker_client: Any) -> None:
    repo = f"relaynet-test/nats-server-{uuid.uuid4().hex[:8]}"  # not the shared tag
    tag = ""
    try:
        started = time.monotonic()
        tag = containers.ensure_nats_image(use_official=False, build_repo=repo)
        built_s = time.monotonic() - started
        assert tag.startswith(f"{repo}:")
        built = docker_client.images.get(tag)
        binary = find_nats_server()
        assert built.labels[containers._BINARY_SHA_LABEL] == containers._sha256(binary)
        assert built.attrs["Config"]["Entrypoint"] == ["/nats-server"]

        started = time.monotonic()
        assert containers.ensure_nats_image(use_official=False, build_repo=repo) == tag
        reused_s = time.monotonic() - started
        assert docker_client.images.get(tag).id == built.id
        assert reused_s < 1.0, f"second call took {reused_s:.2f}s (build took {built_s:.2f}s)"
    finally:
        if tag:
            docker_client.images.remove(tag, force=True)  # only untags a shared image id


def test_only_a_static_binary_goes_into_the_scratch_image() -> None:
    assert containers._dynamic_linker(find_nats_server()) is None
    assert containers._dynamic_linker(sys.executable)  # e.g. /lib64/ld-linux-x86-64.so.2


@pytest.mark.anyio
async def test_jetstream_publish_and_read_back(server: NatsContainer) -> None:
    assert server.url == f"nats://127.0.0.1:{server.client_port}"
    nc = await nats.connect(server.url, connect_timeout=5)
    try:
        js = nc.jetstream()
        await js.add_stream(name="ORDERS", subjects=["orders.>"])
        for i in range(3):
            ack = await js.publish(f"orders.{i}", f"order {i}".encode())
            assert ack.seq == i + 1
        assert [(await js.get_msg("ORDERS", seq)).data for seq in (1, 2, 3)] == [
            b"order 0",
            b"order 1",
            b"order 2",
        ]
    finally:
        await nc.close()


async def publish(url: str, payloads: list[bytes], *, create: bool) -> None:
    nc = await nats.connect(url, connect_timeout=5)
    try:
        js = nc.jetstream()
        if create:
            await js.add_stream(name="KEEP", subjects=["keep.>"])
        for payload in payloads:
            await js.publish("keep.x", payload)
    finally:
        await nc.close()


async def read_all(url: str) -> list[bytes]:
    nc = await nats.connect(url, connect_timeout=5)
    try:
        js = nc.jetstream()
        info = await js.stream_info("KEEP")
        return [
            (await js.get_msg("KEEP", seq)).data or b""
            for seq in range(info.state.first_seq, info.state.last_seq + 1)
        ]
    finally:
        await nc.close()


@pytest.mark.anyio
async def test_stop_then_start_again_keeps_the_stream(server: NatsContainer) -> None:
    await publish(server.url, [b"a", b"b"], create=True)
    await anyio.to_thread.run_sync(server.stop)
    assert server.status() == "exited"
    await anyio.to_thread.run_sync(server.start_again)
    assert await read_all(server.url) == [b"a", b"b"]
    await publish(server.url, [b"c"], create=False)
    assert await read_all(server.url) == [b"a", b"b", b"c"]


@pytest.mark.anyio
async def test_kill_then_start_again_keeps_the_stream(
    server: NatsContainer, docker_client: Any
) -> None:
    await publish(server.url, [b"a", b"b", b"c"], create=True)
    await anyio.to_thread.run_sync(server.kill)
    assert server.status() == "exited"
    assert docker_client.containers.get(server.name).attrs["State"]["ExitCode"] == 137  # SIGKILL
    await anyio.to_thread.run_sync(server.start_again)
    assert await read_all(server.url) == [b"a", b"b", b"c"]


def test_port_in_use_is_a_clear_error(image: str, tmp_path: Path, docker_client: Any) -> None:
    session = f"{SESSION}-port"
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = holder.getsockname()[1]
        for kw, what in (({"client_port": taken}, "client"), ({"monitor_port": taken}, "monitor")):
            container = new_container(image, tmp_path, session=session, **kw)
            try:
                with pytest.raises(PortInUseError) as raised:
                    container.start()
                assert raised.value.port == taken
                message = str(raised.value)
                assert f"127.0.0.1:{taken}" in message and f"{what} port" in message, message
                assert ours(docker_client, session) == []  # checked before creating anything
            finally:
                container.remove()


def test_failed_start_reports_logs_and_leaves_nothing(
    image: str, tmp_path: Path, docker_client: Any
) -> None:
    session = f"{SESSION}-bad"
    container = new_container(image, tmp_path, extra_args=["--no-such-flag"], session=session)
    try:
        with pytest.raises(ContainerError, match=r"exited with code \d+") as raised:
            container.start()
        assert "no-such-flag" in str(raised.value)  # nats-server's own complaint, from the logs
        assert ours(docker_client, session) == []
    finally:
        container.remove()


def test_context_manager_removes_the_container(
    image: str, tmp_path: Path, docker_client: Any
) -> None:
    session = f"{SESSION}-with"
    try:
        with new_container(image, tmp_path, session=session) as container:
            [found] = ours(docker_client, session)
            assert found.name == container.name
            assert found.name.startswith("relaynet-eu-")
            assert found.labels["org.testcontainers"] == "true"
            assert found.attrs["HostConfig"]["NetworkMode"] == "host"
        assert ours(docker_client, session) == []
    finally:
        containers.remove_leftovers(session)


def test_remove_leftovers_removes_one_session_and_spares_others(
    image: str, tmp_path: Path, docker_client: Any
) -> None:
    crashed, other = f"{SESSION}-crashed", f"{SESSION}-other"
    try:
        # What a crashed simulation leaves: running and stopped containers nobody removes.
        new_container(image, tmp_path, "r1", session=crashed).start()
        new_container(image, tmp_path, "r2", session=crashed).start().stop()
        new_container(image, tmp_path, "r3", session=other).start()
        assert len(ours(docker_client, crashed)) == 2

        assert containers.remove_leftovers(crashed) == 2
        assert ours(docker_client, crashed) == []
        assert len(ours(docker_client, other)) == 1
        assert containers.remove_leftovers(crashed) == 0
    finally:
        containers.remove_leftovers(crashed)
        containers.remove_leftovers(other)
    assert ours(docker_client, other) == []


def test_zz_no_container_of_this_module_is_left(docker_client: Any) -> None:
    """Runs last (file order): every test above cleaned up after itself."""
    left = [
        c.name
        for c in docker_client.containers.list(all=True, filters={"label": containers.LABEL})
        if c.labels.get(containers.LABEL, "").startswith(SESSION)
    ]
    assert left == []
