"""The relay image for ``relaynet simulate --relays-in-containers``, and relays running in it.

Theory of operation. The image is ``deploy/Dockerfile`` built on a Python base image; no
container registry and no network are needed:

1. **Base.** The official ``python:3.11-slim`` when it is present locally (with
   RELAYNET_PULL_IMAGES=1 a missing one is pulled first) and this machine's Python is 3.11
   (the wheels of step 2 are made for this machine's Python). Otherwise
   ``relaynet/python:<version>-<hash>``, imported from a root filesystem made of this
   machine's Python: its installation prefix (a self-contained one, as pyenv,
   python-build-standalone or ``./configure --prefix`` make) moved to /usr/local and trimmed
   (no tests, tkinter, idlelib, ensurepip, static library; of site-packages only pip), the
   shared libraries ``ldd`` names for the interpreter and its extension modules, those that
   manylinux wheels may assume (libgcc_s, libstdc++, ...), the dynamic linker, and a few
   files in /etc. No shell and no package manager: the Dockerfile's RUNs are in exec form.
2. **Wheels.** The relay's dependencies (``project.dependencies`` and
   ``build-system.requires`` of pyproject.toml) as wheels, made by this machine's pip (so its
   index, proxy and certificates apply), cached under ``~/.cache/relaynet/wheels/<hash>``.
3. **Relay image.** ``relaynet/relay:<hash>``, built from a context holding exactly what the
   Dockerfile copies plus ``deploy/wheels/``, with PIP_NO_INDEX=1: the build reads no network
   (the engine may run with ``--bridge=none``).

Every step is cached by a content hash in its tag or directory name, so a second run only
hashes files. :class:`RelayContainer` runs one relay from that image on the host network,
labelled like the NATS containers of :mod:`relay.simulate.containers` so that
``remove_leftovers`` removes it too. Every call blocks; async callers use a worker thread.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import tomllib
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import docker
import docker.errors
from testcontainers.core.container import DockerContainer

from relay.simulate import containers

log = logging.getLogger("relaynet.simulate.relay_image")

OFFICIAL_BASE = "python:3.11-slim"
BASE_REPO = "relaynet/python"
RELAY_REPO = "relaynet/relay"
#: Part of every hash: change it when what goes into an image changes.
RECIPE = "1"

#: Libraries a manylinux wheel may link without bundling them (PEP 600's list minus X11/GL);
#: packed into the base when this machine has them.
MANYLINUX_LIBS = (
    "libc.so.6", "libm.so.6", "libdl.so.2", "librt.so.1", "libpthread.so.0", "libutil.so.1",
    "libresolv.so.2", "libcrypt.so.1", "libnsl.so.1", "libz.so.1", "libexpat.so.1",
    "libgcc_s.so.1", "libstdc++.so.6",
)  # fmt: skip

#: Directories left out of the standard library (tests, GUI, the bundled pip installer).
_SKIP_DIRS = frozenset({"test", "tests", "idle_test", "idlelib", "tkinter", "turtledemo",
                        "ensurepip", "__phello__"})  # fmt: skip
#: Extension modules left out: GUI and CPython's own test modules.
_SKIP_EXTENSIONS = re.compile(r"^(_tkinter|_test|_ctypes_test|_xxtestfuzz|xxlimited|xxsubtype)")
#: What the Dockerfile copies from the repository (it also copies deploy/).
_CONTEXT_PATHS = ("pyproject.toml", "README.md", "LICENSE", "relay", "federation", "deploy")
_ETC_FILES = {
    "etc/passwd": "root:x:0:0:root:/root:/sbin/nologin\n"
    "nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\n",
    "etc/group": "root:x:0:\nnogroup:x:65534:\n",
    "etc/nsswitch.conf": "passwd: files\ngroup: files\nhosts: files dns\n",
}
_BASE_ENV = ("PATH=/usr/local/bin:/usr/bin:/bin", "LANG=C.UTF-8",
             "LD_LIBRARY_PATH=/usr/local/lib")  # fmt: skip
_HASH_LABEL = "relaynet.image.sha256"


class ImageError(containers.ContainerError):
    """The relay image cannot be had; the message says what is missing and how to fix it."""


# ---------------------------------------------------------------------------------------------
# The base: this machine's Python as a root filesystem


@dataclass(frozen=True)
class Member:
    """One entry of the base's root filesystem: a file copied from the host (``source``),
    a symlink (``link``), a directory (neither), or a small text file (``text``)."""

    path: str  # inside the image, without a leading "/"
    source: Path | None = None
    link: str | None = None
    text: str | None = None
    mode: int = 0o755
    strip: bool = False  # an ELF file whose debug info can go (with binutils' strip)


def python_prefix(prefix: Path | None = None, version: tuple[int, int] | None = None) -> Path:
    """The installation prefix of this machine's Python (``sys.base_prefix``: a venv's base),
    checked to be one that can be moved into an image; else ImageError saying why."""
    prefix = Path(prefix or sys.base_prefix)
    major, minor = version or sys.version_info[:2]
    stdlib = prefix / "lib" / f"python{major}.{minor}"
    fix = (
        "install a self-contained Python (pyenv install 3.11, python-build-standalone) "
        f"and run from it, or make {OFFICIAL_BASE} available (docker load, or "
        "RELAYNET_PULL_IMAGES=1 with a registry)"
    )
    if sys.platform != "linux":
        raise ImageError(f"this Python runs on {sys.platform}, not Linux; {fix}")
    if str(prefix) in ("/", "/usr"):
        raise ImageError(
            f"this Python lives in the system prefix {prefix} (files shared with the OS), "
            f"not a self-contained prefix; {fix}"
        )
    for needed in (prefix / "bin" / f"python{major}.{minor}", stdlib / "os.py"):
        if not needed.exists():
            raise ImageError(
                f"{prefix} is not a self-contained Python prefix ({needed} is missing); {fix}"
            )
    if not (stdlib / "site-packages" / "pip" / "__init__.py").exists():
        python = prefix / "bin" / f"python{major}.{minor}"
        raise ImageError(f"{prefix} has no pip for the image's builds; run {python} -m ensurepip")
    return prefix


def _skipped(rel: Path) -> bool:
    """Whether a path relative to lib/pythonX.Y stays out of the base."""
    parts = rel.parts
    if parts[0] == "site-packages" and len(parts) > 1:
        return not re.match(r"^pip($|-[^/]*\.dist-info$)", parts[1])
    if parts[0].startswith("config-"):
        return rel.suffix == ".a"  # the static libpython: 40+ MB only for embedding
    if parts[0] == "lib-dynload" and len(parts) == 2:
        return bool(_SKIP_EXTENSIONS.match(parts[1]))
    if parts[-1].endswith(".pyc"):
        # bytecode for the default optimisation level only: no .opt-1/.opt-2 copies
        return ".opt-" in parts[-1]
    return False


def prefix_members(prefix: Path, version: tuple[int, int]) -> list[Member]:
    """The Python part of the base: ``prefix`` as /usr/local, trimmed (see :func:`_skipped`)."""
    major, minor = version
    py = f"python{major}.{minor}"
    members = [
        Member("usr/local/bin/" + py, source=(prefix / "bin" / py).resolve(), strip=True),
        Member("usr/local/bin/python3", link=py),
        Member("usr/local/bin/python", link=py),
    ]
    for lib in sorted((prefix / "lib").glob(f"libpython{major}.{minor}*.so*")):
        if not lib.is_symlink():  # the linker's libpython3.11.so -> ... is for building
            members.append(Member(f"usr/local/lib/{lib.name}", source=lib, strip=True))
    stdlib = prefix / "lib" / py
    for root, dirs, files in os.walk(stdlib):
        here = Path(root)
        rel_dir = here.relative_to(stdlib)
        dirs[:] = sorted(d for d in dirs if not _skipped_dir(rel_dir / d))
        inside = PurePosixPath("usr/local/lib", py, rel_dir.as_posix())
        members.append(Member(inside.as_posix()))
        for name in sorted(files):
            if not _skipped(rel_dir / name):
                source, strip = here / name, name.endswith(".so")
                members.append(Member((inside / name).as_posix(), source=source, strip=strip))
    return members


def _skipped_dir(rel: Path) -> bool:
    """Whether a directory relative to lib/pythonX.Y stays out of the base."""
    if rel.parts[0] == "site-packages" and len(rel.parts) == 2:
        return _skipped(rel)
    return rel.name in _SKIP_DIRS


def parse_ldd(output: str) -> tuple[dict[str, str], dict[str, list[str]]]:
    """``ldd a b c`` output -> (the libraries found: name -> path, including the dynamic
    linker; what each file needs and ldd could not find: file -> [name])."""
    found: dict[str, str] = {}
    missing: dict[str, list[str]] = {}
    current = ""
    for raw in output.splitlines():
        line = raw.strip()
        if not raw.startswith(("\t", " ")) and line.endswith(":"):
            current = line[:-1]
            continue
        if "=>" in line:
            name, _, rest = line.partition("=>")
            target = rest.strip().split(" (")[0].strip()
            if target == "not found":
                missing.setdefault(current, []).append(name.strip())
            elif target.startswith("/"):
                found[name.strip()] = target
        elif line.startswith("/"):  # the dynamic linker: "/lib64/ld-linux-x86-64.so.2 (0x...)"
            path = line.split(" (")[0]
            found[path] = path
    return found, missing


def _ldd(files: list[Path]) -> tuple[dict[str, str], dict[str, list[str]]]:
    ldd = shutil.which("ldd")
    if ldd is None:
        raise ImageError("ldd is not installed (Debian: apt-get install libc-bin); it lists "
                         "the shared libraries to pack with this machine's Python")  # fmt: skip
    proc = subprocess.run(
        [ldd, *map(str, files)], capture_output=True, text=True, timeout=60, check=False
    )
    return parse_ldd(proc.stdout)


def library_members(binaries: list[Path], prefix: Path) -> tuple[list[Member], set[str]]:
    """The shared libraries the binaries need (at the paths ldd reports, as real files; not
    those inside the prefix, which moves to /usr/local) and the manylinux ones found next to
    libc; plus the binaries whose libraries ldd cannot find."""
    found, missing = _ldd(binaries)
    found = {k: v for k, v in found.items() if not Path(v).is_relative_to(prefix)}
    libc = found.get("libc.so.6")
    if libc is None:
        raise ImageError(f"ldd found no libc for {binaries[0]}; is it a glibc Linux binary?")
    libdir = Path(libc).parent
    for name in MANYLINUX_LIBS:
        if name not in found and (libdir / name).exists():
            found[name] = str(libdir / name)
    members = [
        Member(path.lstrip("/"), source=Path(path).resolve())
        for path in sorted(set(found.values()))
    ]
    return members, set(missing)


def base_members(prefix: Path, version: tuple[int, int]) -> list[Member]:
    """Everything in the base image's root filesystem."""
    members = prefix_members(prefix, version)
    binaries = [m.source for m in members if m.source is not None and _is_elf_object(m)]
    libraries, broken = library_members(binaries, prefix)
    if str(binaries[0]) in broken:
        raise ImageError(f"{binaries[0]} needs libraries that ldd cannot find; run ldd on it")
    for path in sorted(broken):
        log.info("left out %s: ldd cannot find all its libraries", path)
    members = [m for m in members if m.source is None or str(m.source) not in broken]
    members += libraries
    members += [Member(path, text=text, mode=0o644) for path, text in _ETC_FILES.items()]
    members.append(Member("tmp", mode=0o1777))
    return members


