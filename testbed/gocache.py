"""Go programs built once per source version into the user's cache, and found again instantly.

The testbed's kube-apiserver (`testbed.build`) and its Jaeger (`testbed.jaeger`) take minutes
to build cold (about 4 and 15 on 2 cores), so each is built once per version of its sources.

Contract:

* `cache_root()` is ``<cache>/sniffer/testbed``, where ``<cache>`` is ``$SNIFFER_CACHE``, else
  ``$XDG_CACHE_HOME``, else ``~/.cache``.
* `source_key` is a pure function of its inputs: the same salt, relative paths and contents
  give the same 16 hex digits on every machine. An entry is found again by its key, so the
  way it is computed must never change (that would rebuild every cache).
* `ensure_entry(entry, complete, build)` returns only when ``complete(entry)`` holds. A complete
  entry is used as is, without Go. Otherwise ``build(scratch)`` fills a scratch directory
  beside the entry, which is then renamed to the entry, so a reader never sees half a build.
  Concurrent callers for the same entry build at most once: the others wait on the lock file
  ``<entry>.lock`` and then find the result.
* `find_go` and `go_build` raise `BuildError`, carrying the reason and Go's output, when the
  toolchain is missing or a build fails; a build runs with cgo off and ``-trimpath``.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path


class BuildError(RuntimeError):
    """The Go build failed or cannot run; the message carries the reason and Go's output."""


def cache_root() -> Path:
    """The directory holding one subdirectory per cache entry."""
    base = os.environ.get("SNIFFER_CACHE") or os.environ.get("XDG_CACHE_HOME")
    return (Path(base) if base else Path.home() / ".cache") / "sniffer" / "testbed"


def source_key(module_dir: Path, sources: Iterable[Path], *, salt: bytes = b"") -> str:
    """A short hash of ``salt`` and of each source's path (relative to ``module_dir``) and
    content, in the order given."""
    digest = hashlib.sha256(salt)
    for path in sources:
        # The relative path is hashed too, so moving code between files changes the key.
        digest.update(str(path.relative_to(module_dir)).encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def executable(path: Path) -> bool:
    """True iff ``path`` is a file this process may run."""
    return path.is_file() and os.access(path, os.X_OK)


def ensure_entry(entry: Path, *, complete: Callable[[Path], bool],
                 build: Callable[[Path], None],
                 waiting: Callable[[Path], None] | None = None) -> Path:
    """Return ``entry`` once it is complete, building it first if needed.

    ``build(scratch)`` must leave in ``scratch`` what ``complete`` looks for in the entry,
    or raise. ``waiting(lock_file)`` is told when another process holds the build lock.
    Safe to call from several processes at once.
    """
    if complete(entry):
        return entry
    root = entry.parent
    root.mkdir(parents=True, exist_ok=True)
    lock_path = root / f"{entry.name}.lock"
    with open(lock_path, "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if waiting is not None:
                waiting(lock_path)
            fcntl.flock(lock, fcntl.LOCK_EX)
        # Someone else may have finished the build while we waited for the lock.
        if complete(entry):
            return entry
        scratch = Path(tempfile.mkdtemp(prefix=f".{entry.name}-", dir=root))
        try:
            build(scratch)
            if entry.exists():  # an incomplete leftover; the lock says no one is using it
                shutil.rmtree(entry)
            scratch.rename(entry)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    return entry


def find_go(needed_for: str) -> str:
    """The ``go`` command's path; `BuildError` saying it is needed ``needed_for`` if absent."""
    go = shutil.which("go")
    if go is None:
        raise BuildError(f"the Go toolchain ('go') is not on PATH; it is needed {needed_for}")
    return go


def go_build(go: str, args: Sequence[str], *, module_dir: Path) -> None:
    """Run ``go build -trimpath <args>`` in ``module_dir``; `BuildError` if it fails."""
    cmd = [go, "build", "-trimpath", *args]
    proc = subprocess.run(cmd, cwd=module_dir, env={**os.environ, "CGO_ENABLED": "0"},
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise BuildError(f"`{' '.join(cmd)}` in {module_dir} failed with exit code "
                         f"{proc.returncode}:\n{proc.stdout}{proc.stderr}")
