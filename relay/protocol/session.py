"""ServerSession: the per-connection protocol state machine, without I/O.

Theory of operation
-------------------
The WebSocket layer feeds every received frame to ``receive()`` with the
current time and gets back a list of actions:

* a request that the node must carry out against NATS: ``SubscribeRequest``
  (reported back through ``subscribe_succeeded`` / ``subscribe_failed``),
  ``Publish``, ``History``;
* ``Detach(subscription)``: the client unsubscribed; stop delivering to it now;
* ``Reply(frame)``: bytes to queue for the client (errors, pongs, unsubscribed);
* ``Close(code, reason)``: end the connection (a flood of bad frames, an expired token);
* ``Audit``: a security event for the audit log (an auth failure, a denial, an accepted
  or renewed token, a close for expiry or revocation).

Authentication (``SessionAuth``). Every session checks capabilities
(``relay.core.capabilities``): ``subscribe``, ``publish`` and ``history`` on a channel
its capabilities do not allow get a ``forbidden`` error naming the channel. An
anonymous session has the configured anonymous capabilities from the start. In token
mode a session has none until a token is accepted -- from the connection URL
(``authenticate``) or an ``auth`` frame -- and refuses everything but ``auth`` and
``ping`` with ``unauthorized``. A later ``auth`` (renewal, same ``sub``) replaces the
capabilities at once: a subscription they no longer allow is ended (``Detach`` and a
``forbidden`` error saying so). ``tick(now_epoch_s)`` closes the session with
``token_expired`` (4003) once the token's ``exp`` passed without a renewal; the
caller calls it at ``deadline``. With ``SessionAuth.expiry_warning_s``, ``tick`` first
sends a ``token_expiring`` frame that long before ``exp`` (at most half the token's
lifetime), once per token, so a client without a token provider can renew in time.
A token that ``SessionAuth.revoked`` says is revoked is refused like a bad one ("token
revoked"), and ``check_revoked`` (called whenever a revocation arrives) closes a live
connection whose token it revokes with ``token_revoked`` (4005). A session made
with ``now`` in token mode also has an authentication deadline
(``limits.auth_timeout_s``): ``tick`` closes it with ``unauthorized`` (4501) if no
token was accepted by then; ``deadline`` is the next time
``tick`` has something to decide. Tokens are verified by an injected function (the
relay's PyJWT adapter), so this module stays free of keys and I/O. In hook mode
(``SessionAuth.external``) the application's backend checks credentials instead: an
``auth`` frame becomes an ``AuthRequest`` that the caller carries out and reports back
with ``auth_accepted`` or ``auth_refused`` (``grant`` for those a connection opened with).

Rate limits: publishes and subscribes each take a token from a per-session
``TokenBucket`` (``relay.core.rate``, made at the first request, timed by ``receive``'s
``now``). Without one the request gets ``rate_limited`` (temporary, with
``retry_after_ms``), is not carried out, and is not counted as a bad frame. A
rate-limited publish with an id fences its channel like a failed one (below), so a
client resending it keeps its order.

A publish that could not be stored (``publish_failed``) fences its channel:
later publishes of this connection there are refused until the failed one is
sent again, so no publish is ever stored ahead of one sent before it.

Bad input never raises out of here: it becomes an ``error`` frame. The session
owns the connection's subscriptions, one ``Subscription`` object each from its
subscribe request to its end, so that it can refuse double subscriptions and
unsubscribes of unknown channels; the node records on the same object which
feed it attached it to. A subscription's identity is the object, not its
channel: the answer to an earlier subscribe request to a channel (a slow
catch-up) can never complete, fail or detach a newer subscription to it. The
session also counts recent errors so that one misbehaving client cannot keep a
relay busy.
"""

from __future__ import annotations

import enum
import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from msgspec import UNSET, UnsetType

from relay.core.capabilities import Capabilities, Credentials, Op, TokenRejected
from relay.core.channels import Channel
from relay.core.feed import ChannelFeed
from relay.core.rate import TokenBucket
from relay.protocol.errors import CloseCode, ErrorCode, ProtocolError
from relay.protocol.frames import (
    Auth,
    ClientFrame,
    History,
    Ping,
    PresenceEnter,
    PresenceGet,
    PresenceLeave,
    PresenceUpdate,
    Publish,
    Subscribe,
    Unsubscribe,
    authed_frame,
    decode_client_frame,
    error_frame,
    pong_frame,
    token_expiring_frame,
    unsubscribed_frame,
)