def _is_elf_object(member: Member) -> bool:
    name = member.path.rsplit("/", 1)[-1]
    return member.path.startswith("usr/local/bin/python") or (
        name.endswith(".so") and "/lib-dynload/" in member.path
    )


def _tarinfo(member: Member) -> tarfile.TarInfo:
    info = tarfile.TarInfo(member.path)
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    info.mode = member.mode
    if member.link is not None:
        info.type = tarfile.SYMTYPE
        info.linkname = member.link
        info.mode = 0o777
    elif member.text is not None:
        info.size = len(member.text.encode())
    elif member.source is not None:
        st = member.source.stat()
        info.size, info.mtime, info.mode = st.st_size, int(st.st_mtime), st.st_mode & 0o7777
    else:
        info.type = tarfile.DIRTYPE
    return info


def members_digest(members: Iterable[Member], *extra: str) -> str:
    """A hash of what a rootfs would hold: paths, links, modes, sizes and mtimes of the
    host files (a changed file changes its mtime; hashing 100 MB each run would be slow)."""
    digest = hashlib.sha256("\0".join((RECIPE, *extra)).encode())
    for member in members:
        info = _tarinfo(member)
        digest.update(f"{info.name}\0{info.type!r}\0{info.linkname}\0{info.mode}\0".encode())
        digest.update(f"{info.size}\0{info.mtime}\0{member.text or ''}\n".encode())
    return digest.hexdigest()


