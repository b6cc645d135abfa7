"""The relay's collector settings take effect, in a process of their own (freezing the
test process's objects would change every later test's collections)."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def test_settle_for_serving_freezes_startup_and_raises_the_young_threshold() -> None:
    script = textwrap.dedent(
        """
        import gc
        from relay.gc_settings import YOUNG_THRESHOLD, settle_for_serving
        middle, old = gc.get_threshold()[1:]
        before = gc.get_freeze_count()
        settle_for_serving()
        assert gc.get_threshold() == (YOUNG_THRESHOLD, middle, old), gc.get_threshold()
        assert gc.get_freeze_count() > before + 1000, gc.get_freeze_count()
        assert gc.isenabled()
        # Cyclic garbage made after start-up is still collected, by the collector on
        # its own once that many containers more are alive.
        class Node:
            pass
        import weakref
        a, b = Node(), Node()
        a.other, b.other = b, a
        ref = weakref.ref(a)
        del a, b
        assert ref() is not None
        alive = [[] for _ in range(YOUNG_THRESHOLD + 1)]
        assert ref() is None
        print("ok")
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"
