"""The garbage collector's settings for a long-running relay or federation process.

A relay allocates a few dozen containers per publish (frames, entries, clocks,
callbacks), and nearly all of them die within milliseconds. With CPython's
default young-generation threshold (700 allocations) the collector ran
hundreds of times a second, promoted short-lived in-flight objects to the
older generations, and so kept triggering full collections that walk every
object the process holds, the modules and their objects included: `perf` put
about 12% of the relay's CPU in the collector with 10 subscribers and one
publisher (`gc_collect_main`, `visit_decref`, `visit_reachable`).

Freezing what start-up allocated (imports, configuration, the process's long-lived
services) takes those objects out of every later collection; a high young-generation
threshold lets short-lived objects be freed by reference counting before a
collection ever looks at them. The threshold must stay above what a busy relay
holds in flight: the young generation's count only falls while it is above zero, so
a working set larger than the threshold keeps triggering collections that walk it.
At 10,000 that was so once a connection could have 2,880 publishes in flight (each
a handful of containers until its ack): 155 young collections in a 10 s run at
N = 10, 7.5% of the relay's CPU (`perf`); at 100,000, none (a publishing relay
makes no cyclic garbage). Cyclic garbage still gets collected, in larger, rarer
steps: at most ``YOUNG_THRESHOLD`` container allocations' worth waits for the next
one.
"""

from __future__ import annotations

import gc
from typing import Final

YOUNG_THRESHOLD: Final = 100_000


def settle_for_serving() -> None:
    """Call once start-up is done, just before serving: collect what start-up left,
    freeze the survivors, and raise the young generation's threshold."""
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, middle, old)


__all__ = ["YOUNG_THRESHOLD", "settle_for_serving"]