def write_tar(members: Iterable[Member], out: Any, strip: str | None = None) -> None:
    """The members as an (uncompressed) tar stream; with ``strip`` (the path of binutils'
    strip) the ELF files marked so lose their debug info on the way (-20 MB for pyenv's)."""
    with (
        tempfile.TemporaryDirectory(prefix="relaynet-strip-") as tmp,
        tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar,
    ):
        for member in members:
            info = _tarinfo(member)
            if member.text is not None:
                tar.addfile(info, io.BytesIO(member.text.encode()))
            elif member.source is not None:
                source = member.source
                if member.strip and strip is not None:
                    source = Path(tmp) / "elf"
                    shutil.copyfile(member.source, source)
                    subprocess.run([strip, "--strip-debug", str(source)], check=True, timeout=60)
                    info.size = source.stat().st_size
                with open(source, "rb") as f:
                    tar.addfile(info, f)
            else:
                tar.addfile(info)


def _local_image(client: Any, tag: str) -> Any | None:
    try:
        return client.images.get(tag)
    except docker.errors.ImageNotFound:
        return None
    except docker.errors.APIError as e:
        raise ImageError(f"Docker cannot look up {tag}: {containers._one_line(e)}") from e


def ensure_base_image(
    client: Any,
    *,
    use_official: bool = True,
    prefix: Path | None = None,
    progress: Callable[[str], None] = lambda step: None,
) -> str:
    """A Python base image's tag (see the module's docstring, step 1)."""
    if use_official and sys.version_info[:2] == (3, 11):
        if _local_image(client, OFFICIAL_BASE) is not None:
            return OFFICIAL_BASE
        if os.environ.get("RELAYNET_PULL_IMAGES") == "1":
            try:
                client.images.pull(OFFICIAL_BASE)
                return OFFICIAL_BASE
            except docker.errors.APIError as e:
                log.warning("could not pull %s: %s", OFFICIAL_BASE, containers._one_line(e))
    version = (sys.version_info.major, sys.version_info.minor)
    home = python_prefix(prefix, version)
    members = base_members(home, version)
    strip = shutil.which("strip")
    digest = members_digest(members, str(home), str(strip))
    full = ".".join(map(str, sys.version_info[:3]))
    tag = f"{BASE_REPO}:{full}-{digest[:12]}"
    if _local_image(client, tag) is not None:
        return tag
    progress(f"making the Python base image {tag} from {home}")
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="relaynet-python-base-") as tmp:
        rootfs = Path(tmp) / "rootfs.tar"
        with open(rootfs, "wb") as out:
            write_tar(members, out, strip)
        repo, _, version_tag = tag.partition(":")
        changes = [f"ENV {env}" for env in _BASE_ENV] + ['CMD ["python3"]']
        try:
            result = client.api.import_image(
                src=str(rootfs), repository=repo, tag=version_tag, changes=changes
            )
        except docker.errors.APIError as e:
            raise ImageError(f"importing {tag} failed: {containers._one_line(e)}") from e
        if _local_image(client, tag) is None:
            raise ImageError(f"importing {tag} failed: {' '.join(str(result).split())[:500]}")
        size_mb = rootfs.stat().st_size / 1e6
    log.info("made %s from %s (%.0f MB) in %.1fs", tag, home, size_mb, time.monotonic() - started)
    return tag


