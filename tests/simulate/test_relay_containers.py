"""Relays in containers (``RelayNetwork(relays_in_containers=True)``, ``relaynet simulate
--relays-in-containers``): the image from deploy/Dockerfile, built here without a registry on
a base made of this machine's Python, carries messages between regions, survives a region
kill and restart, and teardown leaves no container (asked of the Docker API).

The first build (wheels, base, relay image) takes about 35 s on 2 cores; later runs reuse
every part whose inputs did not change (a source change rebuilds only the relay image)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import docker
import pytest

from relay import cli
from relay.simulate import containers, relay_image, status
from relay.simulate.network import RelayNetwork
from relay.simulate.spec import parse_regions, uniform
from tests.support.checker import ids

pytestmark = [pytest.mark.anyio, pytest.mark.integration]


@pytest.fixture
def docker_engine() -> None:
    reason = containers.docker_available()
    if reason is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI must run the simulation tests: {reason}")
        pytest.skip(reason)


def our_containers(session: str, label: str = containers.LABEL) -> list[Any]:
    client = docker.from_env()
    try:
        return list(client.containers.list(all=True, filters={"label": f"{label}={session}"}))
    finally:
        client.close()


def _all_simulation_containers() -> set[str]:
    client = docker.from_env()
    try:
        return {c.id for c in client.containers.list(all=True, filters={"label": containers.LABEL})}
    finally:
        client.close()


# --- the parts that need no Docker -----------------------------------------------------------


LDD = """\
/opt/py/bin/python3.11:
\tlinux-vdso.so.1 (0x00007ffd)
\tlibpython3.11.so.1.0 => /opt/py/lib/libpython3.11.so.1.0 (0x00007f83)
\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f84)
\t/lib64/ld-linux-x86-64.so.2 (0x00007f85)
/opt/py/lib/python3.11/lib-dynload/_tkinter.cpython-311-x86_64-linux-gnu.so:
\tlibtk8.6.so => not found
\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f84)
"""


def test_ldd_output_names_libraries_the_linker_and_what_is_missing() -> None:
    found, missing = relay_image.parse_ldd(LDD)
    assert found == {
        "libpython3.11.so.1.0": "/opt/py/lib/libpython3.11.so.1.0",
        "libc.so.6": "/lib/x86_64-linux-gnu/libc.so.6",
        "/lib64/ld-linux-x86-64.so.2": "/lib64/ld-linux-x86-64.so.2",
    }
    assert missing == {
        "/opt/py/lib/python3.11/lib-dynload/_tkinter.cpython-311-x86_64-linux-gnu.so": [
            "libtk8.6.so"
        ]
    }


def test_a_python_that_cannot_be_packed_is_refused_with_the_reason_and_the_fix(
    tmp_path: Path,
) -> None:
    with pytest.raises(relay_image.ImageError, match=r"system prefix /usr .*pyenv install"):
        relay_image.python_prefix(Path("/usr"), (3, 11))
    with pytest.raises(relay_image.ImageError, match=r"python3\.11 is missing.*python:3\.11-slim"):
        relay_image.python_prefix(tmp_path, (3, 11))


def test_the_base_keeps_the_interpreter_stdlib_and_pip_but_not_tests_gui_or_other_packages(
    tmp_path: Path,
) -> None:
    lib = tmp_path / "lib" / "python3.11"
    for rel in (
        "os.py", "__pycache__/os.cpython-311.pyc", "__pycache__/os.cpython-311.opt-1.pyc",
        "test/test_os.py", "tkinter/__init__.py", "unittest/test/test_case.py",
        "lib-dynload/_ssl.cpython-311-x86_64-linux-gnu.so",
        "lib-dynload/_testcapi.cpython-311-x86_64-linux-gnu.so",
        "site-packages/pip/__init__.py", "site-packages/pip-23.2.1.dist-info/METADATA",
        "site-packages/numpy/__init__.py", "site-packages/extra.pth",
        "config-3.11-x86_64-linux-gnu/Makefile", "config-3.11-x86_64-linux-gnu/libpython3.11.a",
    ):  # fmt: skip
        (lib / rel).parent.mkdir(parents=True, exist_ok=True)
        (lib / rel).write_text("")
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "python3.11").write_text("")
    (tmp_path / "lib" / "libpython3.11.so.1.0").write_text("")
    (tmp_path / "lib" / "libpython3.11.so").symlink_to("libpython3.11.so.1.0")

    files = {m.path for m in relay_image.prefix_members(tmp_path, (3, 11)) if m.source is not None}
    py = "usr/local/lib/python3.11"
    assert files == {
        "usr/local/bin/python3.11",
        "usr/local/lib/libpython3.11.so.1.0",
        f"{py}/os.py",
        f"{py}/__pycache__/os.cpython-311.pyc",
        f"{py}/lib-dynload/_ssl.cpython-311-x86_64-linux-gnu.so",
        f"{py}/site-packages/pip/__init__.py",
        f"{py}/site-packages/pip-23.2.1.dist-info/METADATA",
        f"{py}/config-3.11-x86_64-linux-gnu/Makefile",
    }


# --- with Docker -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def relay_tag() -> str:
    """Built before the test's network starts, so that a cold build is not a slow start."""
    reason = containers.docker_available()
    if reason is not None:
        # Module-scoped, so set up before the (function-scoped) docker_engine fixture:
        # it must fail in CI by itself rather than skip there.
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI must run the relay container tests: {reason}")
        pytest.skip(reason)
    return relay_image.ensure_relay_image()


