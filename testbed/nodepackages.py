"""The Debian packages a real node needs, installed by the project itself only when missing.

Contract:

* `REQUIRED` maps each package to a file it provides that the node uses: runc
  (``/usr/sbin/runc``, containerd's runtime), containernetworking-plugins (``/usr/lib/cni``,
  the pods' network) and busybox-static (``/bin/busybox``, the workload image's only file).
* `missing()` lists the packages whose file is absent; it does no I/O beyond ``stat``.
* `ensure()` returns at once when nothing is missing. Otherwise it runs ``apt-get update``
  once and then ``apt-get install -y`` of exactly the missing packages (the testbed runs as
  root on this kind of machine; see README.md), and raises `PackageError` with apt's output
  if either fails or a file is still absent afterwards.

CLI: ``python -m testbed.nodepackages`` installs what is missing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

REQUIRED: dict[str, Path] = {
    "runc": Path("/usr/sbin/runc"),
    "containernetworking-plugins": Path("/usr/lib/cni/bridge"),
    "busybox-static": Path("/bin/busybox"),
}
RUNC = REQUIRED["runc"]
CNI_BIN_DIR = REQUIRED["containernetworking-plugins"].parent
BUSYBOX = REQUIRED["busybox-static"]


class PackageError(RuntimeError):
    """A package could not be installed; the message carries apt's output."""


def missing() -> list[str]:
    """The required packages whose file is absent, in `REQUIRED` order."""
    return [name for name, path in REQUIRED.items() if not path.exists()]


def _apt(*args: str) -> None:
    apt = shutil.which("apt-get")
    if apt is None:
        raise PackageError("apt-get not found: the real node needs a Debian-like machine")
    cmd = [apt, *args]
    proc = subprocess.run(cmd, env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise PackageError(f"`{' '.join(cmd)}` failed with exit code {proc.returncode}:\n"
                           f"{proc.stdout[-4000:]}{proc.stderr[-4000:]}")


def ensure(*, quiet: bool = False) -> None:
    """Install the missing packages (apt-get update once, then install); see the contract."""
    ensure_packages(REQUIRED, quiet=quiet)


def ensure_packages(required: Mapping[str, Path], *, quiet: bool = False) -> None:
    """`ensure` for another package → file map (the image builder's tools use it too)."""
    wanted = [name for name, path in required.items() if not path.exists()]
    if not wanted:
        return
    if not quiet:
        print(f"testbed.nodepackages: installing {' '.join(wanted)} with apt-get",
              file=sys.stderr, flush=True)
    _apt("update")
    _apt("install", "-y", "--no-install-recommends", *wanted)
    still = [name for name, path in required.items() if not path.exists()]
    if still:
        raise PackageError(f"still missing after apt-get install: {' '.join(still)}")


def main() -> int:
    try:
        ensure()
    except PackageError as e:
        print(f"testbed.nodepackages: {e}", file=sys.stderr)
        return 1
    for name, path in REQUIRED.items():
        print(f"{name}\t{path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