# ---------------------------------------------------------------------------------------------
# Wheels and the relay image


def source_root() -> Path:
    """The repository this package runs from (the Dockerfile is not part of the package)."""
    root = Path(__file__).resolve().parents[2]
    if not (root / "deploy" / "Dockerfile").is_file() or not (root / "pyproject.toml").is_file():
        raise ImageError(
            f"no deploy/Dockerfile next to the relay package ({root}): relays in containers "
            "need a source checkout of relaynet (pip install -e .)"
        )
    return root


def requirements(pyproject: str) -> list[str]:
    """What the image's pip installs from the wheelhouse: the project's dependencies and
    its build requirements (pip builds the relay from source inside the image)."""
    data = tomllib.loads(pyproject)
    return [*data["project"]["dependencies"], *data["build-system"]["requires"]]


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "relaynet"


def ensure_wheels(root: Path, progress: Callable[[str], None] = lambda step: None) -> Path:
    """A directory of wheels for every requirement (step 2), made by this Python's pip and
    reused while pyproject.toml's requirements and the Python version stay the same."""
    wanted = requirements((root / "pyproject.toml").read_text())
    key = hashlib.sha256(
        "\0".join([RECIPE, sys.version, sys.platform, *wanted]).encode()
    ).hexdigest()[:16]
    wheels = _cache_dir() / "wheels" / key
    if wheels.is_dir():
        return wheels
    wheels.parent.mkdir(parents=True, exist_ok=True)
    progress(f"building wheels of {len(wanted)} requirements for the relay image (pip)")
    started = time.monotonic()
    with tempfile.TemporaryDirectory(dir=wheels.parent, prefix=f".{key}-") as tmp:
        cmd = [sys.executable, "-m", "pip", "wheel", "--quiet", "--disable-pip-version-check",
               "--wheel-dir", tmp, *wanted]  # fmt: skip
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise ImageError(f"pip wheel for the relay image failed: {e}") from e
        if proc.returncode != 0:
            errors = [ln for ln in proc.stderr.splitlines() if "ERROR" in ln or "No module" in ln]
            why = " | ".join(errors[-3:]) or " ".join(proc.stderr.split())[-300:]
            raise ImageError(
                "pip could not download the relay's dependencies as wheels for the image "
                f"({why}); check that "
                f"`{sys.executable} -m pip download anyio` works on this machine"
            )
        with contextlib.suppress(OSError):  # another process made the same set meanwhile
            os.rename(tmp, wheels)
    log.info("wheels for the relay image in %s (%.1fs)", wheels, time.monotonic() - started)
    return wheels