@pytest.mark.usefixtures("docker_engine")
@pytest.mark.timeout(300)  # a cold build (wheels, base, image) takes about 35 s of it
async def test_relays_in_containers_carry_messages_across_regions_and_restart(
    relay_tag: str,
) -> None:
    network = RelayNetwork(uniform(parse_regions("us-east,eu-west"), 10), relays_in_containers=True)
    async with network:
        relays = our_containers(network.session)
        assert len(relays) == 4  # two NATS, two relays
        images = {c.image.tags[0] for c in relays if "relaynet.simulate.relay" in c.labels}
        # relay_tag's, unless the sources changed since the fixture built it
        assert len(images) == 1 and images.pop().startswith(relay_image.RELAY_REPO + ":")
        assert [r.relays_up for r in status.region_rows(network)] == [1, 1]

        async with (
            network.client(near="us-east") as east,
            network.client(near="eu-west") as west,
        ):
            await west.subscribe("chat:boxed")
            acked = [(await east.publish("chat:boxed", n))["id"] for n in range(5)]
            await west.wait_messages("chat:boxed", 5, 30)

        # eu-west burns down (relay container and NATS killed) while us-east publishes;
        # it comes back in the same containers and catches up from its store.
        await network.kill_region("eu-west")
        assert [r.relays_up for r in status.region_rows(network)] == [1, 0]
        async with network.client(near="us-east") as east:
            acked += [(await east.publish("chat:boxed", n))["id"] for n in range(5, 10)]
        await network.restart_region("eu-west")
        assert len(our_containers(network.session)) == 4  # the same ones, started again
        async with network.client(near="eu-west") as west:
            await west.subscribe("chat:boxed", position={})
            await west.wait_messages("chat:boxed", 10, 60)
            assert sorted(ids(west.messages["chat:boxed"])) == sorted(acked)
    assert our_containers(network.session) == [], "teardown left containers"


@pytest.mark.usefixtures("docker_engine", "relay_tag")
@pytest.mark.relay_network(regions=["us-east", "eu-west"], relays_in_containers=True)
def test_the_fixture_runs_relays_in_containers_when_the_marker_asks(relay_network: Any) -> None:
    session = relay_network.network.session
    relays = [c for c in our_containers(session) if "relaynet.simulate.relay" in c.labels]
    assert sorted(c.labels["relaynet.simulate.region"] for c in relays) == ["eu-west", "us-east"]
    assert set(relay_network.edges()) == {"us-east", "eu-west"}


@pytest.mark.usefixtures("docker_engine")
def test_cli_without_a_packable_python_exits_2_with_the_fix_and_starts_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    client = docker.from_env()
    try:
        official = any(relay_image.OFFICIAL_BASE in image.tags for image in client.images.list())
    finally:
        client.close()
    if official and sys.version_info[:2] == (3, 11):
        pytest.skip(f"{relay_image.OFFICIAL_BASE} is present: no base image to miss")
    before = _all_simulation_containers()
    monkeypatch.setattr(sys, "base_prefix", str(tmp_path))  # a Python that is not there
    code = cli.main(["simulate", "--regions", "us-east,eu-west", "--relays-in-containers",
                     "--duration", "1"])  # fmt: skip
    assert code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    # Progress lines (one per start-up step) come first; the refusal is one line, the last.
    *progress, err = lines
    assert all(p.startswith("relaynet simulate: checking") for p in progress), lines
    assert "--relays-in-containers" in err and "not a self-contained Python prefix" in err, err
    assert _all_simulation_containers() == before
