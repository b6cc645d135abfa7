"""A lease in the region's JetStream KV: which federation instance serves a peer link.

Only an optimisation: appends are idempotent, so two holders at once (a lease
expiring while its old holder still works) cost duplicate work, never a
duplicate message. The bucket's max age is the lease TTL; the holder renews
every third of it with a compare-and-set update, and a crashed holder's key
simply expires.
"""

from __future__ import annotations

import logging

import anyio
import nats.js.errors
from nats.aio.client import Client as NatsClient
from nats.js.api import KeyValueConfig, StorageType
from nats.js.kv import KeyValue

log = logging.getLogger("relaynet.federation")


class Lease:
    def __init__(self, nc: NatsClient, bucket: str, key: str, owner: str, ttl_s: float) -> None:
        self.nc = nc
        self.bucket = bucket
        self.key = key
        self.owner = owner
        self.ttl_s = ttl_s
        self.held = False
        self._changed = anyio.Event()
        self._revision: int | None = None  # of our key while we hold it
        self._kv_handle: KeyValue | None = None

    async def _kv(self) -> KeyValue:
        js = self.nc.jetstream()
        config = KeyValueConfig(
            bucket=self.bucket, ttl=self.ttl_s, history=1, storage=StorageType.FILE
        )
        return await js.create_key_value(config)

    async def wait_changed(self) -> None:
        await self._changed.wait()

    def _set(self, held: bool) -> None:
        if held != self.held:
            self.held = held
            log.info("lease %s/%s %s by %s", self.bucket, self.key,
                     "taken" if held else "lost", self.owner)  # fmt: skip
            self._changed.set()
            self._changed = anyio.Event()

    async def run(self) -> None:
        """Keep trying to hold the lease, renewing it while held, until cancelled; then
        give it up, so that another instance takes over at its next attempt rather than
        after the TTL (a rolling deploy stopped cross-region delivery for up to the TTL
        each time it stopped the holder: found by ``relaynet bench rollout``)."""
        try:
            await self._hold()
        finally:
            await self._release()

    async def _release(self) -> None:
        revision, kv = self._revision, self._kv_handle
        self._set(False)
        if revision is None or kv is None:
            return
        # Only if it is still ours (same revision); a lost race changes nothing.
        with anyio.CancelScope(shield=True), anyio.move_on_after(1):
            try:
                await kv.delete(self.key, last=revision)
                log.info("lease %s/%s given up by %s", self.bucket, self.key, self.owner)
            except Exception as exc:  # expired, taken, NATS away: the TTL does it then
                log.debug("lease %s/%s not given up: %r", self.bucket, self.key, exc)

    async def _hold(self) -> None:
        interval = self.ttl_s / 3
        revision: int | None = None
        kv: KeyValue | None = None
        while True:
            try:
                if kv is None:
                    kv = await self._kv()
                if revision is None:
                    revision = await kv.create(self.key, self.owner.encode())
                else:
                    revision = await kv.update(self.key, self.owner.encode(), last=revision)
                self._revision, self._kv_handle = revision, kv
                self._set(True)
            except nats.js.errors.KeyWrongLastSequenceError:
                revision = self._revision = None
                self._set(False)
            except Exception as exc:  # NATS down or slow: we cannot know we still hold it
                log.debug("lease %s/%s: %r", self.bucket, self.key, exc)
                revision = self._revision = None
                kv = None
                self._set(False)
            await anyio.sleep(interval)
