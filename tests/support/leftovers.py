"""What a tool left running after it ended: processes named after its work directory."""

from __future__ import annotations

from pathlib import Path


def cmdlines_mentioning(text: str) -> list[str]:
    """Every process on this machine whose command line contains ``text``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if text in cmdline:
                found.append(f"{entry.name}: {cmdline}")
    return found