def context_files(root: Path, wheels: Path) -> list[tuple[str, Path]]:
    """(path in the build context, file) for the relay image: what the Dockerfile copies
    (sources without bytecode) and the wheels as deploy/wheels/."""
    files: list[tuple[str, Path]] = []
    for top in _CONTEXT_PATHS:
        path = root / top
        if path.is_file():
            files.append((top, path))
            continue
        for dirpath, dirs, names in os.walk(path):
            dirs[:] = sorted(d for d in dirs if d != "__pycache__" and not d.startswith("."))
            if Path(dirpath) == root / "deploy":
                dirs[:] = [d for d in dirs if d != "wheels"]
            for name in sorted(names):
                if not name.endswith((".pyc", ".pyo")) and not name.startswith("."):
                    full = Path(dirpath) / name
                    files.append((full.relative_to(root).as_posix(), full))
    files += [(f"deploy/wheels/{w.name}", w) for w in sorted(wheels.glob("*.whl"))]
    return files


def context_digest(files: Iterable[tuple[str, Path]], *extra: str) -> str:
    """A hash of the build context's paths, contents and exec bits."""
    digest = hashlib.sha256("\0".join((RECIPE, *extra)).encode())
    for arcname, path in files:
        digest.update(f"{arcname}\0{os.access(path, os.X_OK)}\0".encode())
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def _context_tar(files: Iterable[tuple[str, Path]], out: Any) -> None:
    with tarfile.open(fileobj=out, mode="w") as tar:
        for arcname, path in files:
            info = tar.gettarinfo(str(path), arcname)
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            with open(path, "rb") as f:
                tar.addfile(info, f)


def ensure_relay_image(
    *, use_official: bool = True, progress: Callable[[str], None] = lambda step: None
) -> str:
    """The tag of the relay image, built if it is not there yet (module docstring);
    ``progress(step)`` is told each slow step as it begins."""
    containers._configure_testcontainers()
    root = source_root()
    client = containers._client()
    try:
        progress("checking the relay image")
        base = ensure_base_image(client, use_official=use_official, progress=progress)
        base_id = client.images.get(base).id
        wheels = ensure_wheels(root, progress)
        files = context_files(root, wheels)
        tag = f"{RELAY_REPO}:{context_digest(files, base_id)[:16]}"
        if _local_image(client, tag) is not None:
            return tag
        progress(f"building {tag} (deploy/Dockerfile on {base})")
        started = time.monotonic()
        with tempfile.TemporaryFile() as context:
            _context_tar(files, context)
            context.seek(0)
            try:
                client.images.build(
                    fileobj=context,
                    custom_context=True,
                    dockerfile="deploy/Dockerfile",
                    tag=tag,
                    buildargs={
                        "BASE_IMAGE": base,
                        "PIP_NO_INDEX": "1",
                        "PIP_FIND_LINKS": "/src/deploy/wheels",
                    },
                    labels={_HASH_LABEL: tag.rsplit(":", 1)[1]},
                    network_mode="none",  # everything it installs is in deploy/wheels
                    rm=True,
                    forcerm=True,
                )
            except docker.errors.BuildError as e:
                lines = [str(x.get("stream") or x.get("error") or "").strip() for x in e.build_log]
                tail = " | ".join(line for line in lines if line)[-1500:]
                raise ImageError(f"building {tag} on {base} failed: {e.msg}: {tail}") from e
            except docker.errors.APIError as e:
                raise ImageError(f"building {tag} failed: {containers._one_line(e)}") from e
        log.info("built %s on %s in %.1fs", tag, base, time.monotonic() - started)
        _remove_superseded(client, tag)
        return tag
    finally:
        client.close()