ERROR_WINDOW_S = 60.0


def fenced_frame(frame: Publish, fence: str) -> bytes:
    return error_frame(
        ErrorCode.UNAVAILABLE,
        f"publish {fence!r} on {frame.channel} failed; publish it again (same id) before "
        "later publishes on this channel",
        frame.ref,
        channel=frame.channel,
        id=frame.id,
        behind=fence,
    )


@dataclass(frozen=True)
class SessionLimits:
    max_subscriptions: int
    max_errors_per_minute: int
    # Per namespace; the session asks rather than holding the config tree.
    max_message_bytes: Callable[[Channel], int]
    publish_rate: float = 10000.0  # per second and connection
    publish_burst: int = 20000
    subscribe_rate: float = 100.0
    subscribe_burst: int = 1000
    auth_timeout_s: float = 10.0  # token mode: close an unauthenticated connection then


@dataclass(frozen=True)
class SessionAuth:
    """How sessions authenticate: ``verify`` a token (raises ``TokenRejected``), or None
    for anonymous mode, where every session has ``anonymous`` capabilities."""

    verify: Callable[[str], Credentials] | None = None
    anonymous: Capabilities = field(default_factory=Capabilities.everything)
    # Whether a verified token has been revoked (relay.core.revocations); None: never.
    revoked: Callable[[Credentials], bool] | None = None
    # A ``token_expiring`` frame this long before ``exp`` (at most half the token's
    # lifetime, so a short-lived token is not warned about the moment it is accepted).
    expiry_warning_s: float = 0.0
    # Hook mode: credentials are checked outside the session (the backend's connect hook,
    # which takes I/O): an ``auth`` frame becomes an ``AuthRequest`` for the caller.
    external: bool = False

    @property
    def required(self) -> bool:
        return self.verify is not None or self.external


ANONYMOUS = SessionAuth()


@dataclass(frozen=True)
class Reply:
    frame: bytes


@dataclass(frozen=True)
class Close:
    code: CloseCode
    reason: str


@dataclass(frozen=True)
class Audit:
    """A security event for the audit log (never a token or message data): ``event`` is
    ``auth_failed``, ``denied``, ``authed``, ``renewed``, ``expired`` or ``revoked``."""

    event: str
    reason: str | None = None
    op: str | None = None
    channel: str | None = None
    sub: str | None = None
    jti: str | None = None


class SubState(enum.Enum):
    SUBSCRIBING = "subscribing"
    SUBSCRIBED = "subscribed"


@dataclass(eq=False)
class Subscription:
    """One subscription of the connection, from its subscribe request to its end.

    The session keeps ``state``; the node sets ``feed`` while the subscription is
    attached to the channel's feed (the object itself is its key there)."""

    channel: Channel
    state: SubState = SubState.SUBSCRIBING
    feed: ChannelFeed | None = None


@dataclass(frozen=True)
class SubscribeRequest:
    """Subscribe ``subscription`` as ``frame`` asks (live, or from its position)."""

    frame: Subscribe
    subscription: Subscription


@dataclass(frozen=True)
class Detach:
    """The client unsubscribed: deliver nothing more for ``subscription``."""

    subscription: Subscription


@dataclass(frozen=True)
class PresenceRequest:
    """A presence op to carry out as ``client_id`` (None: the connection's id, for an
    anonymous client that named none)."""

    frame: PresenceEnter | PresenceUpdate | PresenceLeave | PresenceGet
    client_id: str | None


Request = SubscribeRequest | Publish | History | PresenceRequest


@dataclass(frozen=True)
class AuthRequest:
    """Hook mode: have ``frame.token`` checked, then ``auth_accepted`` or ``auth_refused``
    (or reply ``unavailable`` when it cannot be checked now)."""

    frame: Auth


Action = Request | Detach | Reply | Close | Audit | AuthRequest


