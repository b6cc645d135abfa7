"""The Node.js side of ``relaynet bench compare``: its scripts and their npm packages.

``relay/bench/node/`` ships the scripts with a ``package.json`` and a lockfile
that pin exact versions. They are copied to an ignored folder and installed
there with ``npm ci`` (only what the lockfile says), once per lockfile: a
stamp file holds the lockfile's hash, and a folder whose stamp matches is used
as it is. The scripts are copied every time, so an edit takes effect at once.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from relay.bench.report import BenchError
from relay.harness.toolkit import clock, poll_until, spawn, tail, terminate

SOURCE = Path(__file__).with_name("node")
FILES = ("package.json", "package-lock.json", "loadgen.js", "ws_server.js", "socketio_server.js")
DEFAULT_FOLDER = Path(".relaynet") / "bench-node"  # .relaynet/ is in .gitignore
STAMP = ".installed-lock-sha256"
NPM_TIMEOUT_S = 600.0
PROGRESS_EVERY_S = 10.0


@dataclass(frozen=True)
class NodeKit:
    node: str  # the node executable
    folder: Path  # scripts and node_modules

    def script(self, name: str) -> str:
        return str(self.folder / name)

    def version_of(self, package: str) -> str:
        """The installed version, as the lockfile pins it."""
        lock = json.loads((self.folder / "package-lock.json").read_text())
        return str(lock["packages"][f"node_modules/{package}"]["version"])


def _lock_digest() -> str:
    return hashlib.sha256((SOURCE / "package-lock.json").read_bytes()).hexdigest()


def _installed(folder: Path, digest: str) -> bool:
    stamp = folder / STAMP
    return (folder / "node_modules").is_dir() and stamp.is_file() and stamp.read_text() == digest


async def _npm_ci(npm: str, folder: Path) -> None:
    out, err = folder / "npm-ci.out", folder / "npm-ci.err"
    argv = [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"]
    proc = spawn(argv, out, err, cwd=folder)
    started = clock()
    try:
        while not await poll_until(lambda: proc.poll() is not None, clock() + PROGRESS_EVERY_S):
            waited = clock() - started
            if waited > NPM_TIMEOUT_S:
                raise BenchError(f"npm ci in {folder} not done after {NPM_TIMEOUT_S:.0f}s")
            print(f"  ... npm ci still running ({waited:.0f} s)", flush=True)
    finally:
        await terminate(proc.pid, lambda: proc.poll() is not None)
    if proc.returncode != 0:
        last = tail(err, 1) or tail(out, 1)
        raise BenchError(f"npm ci in {folder} failed (exit {proc.returncode}): {last}")


def _tools() -> tuple[str, str]:
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        missing = " and ".join(name for name, path in (("node", node), ("npm", npm)) if not path)
        raise BenchError(f"{missing} not found on PATH: install Node.js 18 or later with npm")
    return node, npm


def _copy_files(folder: Path) -> Path:
    folder = folder.resolve()
    folder.mkdir(parents=True, exist_ok=True)
    for name in FILES:
        shutil.copyfile(SOURCE / name, folder / name)
    return folder


async def install(folder: Path = DEFAULT_FOLDER) -> NodeKit:
    """Node, and the pinned packages installed in ``folder``; progress goes to stdout."""
    node, npm = _tools()
    folder = _copy_files(folder)
    digest = _lock_digest()
    if _installed(folder, digest):
        print(f"node packages: installed in {folder} (lockfile unchanged)", flush=True)
        return NodeKit(node, folder)
    (folder / STAMP).unlink(missing_ok=True)
    print(f"node packages: npm ci in {folder} (versions pinned by the lockfile) ...", flush=True)
    started = clock()
    await _npm_ci(npm, folder)
    (folder / STAMP).write_text(digest)
    print(f"node packages: installed in {clock() - started:.0f} s", flush=True)
    return NodeKit(node, folder)
