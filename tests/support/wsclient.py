"""The plain WebSocket protocol client used by the tests (it ships with relaynet so that
users' own tests can use it through ``RelayNetwork.client``)."""

from relay.simulate.client import ProtocolClient, protocol_client

__all__ = ["ProtocolClient", "protocol_client"]
