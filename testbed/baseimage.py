"""A local stand-in for the Dockerfile's pinned ``python:3.11-slim-bookworm`` base, made
from Debian's own packages because no container registry is reachable here.

Contract:

* `ensure_base()` returns a `BaseImage`: an OCI archive (``oci-archive:`` for buildah's
  ``FROM``) of a Debian `RELEASE` root filesystem made by ``debootstrap --variant=minbase``
  with Debian's python3.11 (the pinned base's Debian release and Python minor: bookworm,
  3.11), venv and pip wheels, CA certificates, netbase and tzdata.
* It looks like the slim image where the Dockerfile relies on it: ``python`` is on ``PATH``
  (``/usr/local/bin/python`` → ``/usr/bin/python3.11``), ``LANG=C.UTF-8``, and apt's
  caches, documentation and locales are removed.
* The archive lives in a `testbed.gocache` entry keyed by everything that decides its
  content (release, mirror, packages, the trimming and config steps, this module's
  `RECIPE_VERSION`): made once, atomically, at most once across concurrent callers; a
  present entry needs no network. Failures raise `ImageBuildError` with the tool's output.
* Needs root (debootstrap, buildah), the Debian mirror and the ``debootstrap`` and
  ``buildah`` packages, which it installs with apt when missing (`TOOLS`).

CLI: ``python -m testbed.baseimage`` makes the base if needed and prints its path.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from testbed.gocache import cache_root, ensure_entry
from testbed.nodepackages import ensure_packages

RELEASE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
PACKAGES = ("python3.11", "python3.11-venv",
            # debootstrap resolves only real packages: python3.11-venv's dependencies,
            # one of them virtual (python3.11-distutils, provided by python3-distutils).
            "python3-distutils", "python3-lib2to3", "python3-pip-whl", "python3-setuptools-whl",
            "ca-certificates", "netbase", "tzdata")
# Removed after debootstrap, as the slim images do: they are never read at run time.
TRIM = ("var/cache/apt/archives", "var/lib/apt/lists", "usr/share/doc", "usr/share/man",
        "usr/share/info", "usr/share/locale", "var/log")
ENV = ("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C.UTF-8")
NAME = "sniffer.dev/testbed/python-base"
RECIPE_VERSION = 1
"""Bump when a step below changes in a way the key's other inputs do not show."""
TOOLS = {"debootstrap": Path("/usr/sbin/debootstrap"), "buildah": Path("/usr/bin/buildah")}
ARCHIVE = "base.oci.tar"


class ImageBuildError(RuntimeError):
    """An image could not be made; the message carries the failing tool's output."""


@dataclass(frozen=True)
class BaseImage:
    """The local base, ready for ``buildah bud --build-arg BASE=<ref>``."""

    archive: Path
    name: str

    @property
    def ref(self) -> str:
        """The reference buildah's ``FROM`` reads: the OCI archive and its image name."""
        return f"oci-archive:{self.archive}:{self.name}"


def base_key() -> str:
    """A short hash of every input of the base's content (see the contract)."""
    text = json.dumps({"release": RELEASE, "mirror": MIRROR, "packages": PACKAGES,
                       "trim": TRIM, "env": ENV, "recipe": RECIPE_VERSION}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _say(message: str) -> None:
    print(f"testbed.baseimage: {message}", file=sys.stderr, flush=True)


def run(argv: Sequence[str | Path], *, what: str, cwd: Path | None = None,
        env: dict[str, str] | None = None) -> str:
    """Run a tool; `ImageBuildError` with its output's tail if it fails. Returns stdout."""
    proc = subprocess.run([str(a) for a in argv], cwd=cwd, env=env, capture_output=True,
                          text=True, check=False)
    if proc.returncode != 0:
        raise ImageBuildError(f"{what}: `{' '.join(map(str, argv))}` exited "
                              f"{proc.returncode}:\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}")
    return proc.stdout


def buildah(storage: Path, *args: str | Path, what: str, cwd: Path | None = None) -> str:
    """Run buildah with a private storage under ``storage`` (nothing in /var/lib/containers).

    vfs, not overlay: it works on any filesystem and leaves no mounts behind to undo."""
    return run(["buildah", "--root", storage / "root", "--runroot", storage / "run",
                "--storage-driver", "vfs", *args], what=what, cwd=cwd)


def _make_base(scratch: Path, *, quiet: bool) -> None:
    ensure_packages(TOOLS, quiet=quiet)
    rootfs = scratch / "rootfs"
    started = time.monotonic()
    if not quiet:
        _say(f"debootstrap {RELEASE} with {', '.join(PACKAGES)} (first time: about a minute)…")
    run(["debootstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}", RELEASE,
         rootfs, MIRROR], what="debootstrap")
    for rel in TRIM:
        target = rootfs / rel
        if target.is_dir():
            shutil.rmtree(target)
            target.mkdir()
    (rootfs / "usr/local/bin").mkdir(parents=True, exist_ok=True)
    (rootfs / "usr/local/bin/python").symlink_to("/usr/bin/python3.11")
    storage = scratch / "storage"
    try:
        ctr = buildah(storage, "from", "scratch", what="buildah from scratch").strip()
        tar = scratch / "rootfs.tar"
        run(["tar", "--numeric-owner", "-C", rootfs, "-cf", tar, "."], what="tar the rootfs")
        buildah(storage, "add", ctr, tar, "/", what="buildah add rootfs")
        config = [a for env in ENV for a in ("--env", env)]
        buildah(storage, "config", *config, "--cmd", "python3", ctr, what="buildah config")
        buildah(storage, "commit", "--rm", ctr, f"{NAME}:{base_key()}", what="buildah commit")
        buildah(storage, "push", f"{NAME}:{base_key()}",
                f"oci-archive:{scratch / ARCHIVE}:{NAME}:{base_key()}", what="buildah push")
    finally:
        shutil.rmtree(storage, ignore_errors=True)
        shutil.rmtree(rootfs, ignore_errors=True)
        (scratch / "rootfs.tar").unlink(missing_ok=True)
    (scratch / "made.json").write_text(json.dumps(
        {"seconds": round(time.monotonic() - started, 1),
         "bytes": (scratch / ARCHIVE).stat().st_size}))
    if not quiet:
        _say(f"made in {time.monotonic() - started:.0f}s")


def ensure_base(*, quiet: bool = False) -> BaseImage:
    """Return the local base image, making it first if the cache lacks it."""
    entry = cache_root() / f"base-{base_key()}"

    def complete(e: Path) -> bool:
        return (e / ARCHIVE).is_file() and (e / "made.json").is_file()

    def build(scratch: Path) -> None:
        _make_base(scratch, quiet=quiet)

    ensure_entry(entry, complete=complete, build=build,
                 waiting=None if quiet else lambda lock: _say(f"waiting for {lock}"))
    return BaseImage(archive=entry / ARCHIVE, name=f"{NAME}:{base_key()}")


def main() -> int:
    if os.geteuid() != 0:
        print("testbed.baseimage: needs root (debootstrap)", file=sys.stderr)
        return 1
    try:
        base = ensure_base()
    except ImageBuildError as e:
        print(f"testbed.baseimage: {e}", file=sys.stderr)
        return 1
    print(base.ref)
    return 0


if __name__ == "__main__":
    sys.exit(main())
