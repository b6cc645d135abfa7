"""The NATS client every relaynet process uses: nats-py's, with a faster header parser
and a way to publish many messages at once.

Every message a relay reads from JetStream (its live feed, federation, acks of atomic
batches) carries 6 to 9 headers, and nats-py parses them in Python with a generator per
header name: a fifth of a relay's CPU at a few thousand publishes a second (py-spy). This
parser gives the same result for every header block (a test compares the two on random
input) at about a third of the cost. nats-py looks the parser up on the instance, so
overriding it is the whole change; tests/unit/test_nats_client.py fails if that ever
stops being true.

``publish_batch_members`` writes the messages of an atomic batch (all but its commit) as
one buffer: nats-py's ``publish`` builds and validates headers with a regex per key, and
queues a flush, per message (15% of a relay's CPU). Our headers are ASCII tokens and
values we made and checked (channel names and ids are validated), so each header block
is formatted in one step as it is; sizes are checked against the server's limit like
nats-py does.

``_connect_to_server`` closes the socket of a failed attempt before the next one: nats-py
reuses its transport object and overwrote the stream of an attempt whose TCP connect
succeeded but whose INFO never came (a frozen nats-server still accepts connections), so a
relay leaked one socket per attempt for as long as its NATS stayed frozen.

``subscribe_direct`` hands a subscription's messages to a plain function, called in the
read loop with the payload and only the headers it names: a relay's live feed (every
stored message, republished) spent a quarter of its CPU in nats-py's per-message path
(a header dict of 9 entries, a ``Msg``, a queue and a task wake-up) before its own code
ran (py-spy, one channel, 10 subscribers). ``pick_headers`` splits the lines as nats-py
does but decodes only the values of the names asked for (the rest of a republished block,
6 lines or so, is compared, not decoded), so what it returns is what nats-py's dict would
hold for those names (a property test compares them).

``connect_with`` is the one way a relaynet process connects: the URLs, credentials and TLS
of a ``NatsConnectOptions`` (built from ``[nats]`` or a ``[[peers]]`` entry) become nats-py's
arguments here, its files are read and checked first, and a connection meant to be TLS
stays TLS: nats-py upgrades only when the server's INFO says ``tls_required``, even for a
``tls://`` URL, so whoever answers in between could otherwise take the credentials in
plaintext.
"""

from __future__ import annotations

import re
import ssl
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import nats.errors
import nkeys
from nats.aio.client import Client
from nats.aio.subscription import Subscription
from nats.protocol.parser import AWAITING_CONTROL_LINE, Parser

from federation.settings import NatsConnectOptions

_NAME_HAS_SPACE = re.compile(r"\s")
_HEAD_LINE = b"NATS/1.0\r\n"

#: A direct subscription's handler: the payload and the headers it asked for.
DirectHandler = Callable[[bytes, Mapping[str, str]], None]


class NatsOptionsError(Exception):
    """A credential or TLS file of a ``NatsConnectOptions`` cannot be used; the message
    names the config field and the file."""


def _read(options: NatsConnectOptions, field: str, path: str) -> bytes:
    try:
        data = Path(path).read_bytes().strip()
    except OSError as exc:
        raise NatsOptionsError(
            f"{options.config_prefix}{field}: cannot read {path} ({exc.strerror})"
        ) from None
    if not data:
        raise NatsOptionsError(f"{options.config_prefix}{field}: {path} is empty")
    return data


