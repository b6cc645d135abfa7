"""The Python SDK: one resilient connection to the nearest region, over plain WebSockets
(or, where WebSocket is blocked, Server-Sent Events and HTTP publishing).

``async with relay.client.connect(seeds, timeout=10) as client:`` then
``client.subscribe``, ``client.publish``, ``client.history``, ``client.presence``
(README, "Clients").

Layout, from the pure core outwards (the pure modules do no I/O and read no clock):

* ``session.py``      pure: ``ClientSession`` (positions, pending publishes, frames <-> events)
* ``supervisor.py``   pure: ``Supervisor`` (rounds, backoff, redirects, move-back) and
                      ``ConnectionState``
* ``routing.py``      pure: region choice and the move-back rule; ``backoff.py``: full jitter
* ``directory.py``    pure: ``Directory``, ``Survey``, ``plan()``; ``endpoints.py``: relay URLs
* ``transport.py``    pure: ``TransportPolicy`` (WebSocket, or SSE when it is blocked)
* ``history.py``      the ``history`` reply's wire Struct; ``page.py``: ``HistoryPage``
* ``presence.py``     pure: ``Member``, presence events, ``MemberView``, ``PresenceBook``
                      (what was entered, to enter again on every new connection)
* ``http.py``         the HTTP/1.1 GET of probes and directory (h11 over anyio)
* ``probing.py``      fetch the directory, probe the edges, ``survey()``
* ``subscription.py`` ``Subscription`` (async iterator over a bounded queue) and its
                      ``PresenceEvents``; ``channel_presence.py``: ``client.presence(c)``
* ``client.py``       ``Client`` and ``connect()``: the anyio shell that runs the machines
* ``sse_link.py``     an edge over SSE + the HTTP API (``sse.py``: the event stream reader;
                      ``http_client.py``: ``HttpClient``, HTTP only, for backends)
* ``errors.py``       what the SDK raises; ``cli.py``, ``running.py``: ``relaynet sub/pub/edges``
* ``connection.py``   the old single-module API, re-exported
"""

from relay.client.channel_presence import Presence
from relay.client.client import Client, HistoryPage, connect, data_of
from relay.client.directory import Dial, Directory, DirectoryEdge, Survey
from relay.client.errors import (
    ClientClosed,
    ClientError,
    ConnectionFailed,
    NoEdgeReachable,
    PositionExpiredError,
    PresenceUnavailable,
    RequestRefused,
)
from relay.client.http_client import HttpClient
from relay.client.presence import Member, MemberView, PresenceChange, PresenceEvent, PresenceSync
from relay.client.probing import fetch_directory, survey
from relay.client.routing import Choice, MoveBackPolicy
from relay.client.session import Acked, FrameTooLarge, Message
from relay.client.subscription import PresenceEvents, Subscription
from relay.client.supervisor import ConnectionState

__all__ = [
    "Acked",
    "Choice",
    "Client",
    "ClientClosed",
    "ClientError",
    "ConnectionFailed",
    "ConnectionState",
    "Dial",
    "Directory",
    "DirectoryEdge",
    "FrameTooLarge",
    "HistoryPage",
    "HttpClient",
    "Member",
    "MemberView",
    "Message",
    "MoveBackPolicy",
    "NoEdgeReachable",
    "PositionExpiredError",
    "Presence",
    "PresenceChange",
    "PresenceEvent",
    "PresenceEvents",
    "PresenceSync",
    "PresenceUnavailable",
    "RequestRefused",
    "Subscription",
    "Survey",
    "connect",
    "data_of",
    "fetch_directory",
    "survey",
]
