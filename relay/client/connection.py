"""Where the Python SDK used to live in one file; kept so that existing imports work.

The SDK is now split by what each part does (see ``relay/client/__init__.py``);
new code imports from ``relay.client`` (the public API) or from the module
named for the thing it needs.
"""

from __future__ import annotations

from relay.client.client import (
    ABNORMAL_CLOSURE,
    CLOSE_TIMEOUT_S,
    DEFAULT_BUFFER,
    MAX_FRAME_BYTES,
    OPEN_TIMEOUT_S,
    Client,
    HistoryPage,
    connect,
    data_of,
)
from relay.client.directory import Dial, Directory, DirectoryEdge, Survey, plan
from relay.client.endpoints import EDGES_PATH, PING_PATH, WS_PATH, relay_ws_url
from relay.client.errors import (
    ClientClosed,
    ClientError,
    ConnectionFailed,
    NoEdgeReachable,
    PositionExpiredError,
    RequestRefused,
)
from relay.client.http import MAX_RESPONSE_BYTES as MAX_HTTP_RESPONSE_BYTES
from relay.client.http import HttpError
from relay.client.probing import fetch_directory, probe, probe_all, survey
from relay.client.session import Acked, FrameTooLarge, Message
from relay.client.subscription import Subscription
from relay.client.supervisor import (
    MAX_REDIRECTS_IN_A_ROW,
    REDIRECT_GRACE_S,
    SUSPEND_AFTER_ROUNDS,
    SUSPENDED_FACTOR,
    ConnectionState,
)

__all__ = [
    "ABNORMAL_CLOSURE",
    "CLOSE_TIMEOUT_S",
    "DEFAULT_BUFFER",
    "EDGES_PATH",
    "MAX_FRAME_BYTES",
    "MAX_HTTP_RESPONSE_BYTES",
    "MAX_REDIRECTS_IN_A_ROW",
    "OPEN_TIMEOUT_S",
    "PING_PATH",
    "REDIRECT_GRACE_S",
    "SUSPENDED_FACTOR",
    "SUSPEND_AFTER_ROUNDS",
    "WS_PATH",
    "Acked",
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
    "HttpError",
    "Message",
    "NoEdgeReachable",
    "PositionExpiredError",
    "RequestRefused",
    "Subscription",
    "Survey",
    "connect",
    "data_of",
    "fetch_directory",
    "plan",
    "probe",
    "probe_all",
    "relay_ws_url",
    "survey",
]