def tls_context(options: NatsConnectOptions) -> ssl.SSLContext | None:
    """The TLS context for ``options`` (None when it does not ask for TLS): the server's
    certificate checked against ``tls_ca_file`` (or the system's CAs) and its host name,
    and the client certificate if one is given."""
    if not options.requires_tls:
        return None
    prefix = options.config_prefix
    try:
        context = ssl.create_default_context(cafile=options.tls_ca_file or None)
    except (OSError, ssl.SSLError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise NatsOptionsError(
            f"{prefix}tls_ca_file: cannot use {options.tls_ca_file} as CA certificates ({why})"
        ) from None
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if options.tls_cert_file:
        try:
            context.load_cert_chain(options.tls_cert_file, options.tls_key_file or None)
        except (OSError, ssl.SSLError) as exc:
            why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise NatsOptionsError(
                f"{prefix}tls_cert_file/tls_key_file: cannot use {options.tls_cert_file} "
                f"with {options.tls_key_file} as client certificate and key ({why})"
            ) from None
    return context


def connect_kwargs(options: NatsConnectOptions) -> dict[str, Any]:
    """nats-py ``connect()`` arguments for the credentials and TLS of ``options``, its files
    read and checked now (nats-py reads a seed or creds file again at each signature)."""
    kwargs: dict[str, Any] = {"servers": list(options.servers)}
    prefix = options.config_prefix
    if options.user:
        kwargs["user"] = options.user
        kwargs["password"] = _read(options, "password_file", options.password_file).decode()
    elif options.nkey_seed_file:
        seed = _read(options, "nkey_seed_file", options.nkey_seed_file)
        try:
            nkeys.from_seed(bytearray(seed)).wipe()
        except Exception:
            raise NatsOptionsError(
                f"{prefix}nkey_seed_file: {options.nkey_seed_file} does not hold an nkey user "
                "seed (one line starting with SU)"
            ) from None
        kwargs["nkeys_seed"] = options.nkey_seed_file
    elif options.creds_file:
        creds = _read(options, "creds_file", options.creds_file)
        # nats-py reads a creds file without a JWT block forever: check its shape first.
        if b"BEGIN NATS USER JWT" not in creds or b"BEGIN USER NKEY SEED" not in creds:
            raise NatsOptionsError(
                f"{prefix}creds_file: {options.creds_file} is not a NATS .creds file (a user "
                "JWT block and a user nkey seed block)"
            )
        kwargs["user_credentials"] = options.creds_file
    if (context := tls_context(options)) is not None:
        kwargs["tls"] = context
    return kwargs


_TLS_NOT_OFFERED = "the server does not require TLS, but TLS is configured for it"


def is_refusal(exc: BaseException) -> bool:
    """Whether ``exc`` is the server or its certificate refused, not merely unreachable:
    a wrong CA or credentials, or no TLS where it is required. Retrying does not fix these."""
    text = str(exc).lower()
    return isinstance(exc, ssl.SSLError) or "authorization" in text or _TLS_NOT_OFFERED in text


def describe_failure(exc: BaseException, options: NatsConnectOptions) -> str:
    """What went wrong connecting with ``options``, in words an operator can act on."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        trusted = (
            f"{options.config_prefix}tls_ca_file ({options.tls_ca_file})"
            if options.tls_ca_file
            else f"the system's CAs (no {options.config_prefix}tls_ca_file given)"
        )
        return (
            f"TLS: the server's certificate was refused ({exc.verify_message}); "
            f"it must be signed by a CA in {trusted} and name the host of the URL"
        )
    if isinstance(exc, ssl.SSLError):
        return f"TLS handshake failed ({exc.reason or exc})"
    return repr(exc)


class _Direct:
    """Whose method is the ``cb`` of a direct subscription: marks it for ``_process_msg``,
    which calls ``handler`` itself, so nats-py never queues a message for it."""

    def __init__(self, handler: DirectHandler, names: Sequence[str]) -> None:
        self.handler = handler
        self.names = header_names(names)

    async def never_called(self, msg: Any) -> None:  # nats-py wants a coroutine function
        raise AssertionError("a direct subscription's message reached nats-py's queue")


class _MessageFirstParser(Parser):
    """nats-py's protocol parser, with the messages of a read handled first and in place.

    nats-py tries a regex for MSG, then one for HMSG, on every message, and deletes each
    message from the front of its buffer (moving the rest of a 64 KiB read each time),
    then awaits a coroutine per message. Here the (H)MSG messages of a read are split
    with ``bytes.split`` at offsets into the buffer, which is cut once; a direct
    subscription's message is handled without a coroutine. Everything else (PING, PONG,
    +OK, -ERR, INFO, a control line that is not a well-formed (H)MSG) goes to nats-py's
    own ``parse``, which raises its own errors; a message not all read yet waits, as
    there, for the next read. tests/unit/test_nats_parser.py holds this to nats-py's
    parser for any stream of protocol lines cut into reads anywhere.
    """

    nc: NatsClient
    _handled = 0  # offset in the buffer after the last message handled in this read

    async def parse(self, data: bytes = b"") -> None:
        buf = self.buf
        buf.extend(data)
        if self.state != AWAITING_CONTROL_LINE:  # nats-py holds half a message
            await super().parse()
            return
        self._handled = 0
        try:
            rest = await self._messages(buf)
        finally:
            # What was handled leaves the buffer, whatever a handler raised.
            if self.buf is buf:
                del buf[: self._handled]
        if rest and self.buf is buf:
            await super().parse()

    async def _messages(self, buf: bytearray) -> bool:
        """Handle the complete (H)MSG messages at the start of ``buf`` (``_handled``: the
        offset after the last one handled); True if something only nats-py's parser reads
        comes next."""
        nc = self.nc
        pos, end = 0, len(buf)
        with memoryview(buf) as view:
            while pos < end:
                if buf.startswith(b"HMSG ", pos):
                    header_at = True
                elif buf.startswith(b"MSG ", pos):
                    header_at = False
                else:
                    return True
                eol = buf.find(b"\r\n", pos)
                if eol < 0:
                    return False  # the control line is not all here yet
                line = bytes(view[pos:eol])
                if b"\r" in line or b"\n" in line:  # nats-py's regexes read those otherwise
                    return True
                parts = line.split()
                count = len(parts)
                if header_at:
                    if count not in (5, 6) or not (parts[-1].isdigit() and parts[-2].isdigit()):
                        return True
                    header_size, size = int(parts[-2]), int(parts[-1])
                else:
                    if count not in (4, 5) or not parts[-1].isdigit():
                        return True
                    header_size, size = 0, int(parts[-1])
                if not parts[2].isdigit() or header_size > size:
                    return True
                start = eol + 2
                stop = start + size
                if stop + 2 > end:
                    return False  # the payload is not all here yet
                sid = int(parts[2])
                headers = bytes(view[start : start + header_size]) if header_size else None
                payload = bytes(view[start + header_size : stop])
                pos = self._handled = stop + 2
                direct = nc._sync_direct(sid, headers)
                if direct is not None:
                    failed = nc._handle_direct(direct, payload, headers)
                    if failed is not None:
                        await nc._error_cb(failed)
                else:
                    reply = parts[3] if count == (6 if header_at else 5) else b""
                    await nc._process_msg(sid, parts[1], reply, payload, headers)
                if self.buf is not buf:  # reset by a reconnect meanwhile: nothing to keep
                    return False
        return False


class NatsClient(Client):
    #: Set by ``connect_with``: a server that does not require TLS is refused.
    _require_tls = False

    def __init__(self) -> None:
        super().__init__()
        self._ps = _MessageFirstParser(self)

    async def connect_with(self, options: NatsConnectOptions, **kwargs: Any) -> None:
        """``connect()`` to the servers of ``options`` with its credentials and TLS;
        ``kwargs`` are nats-py's other ``connect()`` arguments. NatsOptionsError when a file
        cannot be used."""
        self._require_tls = options.requires_tls
        await self.connect(**connect_kwargs(options), **kwargs)

    async def _process_info(self, info: dict[str, Any], initial_connection: bool = False) -> None:
        # Called with the first INFO of every (re)connect, before the upgrade and CONNECT.
        if initial_connection and self._require_tls and not info.get("tls_required"):
            raise nats.errors.Error(
                f"nats: {_TLS_NOT_OFFERED}: refusing to send credentials or messages in plaintext"
            )
        await super()._process_info(info, initial_connection)

    async def _connect_to_server(self, s: Any) -> None:
        if self._transport is not None:
            self._transport.close()  # type: ignore[no-untyped-call]  # the last attempt's socket
        await super()._connect_to_server(s)

    @staticmethod
    def _parse_header_lines(raw: bytes) -> dict[str, str]:
        out: dict[str, str] = {}
        for line in raw.split(b"\r\n"):
            name, sep, value = line.partition(b":")
            if not sep:
                continue
            try:
                key = name.strip().decode("ascii")
            except UnicodeDecodeError:
                continue  # not a token: skipped, as nats-py does
            if _NAME_HAS_SPACE.search(key) is not None:
                continue
            out[key] = value.strip().decode("utf-8", "replace")
        return out

    async def subscribe_direct(
        self, subject: str, handler: DirectHandler, header_names: Sequence[str]
    ) -> Subscription:
        """Subscribe ``handler`` to ``subject``: called in the read loop for each message
        with its payload and those of ``header_names`` it carries. It must not block; an
        exception it raises goes to the error callback and the next message is handled."""
        return await self.subscribe(subject, cb=_Direct(handler, header_names).never_called)

    async def _process_msg(
        self, sid: int, subject: bytes, reply: bytes, data: bytes, headers: bytes | None
    ) -> None:
        direct = self._sync_direct(sid, headers)
        if direct is not None:
            failed = self._handle_direct(direct, data, headers)
        else:
            direct = self._direct(sid)
            if direct is None:
                await super()._process_msg(sid, subject, reply, data, headers)  # type: ignore[arg-type]
                return
            # An inline status line: nats-py's own header path, then the names.
            parsed = await self._process_headers(headers) or {}
            picked = {n: parsed[n] for n in direct.names.values() if n in parsed}
            failed = self._call_direct(direct, data, picked)
        if failed is not None:
            await self._error_cb(failed)

    def _direct(self, sid: int) -> _Direct | None:
        """The direct subscription ``sid`` is, if it is one."""
        sub = self._subs.get(sid)
        direct = getattr(sub._cb, "__self__", None) if sub is not None else None
        return direct if isinstance(direct, _Direct) else None

    def _sync_direct(self, sid: int, headers: bytes | None) -> _Direct | None:
        """The direct subscription ``sid`` is, if its message can be handled without
        awaiting anything (no headers, or the plain ``NATS/1.0`` line)."""
        if headers and not headers.startswith(_HEAD_LINE):
            return None
        return self._direct(sid)

    def _handle_direct(
        self, direct: _Direct, data: bytes, headers: bytes | None
    ) -> Exception | None:
        """A direct subscription's message whose headers (if any) start with the plain
        ``NATS/1.0`` line: handled without awaiting anything; returns what the handler
        raised, for the error callback."""
        if headers:
            picked: Mapping[str, str] = pick_headers(headers[len(_HEAD_LINE) :], direct.names)
        else:
            picked = {}
        return self._call_direct(direct, data, picked)

    def _call_direct(
        self, direct: _Direct, data: bytes, picked: Mapping[str, str]
    ) -> Exception | None:
        self.stats["in_msgs"] += 1
        self.stats["in_bytes"] += len(data)
        try:
            direct.handler(data, picked)
        except Exception as exc:
            return exc
        return None

    async def publish_batch_members(self, batch: str, members: Sequence[BatchMember]) -> None:
        """Publish members 1..n of JetStream atomic batch ``batch``, in order, as one write:
        each (subject, ``Nats-Msg-Id``, payload, expected last sequence of its subject or
        None). The commit is sent apart (it asks for the answer). The header blocks are
        formatted here in one step each."""
        if self.is_closed:
            raise nats.errors.ConnectionClosedError
        if not self.is_connected or self.is_draining_pubs:
            # nats-py would buffer while reconnecting; a batch half-buffered is worth less
            # than a clear failure that the writer retries whole.
            raise nats.errors.ConnectionReconnectingError
        parts: list[bytes] = []
        batch_id = batch.encode()
        for number, (subject, msg_id, payload, expected_seq) in enumerate(members, 1):
            block = batch_member_block(batch_id, number, msg_id, expected_seq)
            total = len(block) + len(payload)
            if total > self._max_payload:
                raise nats.errors.MaxPayloadError
            size = len(block)
            parts.append(b"HPUB %s %d %d\r\n%s%s\r\n" % (subject, size, total, block, payload))
            self.stats["out_msgs"] += 1
            self.stats["out_bytes"] += len(payload)
        await self._send_command(b"".join(parts))


class BatchMember(NamedTuple):
    """A message of an atomic batch as ``publish_batch_members`` writes it."""

    subject: bytes
    msg_id: str
    payload: bytes
    expected_seq: int | None  # the subject's expected last sequence, if checked


def batch_member_headers(
    batch: str, number: int, msg_id: str, expected_seq: int | None
) -> dict[str, str]:
    """The headers of member ``number`` of atomic batch ``batch``: its id, its place, its
    ``Nats-Msg-Id`` and, if given, its subject's expected last sequence (checked against
    the stream as it was before the batch; the first member of each subject carries it).
    For nats-py's ``publish`` and the commit's request; ``batch_member_block`` is the
    same as bytes."""
    headers = {"Nats-Batch-Id": batch, "Nats-Batch-Sequence": str(number), "Nats-Msg-Id": msg_id}
    if expected_seq is not None:
        headers["Nats-Expected-Last-Subject-Sequence"] = str(expected_seq)
    return headers


def batch_member_block(batch: bytes, number: int, msg_id: str, expected_seq: int | None) -> bytes:
    """``batch_member_headers`` as the header block ``publish_batch_members`` writes,
    formatted in one step (a test holds the two to each other)."""
    block = b"NATS/1.0\r\nNats-Batch-Id: %s\r\nNats-Batch-Sequence: %d\r\nNats-Msg-Id: %s\r\n" % (
        batch,
        number,
        msg_id.encode(),
    )
    if expected_seq is not None:
        block += b"Nats-Expected-Last-Subject-Sequence: %d\r\n" % expected_seq
    return block + b"\r\n"


def header_names(names: Iterable[str]) -> dict[bytes, str]:
    """What ``pick_headers`` takes: each name's bytes, to the name."""
    return {name.encode("ascii"): name for name in names}


def pick_headers(raw: bytes, names: Mapping[bytes, str]) -> dict[str, str]:
    """``{n: parsed[n]}`` for each of ``names`` in ``parsed``, the header lines ``raw``
    parsed as ``NatsClient._parse_header_lines`` does (the last line of a name wins)."""
    out: dict[str, str] = {}
    get = names.get
    wanted = len(names)
    # From the last line back, the first line of a name is the one that wins; JetStream
    # appends the headers the live feed reads (sequences, time) after the stored ones,
    # so the walk usually stops after a few of a dozen lines.
    for line in reversed(raw.split(b"\r\n")):
        # Stripped, as nats-py does: " Nats-Sequence :" is that header to it too.
        name, sep, value = line.partition(b":")
        key = get(name.strip())
        if key is not None and sep and key not in out:
            out[key] = value.strip().decode("utf-8", "replace")
            if len(out) == wanted:
                break
    return out
