"""Build the testbed's Go binaries once per source version, and find them again instantly.

Contract:

* `ensure_binaries()` returns a `Binaries` whose two paths exist and are executable:
  ``kube-testbed`` (embedded etcd + kube-apiserver) and ``kubectl``, both built from
  ``testbed/apiserver`` at the Kubernetes version its go.mod requires.
* The cache key is a hash of go.mod, go.sum, every ``*.go`` file of that module and the
  linker flags; the
  binaries live in ``<cache>/sniffer/testbed/<key>/bin/`` where ``<cache>`` is
  ``$SNIFFER_CACHE``, else ``$XDG_CACHE_HOME``, else ``~/.cache``. A present entry is used as
  is (no Go toolchain needed); changing any source selects a new entry.
* An entry appears atomically (built in a scratch directory, then renamed), so a reader never
  sees half a build. Concurrent callers for the same key build at most once: the others wait
  on a lock file and then find the result (`testbed.gocache`, shared with `testbed.jaeger`).
* A cold build needs Go (>= the module's ``go`` line) and the Go module proxy, and takes
  minutes; progress goes to stderr. Build failures raise `BuildError` carrying Go's output.

CLI: ``python -m testbed.build`` builds if needed and prints the two paths.
"""

from __future__ import annotations

import argparse
import functools
import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from testbed import gocache

# BuildError and cache_root are imported from here too (bench, tests).
from testbed.gocache import BuildError, cache_root, ensure_entry, executable, find_go, go_build

MODULE_DIR = Path(__file__).resolve().parent / "apiserver"
APISERVER_NAME = "kube-testbed"
KUBECTL_NAME = "kubectl"


@dataclass(frozen=True)
class Binaries:
    """Paths of the built testbed programs."""

    apiserver: Path
    """kube-testbed: etcd and kube-apiserver in one process (see testbed/apiserver/main.go)."""
    kubectl: Path
    """Upstream kubectl at the same Kubernetes version."""


def source_key(module_dir: Path = MODULE_DIR) -> str:
    """A short hash of everything that determines the binaries' content."""
    sources = [module_dir / "go.mod", module_dir / "go.sum", *sorted(module_dir.rglob("*.go"))]
    return gocache.source_key(module_dir, sources,
                              salt=_ldflags(kubernetes_version(module_dir)).encode() + b"\0")


def kubernetes_version(module_dir: Path = MODULE_DIR) -> str:
    """The k8s.io/kubernetes version go.mod requires, e.g. ``v1.36.3``."""
    match = re.search(r"^\s*k8s\.io/kubernetes\s+(v\d+\.\d+\.\d+)\s*$",
                      (module_dir / "go.mod").read_text(), re.MULTILINE)
    if not match:
        raise BuildError(f"no k8s.io/kubernetes requirement in {module_dir / 'go.mod'}")
    return match.group(1)


def _ldflags(version: str) -> str:
    # Without these, /version and `kubectl version` report v0.0.0 (the server still uses its
    # built-in version for compatibility decisions, so only what is reported changes).
    major, minor = version.lstrip("v").split(".")[:2]
    flags = []
    for pkg in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
        flags += [f"-X {pkg}.gitVersion={version}", f"-X {pkg}.gitMajor={major}",
                  f"-X {pkg}.gitMinor={minor}", f"-X {pkg}.gitTreeState=clean"]
    return " ".join(flags)


def _binaries_in(entry: Path) -> Binaries:
    return Binaries(apiserver=entry / "bin" / APISERVER_NAME, kubectl=entry / "bin" / KUBECTL_NAME)


def _complete(entry: Path) -> bool:
    b = _binaries_in(entry)
    return executable(b.apiserver) and executable(b.kubectl)


def _say(message: str) -> None:
    print(f"testbed.build: {message}", file=sys.stderr, flush=True)


def ensure_binaries(*, quiet: bool = False) -> Binaries:
    """Return the binaries for the current sources, building them first if needed.

    Safe to call from several processes at once. Raises `BuildError` if a build is needed
    and fails.
    """
    entry = cache_root() / source_key()
    build = functools.partial(_build, entry=entry, quiet=quiet)
    return _binaries_in(ensure_entry(entry, complete=_complete, build=build,
                                     waiting=None if quiet else _say_waiting))


def _say_waiting(lock: Path) -> None:
    _say(f"another process is building; waiting for {lock}")


def _build(scratch: Path, *, entry: Path, quiet: bool) -> None:
    go = find_go(f"to build the testbed once (see {MODULE_DIR / 'go.mod'} for the version)")
    version = kubernetes_version()
    (scratch / "bin").mkdir()
    if not quiet:
        _say(f"building kube-apiserver {version}, etcd and kubectl "
             "(first time: several minutes, more on 2 cores)…")
        _say(f"  into {entry}")
    started = time.monotonic()
    # Both programs in one invocation share the compile of their common packages.
    go_build(go, ["-ldflags", _ldflags(version), "-o", str(scratch / "bin") + os.sep,
                  ".", "./cmd/kubectl"], module_dir=MODULE_DIR)
    # `go build -o dir/` names a main package's binary after its directory.
    (scratch / "bin" / MODULE_DIR.name).rename(scratch / "bin" / APISERVER_NAME)
    if not quiet:
        _say(f"built in {time.monotonic() - started:.0f}s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m testbed.build", description=(
        "Build the testbed's kube-apiserver and kubectl if the cache lacks them; print paths."))
    parser.add_argument("--quiet", action="store_true", help="no progress messages")
    args = parser.parse_args(argv)
    try:
        binaries = ensure_binaries(quiet=args.quiet)
    except BuildError as e:
        print(f"testbed.build: {e}", file=sys.stderr)
        return 1
    print(f"{APISERVER_NAME}\t{binaries.apiserver}")
    print(f"{KUBECTL_NAME}\t{binaries.kubectl}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
