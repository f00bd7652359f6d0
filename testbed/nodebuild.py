"""Build the real node's programs once per source version, and find them again instantly.

Contract:

* `ensure_kube()` returns a `KubeBinaries` whose three paths exist and are executable:
  kubelet, kube-controller-manager and kube-scheduler, built from ``testbed/node`` (the same
  k8s.io/kubernetes version and replaces as ``testbed/apiserver``) with the same ``-ldflags``
  version stamps as `testbed.build`.
* `ensure_containerd()` returns a `ContainerdBinaries`: containerd, ctr and
  containerd-shim-runc-v2 at `CONTAINERD_VERSION`, installed from the Go module proxy with the
  tags that drop the btrfs/zfs/devmapper/aufs snapshotters (no C headers needed).
* Both live in ``testbed.gocache`` entries (``<cache>/sniffer/testbed/<key>/bin``): built once,
  atomically, at most once across concurrent callers; a present entry needs no Go toolchain.
  The kube key hashes go.mod, go.sum, every ``*.go`` under ``testbed/node`` and the linker
  flags; the containerd key hashes the version and the tags.
* Build failures raise `BuildError` carrying Go's output. Progress goes to stderr.

CLI: ``python -m testbed.nodebuild`` builds what is missing and prints the paths.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from testbed import build, gocache
from testbed.gocache import BuildError, cache_root, ensure_entry, executable, find_go, go_build

MODULE_DIR = Path(__file__).resolve().parent / "node"
KUBE_PROGRAMS = ("kubelet", "kube-controller-manager", "kube-scheduler")
CONTAINERD_VERSION = "v2.4.2"
CONTAINERD_MODULE = "github.com/containerd/containerd/v2"
CONTAINERD_PROGRAMS = ("containerd", "ctr", "containerd-shim-runc-v2")
CONTAINERD_TAGS = "no_btrfs no_zfs no_devmapper no_aufs"


@dataclass(frozen=True)
class KubeBinaries:
    """Paths of the node's Kubernetes programs."""

    kubelet: Path
    controller_manager: Path
    scheduler: Path


@dataclass(frozen=True)
class ContainerdBinaries:
    """Paths of containerd's programs; ``bin_dir`` goes first on containerd's PATH so it
    finds its own shim."""

    bin_dir: Path
    containerd: Path
    ctr: Path


def kube_key() -> str:
    """A short hash of everything that determines the kube binaries' content."""
    version = build.kubernetes_version(MODULE_DIR)
    sources = [MODULE_DIR / "go.mod", MODULE_DIR / "go.sum", *sorted(MODULE_DIR.rglob("*.go"))]
    return gocache.source_key(MODULE_DIR, sources,
                              salt=b"node\0" + build._ldflags(version).encode() + b"\0")


def containerd_key() -> str:
    """A short hash of the containerd version and build tags."""
    text = f"containerd\0{CONTAINERD_MODULE}@{CONTAINERD_VERSION}\0{CONTAINERD_TAGS}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _say(message: str) -> None:
    print(f"testbed.nodebuild: {message}", file=sys.stderr, flush=True)


def _say_waiting(lock: Path) -> None:
    _say(f"another process is building; waiting for {lock}")


def _kube_in(entry: Path) -> KubeBinaries:
    b = entry / "bin"
    return KubeBinaries(kubelet=b / "kubelet", controller_manager=b / "kube-controller-manager",
                        scheduler=b / "kube-scheduler")


def _kube_complete(entry: Path) -> bool:
    return all(executable(entry / "bin" / name) for name in KUBE_PROGRAMS)


def _build_kube(scratch: Path, *, quiet: bool) -> None:
    go = find_go(f"to build the real node once (see {MODULE_DIR / 'go.mod'})")
    version = build.kubernetes_version(MODULE_DIR)
    (scratch / "bin").mkdir()
    if not quiet:
        _say(f"building kubelet, kube-controller-manager, kube-scheduler {version} "
             "(first time: about 6 minutes on 2 cores)…")
    started = time.monotonic()
    # One invocation shares the compile of the packages the three have in common.
    go_build(go, ["-ldflags", build._ldflags(version), "-o", str(scratch / "bin") + os.sep,
                  *(f"./cmd/{name}" for name in KUBE_PROGRAMS)], module_dir=MODULE_DIR)
    if not quiet:
        _say(f"built in {time.monotonic() - started:.0f}s")


def ensure_kube(*, quiet: bool = False) -> KubeBinaries:
    """Return the kube binaries for the current sources, building them first if needed."""
    entry = cache_root() / kube_key()
    return _kube_in(ensure_entry(entry, complete=_kube_complete,
                                 build=functools.partial(_build_kube, quiet=quiet),
                                 waiting=None if quiet else _say_waiting))


def _containerd_in(entry: Path) -> ContainerdBinaries:
    b = entry / "bin"
    return ContainerdBinaries(bin_dir=b, containerd=b / "containerd", ctr=b / "ctr")


def _containerd_complete(entry: Path) -> bool:
    return all(executable(entry / "bin" / name) for name in CONTAINERD_PROGRAMS)


def _build_containerd(scratch: Path, *, quiet: bool) -> None:
    go = find_go("to build containerd once")
    (scratch / "bin").mkdir()
    if not quiet:
        _say(f"installing containerd {CONTAINERD_VERSION} from the module proxy "
             "(first time: about 2 minutes)…")
    started = time.monotonic()
    cmd = [go, "install", "-trimpath", "-tags", CONTAINERD_TAGS,
           *(f"{CONTAINERD_MODULE}/cmd/{name}@{CONTAINERD_VERSION}"
             for name in CONTAINERD_PROGRAMS)]
    env = {**os.environ, "CGO_ENABLED": "0", "GOBIN": str(scratch / "bin")}
    proc = subprocess.run(cmd, cwd=scratch, env=env, capture_output=True, text=True,
                          check=False)
    if proc.returncode != 0:
        raise BuildError(f"`{' '.join(cmd)}` failed with exit code {proc.returncode}:\n"
                         f"{proc.stdout}{proc.stderr}")
    if not quiet:
        _say(f"installed in {time.monotonic() - started:.0f}s")


def ensure_containerd(*, quiet: bool = False) -> ContainerdBinaries:
    """Return containerd's binaries, installing them from the module proxy if needed."""
    entry = cache_root() / containerd_key()
    return _containerd_in(ensure_entry(entry, complete=_containerd_complete,
                                       build=functools.partial(_build_containerd, quiet=quiet),
                                       waiting=None if quiet else _say_waiting))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m testbed.nodebuild", description=(
        "Build the real node's kubelet, controller-manager, scheduler and containerd if the "
        "cache lacks them; print their paths."))
    parser.add_argument("--quiet", action="store_true", help="no progress messages")
    args = parser.parse_args(argv)
    try:
        kube = ensure_kube(quiet=args.quiet)
        ctrd = ensure_containerd(quiet=args.quiet)
    except BuildError as e:
        print(f"testbed.nodebuild: {e}", file=sys.stderr)
        return 1
    for name, path in (("kubelet", kube.kubelet),
                       ("kube-controller-manager", kube.controller_manager),
                       ("kube-scheduler", kube.scheduler),
                       ("containerd", ctrd.containerd), ("ctr", ctrd.ctr)):
        print(f"{name}\t{path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
