"""The harness's server ports: free, distinct, and outside the kernel's ephemeral range,
so that no outgoing connection takes a port whose server is down for a restart."""

from __future__ import annotations

import socket

from relay.harness.toolkit import EPHEMERAL_RANGE_FILE, free_ports, server_port_range


def test_ports_are_free_distinct_and_below_the_ephemeral_range() -> None:
    ports = free_ports(50)
    assert len(set(ports)) == 50
    low = int(EPHEMERAL_RANGE_FILE.read_text().split()[0])
    assert server_port_range(), "this machine leaves room below its ephemeral range"
    assert all(port < low for port in ports)
    assert all(port in server_port_range() for port in ports)
    for port in ports[:5]:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))  # free: nothing else holds it


def test_two_calls_never_hand_out_the_same_port() -> None:
    first, second = free_ports(20), free_ports(20)
    assert not set(first) & set(second)
