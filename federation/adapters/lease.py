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
        """Keep trying to hold the lease, renewing it while held, until cancelled."""
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
                self._set(True)
            except nats.js.errors.KeyWrongLastSequenceError:
                revision = None
                self._set(False)
            except Exception as exc:  # NATS down or slow: we cannot know we still hold it
                log.debug("lease %s/%s: %r", self.bucket, self.key, exc)
                revision = None
                kv = None
                self._set(False)
            await anyio.sleep(interval)
