"""Build the client-go peer (bench/peers/client-go) once per source version, like testbed.build.

Contract:

* `ensure_clientgo_peer()` returns the path of an executable built from the module's
  current sources. The cache key hashes go.mod, go.sum and every ``*.go`` file; the binary
  lives in ``<cache>/sniffer/bench/<key>/clientgo-peer`` (``<cache>`` as in
  `testbed.build.cache_root`). A present entry is used as is; it is never committed.
* An entry appears atomically (built in a scratch directory, then renamed); concurrent
  callers build at most once (a lock file). Failures raise `testbed.build.BuildError`.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from testbed.build import BuildError, cache_root

MODULE_DIR = Path(__file__).resolve().parent / "peers" / "client-go"
BINARY = "clientgo-peer"


def source_key(module_dir: Path = MODULE_DIR) -> str:
    """A short hash of everything that determines the binary."""
    digest = hashlib.sha256()
    for path in [module_dir / "go.mod", module_dir / "go.sum", *sorted(module_dir.rglob("*.go"))]:
        digest.update(str(path.relative_to(module_dir)).encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def ensure_clientgo_peer() -> Path:
    root = cache_root().parent / "bench"
    key = source_key(MODULE_DIR)
    binary = root / key / BINARY
    if binary.is_file() and os.access(binary, os.X_OK):
        return binary
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f"{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if binary.is_file():
            return binary
        go = shutil.which("go")
        if go is None:
            raise BuildError("the Go toolchain ('go') is needed to build the client-go peer once")
        scratch = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=root))
        try:
            proc = subprocess.run(
                [go, "build", "-trimpath", "-o", str(scratch / BINARY), "."],
                cwd=MODULE_DIR, env={**os.environ, "CGO_ENABLED": "0"},
                capture_output=True, text=True, check=False)
            if proc.returncode != 0:
                raise BuildError(f"building the client-go peer failed:\n{proc.stdout}"
                                 f"{proc.stderr}")
            scratch.rename(root / key)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    return binary