def _remove_superseded(client: Any, keep: str) -> None:
    """Removes the relay images of earlier sources (unless a container still uses one) and
    the untagged build stages older than ten minutes (a build running now may need its own)."""
    for image in client.images.list(name=RELAY_REPO):
        for tag in image.tags:
            if tag != keep:
                with contextlib.suppress(docker.errors.APIError):  # in use: it stays
                    client.images.remove(tag)
    with contextlib.suppress(docker.errors.APIError):
        client.images.prune(
            filters={"dangling": True, "label": "relaynet.image=build-stage", "until": "10m"}
        )


# ---------------------------------------------------------------------------------------------
# A relay in a container


class RelayContainer(containers.ManagedContainer):
    """One relay process (``relaynet relay --config /config/<id>.toml``) in a container on the
    host network, its config file bind-mounted read-only, and ``files`` (the NATS password
    files the config names) each at its own path, read-only, so that the config's paths
    hold inside too.

    ``stop()``/``kill()`` keep the container; ``start()`` creates it the first time and
    starts the same one again afterwards. ``remove()`` deletes it. It carries the labels
    ``relaynet.simulate=<session>`` and ``org.testcontainers=true`` (testcontainers sets it),
    so ``containers.remove_leftovers(session)`` removes it with the session's NATS.
    """

    def __init__(
        self,
        relay_id: str,
        *,
        region: str,
        port: int,
        config: Path,
        image: str,
        session: str = containers.SESSION_ID,
        start_timeout_s: float = 30.0,
        files: Sequence[Path] = (),
    ) -> None:
        self.relay_id = relay_id
        self.files = [Path(f).absolute() for f in files]
        self.region = region
        self.port = port
        self.config = Path(config)
        self.image = image
        self.session = session
        self.start_timeout_s = start_timeout_s
        self.name = f"relaynet-{relay_id}-{uuid.uuid4().hex[:8]}"
        self._tc: DockerContainer | None = None

    @property
    def command(self) -> list[str]:
        return ["relay", "--config", f"/config/{self.config.name}"]

    def start(self) -> None:
        """Creates and starts the container (or starts it again); returns once the relay
        answers GET /v1/health, raises ContainerError with its last log lines otherwise."""
        containers._check_port_free(self.port, f"relay {self.relay_id}")
        if self._tc is None:
            containers._configure_testcontainers()
            tc = DockerContainer(self.image, name=self.name).with_command(self.command)
            tc.with_volume_mapping(
                str(self.config.resolve()), f"/config/{self.config.name}", mode="ro"
            )
            for path in self.files:
                tc.with_volume_mapping(str(path), str(path), mode="ro")
            labels = {
                containers.LABEL: self.session,
                f"{containers.LABEL}.region": self.region,
                f"{containers.LABEL}.relay": self.relay_id,
            }
            self._launch(tc, self.image, "host", labels)
        else:
            self._container().start()
        self._wait_ready()

    def stop(self, timeout_s: int = 10) -> None:
        """SIGTERM (the relay shuts down gracefully), SIGKILL after timeout_s."""
        if self._tc is not None and self.alive:
            self._container().stop(timeout=timeout_s)

    @property
    def alive(self) -> bool:
        if self._tc is None:
            return False
        try:
            return self.status() == "running"
        except docker.errors.NotFound:
            return False

    def logs(self, tail: int = 20) -> str:
        raw: bytes = self._container().logs(tail=tail)
        return raw.decode(errors="replace").rstrip()

    def _wait_ready(self) -> None:
        what = f"relay {self.relay_id} ({self.name}, {self.image})"
        health = f"http://127.0.0.1:{self.port}/v1/health"
        self._wait_http(health, what, self.start_timeout_s)

    def __repr__(self) -> str:
        return f"RelayContainer({self.relay_id!r}, port={self.port}, name={self.name!r})"