_OPS = {
    Subscribe: Op.SUBSCRIBE,
    Publish: Op.PUBLISH,
    History: Op.HISTORY,
    PresenceEnter: Op.PRESENCE,
    PresenceUpdate: Op.PRESENCE,
    PresenceLeave: Op.PRESENCE,
    PresenceGet: Op.PRESENCE,
}
# Refusals that go to the audit log.
_AUDITED = frozenset({ErrorCode.UNAUTHORIZED, ErrorCode.FORBIDDEN})


def rate_limited_frame(
    what: str, wait_s: float, ref: str | int | None, channel: Channel, message_id: str | None
) -> bytes:
    retry_after_ms = max(1, math.ceil(wait_s * 1000))
    return error_frame(
        ErrorCode.RATE_LIMITED,
        f"{what} rate limit reached; send it again in {retry_after_ms} ms",
        ref,
        channel=channel,
        id=UNSET if message_id is None else message_id,
        retry_after_ms=retry_after_ms,
    )


class ServerSession:
    def __init__(
        self, limits: SessionLimits, auth: SessionAuth = ANONYMOUS, now: float | None = None
    ) -> None:
        """``now`` (seconds since the epoch, as ``tick`` takes): when the connection
        opened; in token mode it starts the authentication deadline."""
        self._limits = limits
        self._auth = auth
        self._auth_deadline = (
            now + limits.auth_timeout_s if now is not None and auth.required else None
        )
        # Made at the first publish / subscribe: most connections do few of either.
        self._publish_bucket: TokenBucket | None = None
        self._subscribe_bucket: TokenBucket | None = None
        self.credentials: Credentials | None = None
        self._caps: Capabilities = Capabilities() if auth.required else auth.anonymous
        self._subs: dict[Channel, Subscription] = {}
        # channel -> id of a publish that failed: later publishes there wait for its retry.
        self._fences: dict[Channel, str] = {}
        # Channels whose fence is a rate-limited publish (made at the first such fence).
        self._rate_fenced: set[Channel] | None = None
        self._errors: deque[float] | None = None  # made at the first error: most never err
        self._warned_exp: float | None = None  # the exp a token_expiring frame was sent for
        self.closed = False

    @property
    def channels(self) -> dict[Channel, SubState]:
        return {channel: sub.state for channel, sub in self._subs.items()}

    @property
    def subscriptions(self) -> list[Subscription]:
        return list(self._subs.values())

    def subscription(self, channel: Channel) -> Subscription | None:
        return self._subs.get(channel)

    @property
    def expires_at(self) -> float | None:
        """When the token expires (seconds since the epoch); None without one."""
        return None if self.credentials is None else self.credentials.exp

    @property
    def deadline(self) -> float | None:
        """When ``tick`` next has something to decide (seconds since the epoch): the
        authentication deadline until a token is accepted, then the token's ``exp``;
        None once closed."""
        if self.closed:
            return None
        if self.credentials is None:
            return self._auth_deadline
        warn_at = self._warn_at()
        return self.credentials.exp if warn_at is None else warn_at

    def _warn_at(self) -> float | None:
        """When to send ``token_expiring`` for the current token; None: not (again)."""
        creds, lead = self.credentials, self._auth.expiry_warning_s
        if creds is None or lead <= 0 or self._warned_exp == creds.exp:
            return None
        if creds.iat is not None:
            lead = min(lead, (creds.exp - creds.iat) / 2)
        return creds.exp - lead

    def _verify(self, verify: Callable[[str], Credentials], token: str) -> Credentials:
        credentials = verify(token)
        revoked = self._auth.revoked
        if revoked is not None and revoked(credentials):
            raise TokenRejected("token revoked")
        return credentials

    def authenticate(self, token: str) -> Credentials:
        """Accept the token the client presented in the connection URL, or raise
        ``TokenRejected`` (the caller refuses the connection)."""
        verify = self._auth.verify
        if verify is None:
            raise TokenRejected("this relay takes no tokens (anonymous mode)")
        credentials = self._verify(verify, token)
        self._grant(credentials)
        return credentials

    def check_revoked(self) -> list[Action]:
        """Close the connection if its token has been revoked meanwhile (the caller asks
        whenever a revocation arrives)."""
        creds, revoked = self.credentials, self._auth.revoked
        if self.closed or creds is None or revoked is None or not revoked(creds):
            return []
        self.closed = True
        return [
            Reply(error_frame(ErrorCode.UNAUTHORIZED, "token revoked; reconnect with a new one")),
            Close(CloseCode.TOKEN_REVOKED, "token_revoked"),
            Audit("revoked", "token revoked", sub=creds.sub, jti=creds.jti),
        ]

    def tick(self, now_epoch_s: float) -> list[Action]:
        """Close the connection once its token expired without a renewal, or once the
        authentication deadline passed without a token."""
        if self.closed:
            return []
        if (
            self.credentials is None
            and self._auth_deadline is not None
            and now_epoch_s >= self._auth_deadline
        ):
            self.closed = True
            return [
                Reply(
                    error_frame(
                        ErrorCode.UNAUTHORIZED,
                        f"no token within {self._limits.auth_timeout_s:g} s of connecting",
                    )
                ),
                Close(CloseCode.UNAUTHORIZED, "unauthorized"),
            ]
        exp = self.expires_at
        if self.closed or exp is None:
            return []
        if now_epoch_s < exp:
            warn_at = self._warn_at()
            if warn_at is None or now_epoch_s < warn_at:
                return []
            self._warned_exp = exp
            return [Reply(token_expiring_frame(exp))]
        self.closed = True
        creds = self.credentials
        return [
            Reply(error_frame(ErrorCode.UNAUTHORIZED, "token expired; reconnect with a new one")),
            Close(CloseCode.TOKEN_EXPIRED, "token_expired"),
            Audit(
                "expired",
                "token expired",
                sub=None if creds is None else creds.sub,
                jti=None if creds is None else creds.jti,
            ),
        ]

    def _grant(self, credentials: Credentials) -> list[Action]:
        """Take ``credentials``' capabilities now; end the subscriptions they do not allow."""
        self.credentials = credentials
        self._caps = credentials.capabilities
        actions: list[Action] = []
        for channel, sub in list(self._subs.items()):
            if not self._caps.allows(Op.SUBSCRIBE, channel):
                del self._subs[channel]
                actions.append(Detach(sub))
                reason = (
                    f"subscription to {channel} ended: the renewed token does not "
                    "allow subscribe there"
                )
                actions.append(Reply(error_frame(ErrorCode.FORBIDDEN, reason, channel=channel)))
                actions.append(
                    Audit(
                        "denied",
                        reason,
                        Op.SUBSCRIBE.value,
                        channel,
                        credentials.sub,
                        credentials.jti,
                    )
                )
        return actions

    def grant(self, credentials: Credentials) -> None:
        """Hook mode: the backend accepted the credentials the client connected with."""
        self._grant(credentials)

    def auth_accepted(self, frame: Auth, credentials: Credentials, now: float) -> list[Action]:
        """Hook mode: the backend accepted an ``auth`` frame's credentials."""
        if self.closed:
            return []
        try:
            return self._authed(frame, credentials)
        except ProtocolError as exc:
            return self.auth_refused(frame, exc.message, now)

    def auth_refused(self, frame: Auth, reason: str, now: float) -> list[Action]:
        """Hook mode: the backend rejected an ``auth`` frame's credentials."""
        if self.closed:
            return []
        exc = ProtocolError(ErrorCode.UNAUTHORIZED, reason, frame.ref)
        return [*self._error(exc, now), self._refusal(frame, exc)]

    def _auth_frame(self, frame: Auth) -> list[Action]:
        if self._auth.external:
            return [AuthRequest(frame)]
        verify = self._auth.verify
        if verify is None:
            raise ProtocolError(
                ErrorCode.BAD_REQUEST, "this relay takes no tokens (anonymous mode)", frame.ref
            )
        try:
            credentials = self._verify(verify, frame.token)
        except TokenRejected as exc:
            raise ProtocolError(ErrorCode.UNAUTHORIZED, exc.reason, frame.ref) from None
        return self._authed(frame, credentials)

    def _authed(self, frame: Auth, credentials: Credentials) -> list[Action]:
        if self.credentials is not None and credentials.sub != self.credentials.sub:
            raise ProtocolError(
                ErrorCode.UNAUTHORIZED,
                "a renewed token must have the same sub as the connection's",
                frame.ref,
            )
        renewal = self.credentials is not None
        actions = self._grant(credentials)
        return [
            Reply(authed_frame(frame.ref, credentials.sub, credentials.exp)),
            Audit("renewed" if renewal else "authed", sub=credentials.sub, jti=credentials.jti),
            *actions,
        ]

    def receive(self, raw: str | bytes, now: float, *, binary: bool = False) -> list[Action]:
        if self.closed:
            return []
        frame: ClientFrame | None = None
        try:
            if binary:
                raise ProtocolError(
                    ErrorCode.BAD_REQUEST, "binary frames are not supported; send JSON text"
                )
            frame = decode_client_frame(raw)
            return self._handle(frame, now)
        except ProtocolError as exc:
            actions = self._error(exc, now)
            if frame is not None and exc.code in _AUDITED:
                actions.append(self._refusal(frame, exc))
            return actions

    def _refusal(self, frame: ClientFrame, exc: ProtocolError) -> Audit:
        creds = self.credentials
        sub, jti = (None, None) if creds is None else (creds.sub, creds.jti)
        if isinstance(frame, Auth):
            return Audit("auth_failed", exc.message, "auth", sub=sub, jti=jti)
        channel = getattr(frame, "channel", None)
        op = str(type(frame).__struct_config__.tag)
        return Audit("denied", exc.message, op, channel, sub, jti)

    def _handle(self, frame: ClientFrame, now: float) -> list[Action]:
        if isinstance(frame, Ping):
            return [Reply(pong_frame(frame.ref))]
        if isinstance(frame, Auth):
            return self._auth_frame(frame)
        if self._auth.required and self.credentials is None:
            raise ProtocolError(
                ErrorCode.UNAUTHORIZED,
                "authenticate first: an auth frame with a token (or ?token= on connect)",
                frame.ref,
            )
        channel = Channel(frame.channel)
        op = _OPS.get(type(frame))
        if op is not None and not self._caps.allows(op, channel):
            raise ProtocolError(
                ErrorCode.FORBIDDEN, f"not allowed to {op} on {channel}", frame.ref, channel=channel
            )
        if (
            isinstance(frame, Subscribe)
            and frame.presence
            and not self._caps.allows(Op.PRESENCE, channel)
        ):
            raise ProtocolError(
                ErrorCode.FORBIDDEN,
                f"not allowed to presence on {channel}",
                frame.ref,
                channel=channel,
            )
        if isinstance(frame, PresenceEnter | PresenceUpdate | PresenceLeave | PresenceGet):
            return [self._presence(frame, channel)]
        if isinstance(frame, Subscribe):
            if channel in self._subs:
                raise ProtocolError(
                    ErrorCode.ALREADY_SUBSCRIBED, f"already subscribed to {channel}", frame.ref
                )
            if len(self._subs) >= self._limits.max_subscriptions:
                raise ProtocolError(
                    ErrorCode.LIMIT_EXCEEDED,
                    f"at most {self._limits.max_subscriptions} subscriptions per connection",
                    frame.ref,
                )
            bucket = self._subscribe_bucket
            if bucket is None:
                limits = self._limits
                bucket = TokenBucket(limits.subscribe_rate, limits.subscribe_burst, now)
                self._subscribe_bucket = bucket
            wait_s = bucket.take(now)
            if wait_s > 0:
                return [Reply(rate_limited_frame("subscribe", wait_s, frame.ref, channel, None))]
            sub = self._subs[channel] = Subscription(channel)
            return [SubscribeRequest(frame, sub)]
        if isinstance(frame, Unsubscribe):
            ended = self._subs.pop(channel, None)
            if ended is None:
                raise ProtocolError(
                    ErrorCode.NOT_SUBSCRIBED, f"not subscribed to {channel}", frame.ref
                )
            return [Detach(ended), Reply(unsubscribed_frame(frame.ref, channel))]
        if isinstance(frame, Publish):
            limit = self._limits.max_message_bytes(channel)
            if len(frame.data) > limit:
                raise ProtocolError(
                    ErrorCode.TOO_LARGE,
                    f"data is {len(frame.data)} bytes; the limit for {channel} is {limit}",
                    frame.ref,
                )
            fence = self._fences.get(channel)
            if fence is not None and frame.id != fence:
                # Not the client's fault, so not counted as an error: the world failed.
                return [Reply(fenced_frame(frame, fence))]
            bucket = self._publish_bucket
            if bucket is None:
                limits = self._limits
                bucket = TokenBucket(limits.publish_rate, limits.publish_burst, now)
                self._publish_bucket = bucket
            wait_s = bucket.take(now)
            if wait_s > 0:
                if frame.id is not None:  # later publishes there wait for its resend
                    self._fences[channel] = frame.id
                    if self._rate_fenced is None:
                        self._rate_fenced = set()
                    self._rate_fenced.add(channel)
                return [Reply(rate_limited_frame("publish", wait_s, frame.ref, channel, frame.id))]
            if fence is not None:
                del self._fences[channel]  # the resend of the failed publish: order resumes
                if self._rate_fenced is not None:
                    self._rate_fenced.discard(channel)
            return [frame]
        return [frame]

    def _presence(
        self, frame: PresenceEnter | PresenceUpdate | PresenceLeave | PresenceGet, channel: Channel
    ) -> PresenceRequest:
        data = frame.data if isinstance(frame, PresenceEnter | PresenceUpdate) else UNSET
        if not isinstance(data, UnsetType):
            limit = self._limits.max_message_bytes(channel)
            if len(data) > limit:
                raise ProtocolError(
                    ErrorCode.TOO_LARGE,
                    f"data is {len(data)} bytes; the limit for {channel} is {limit}",
                    frame.ref,
                )
        credentials = self.credentials
        if credentials is None:  # anonymous: the client names itself, or is its connection
            named = frame.client_id if isinstance(frame, PresenceEnter) else None
            return PresenceRequest(frame, named)
        if isinstance(frame, PresenceEnter) and frame.client_id not in (None, credentials.sub):
            raise ProtocolError(
                ErrorCode.FORBIDDEN,
                "client_id must be the token's sub (or left out)",
                frame.ref,
                channel=channel,
            )
        return PresenceRequest(frame, credentials.sub)

    def publish_failed(self, channel: Channel, message_id: str) -> None:
        """A publish on ``channel`` was not stored. Until the client sends it again (same
        id), its later publishes on the channel are refused: none may be stored ahead of
        it. (Those already queued behind it fail in the writer.) A rate-limited publish
        fencing the channel was sent after every publish still in the writer, so a failed
        one takes its place."""
        if self._rate_fenced is not None and channel in self._rate_fenced:
            self._rate_fenced.discard(channel)
            self._fences[channel] = message_id
            return
        self._fences.setdefault(channel, message_id)

    def is_current(self, sub: Subscription) -> bool:
        """Whether ``sub`` is still the client's subscription to its channel."""
        return self._subs.get(sub.channel) is sub

    def subscribe_succeeded(self, sub: Subscription) -> bool:
        """Returns False if the client unsubscribed meanwhile (the node must detach)."""
        if self.is_current(sub) and sub.state is SubState.SUBSCRIBING:
            sub.state = SubState.SUBSCRIBED
            return True
        return False

    def subscribe_failed(self, sub: Subscription) -> None:
        """Forget ``sub`` if it was still being subscribed (the client may try again)."""
        if self.is_current(sub) and sub.state is SubState.SUBSCRIBING:
            del self._subs[sub.channel]

    def drop_subscription(self, channel: Channel) -> None:
        self._subs.pop(channel, None)

    def _error(self, exc: ProtocolError, now: float) -> list[Action]:
        if self._errors is None:
            self._errors = deque()
        self._errors.append(now)
        while self._errors and self._errors[0] <= now - ERROR_WINDOW_S:
            self._errors.popleft()
        channel = UNSET if exc.channel is None else exc.channel
        actions: list[Action] = [
            Reply(error_frame(exc.code, exc.message, exc.ref, channel=channel))
        ]
        if len(self._errors) > self._limits.max_errors_per_minute:
            self.closed = True
            actions.append(Close(CloseCode.TOO_MANY_ERRORS, "too_many_errors"))
        return actions
