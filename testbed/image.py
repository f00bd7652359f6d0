"""Sniffer's own image, built from the repository's Dockerfile with buildah (no Docker
engine, no daemon, no registry), cached, and imported into the real node's containerd.

Contract:

* `ensure_image()` returns a `SnifferImage`: an OCI archive of ``buildah bud`` run on the
  Dockerfile with ``--build-arg BASE=`` the local base (`testbed.baseimage`), tagged
  `NAME`. Everything else is the Dockerfile's own: the hash-locked dependencies, the
  wheel, UID 65532, the entrypoint.
* The build context is exactly what ``.dockerignore`` admits (its ``!`` lines), copied to a
  scratch folder, so nothing else in the working tree (a venv, .testbed/, caches) reaches
  the image or its key.
* The archive lives in a `testbed.gocache` entry keyed by the base's key, the Dockerfile,
  .dockerignore and every file of the context (paths and contents): built once per
  content, atomically, at most once across concurrent callers. A warm call only hashes the
  context (well under a second). ``made.json`` beside it records the build's seconds and
  the image's size (compressed archive and unpacked layers).
* `import_into(ctr, address)` imports the archive into containerd's ``k8s.io`` namespace as
  `NAME`; pods use it with ``imagePullPolicy: Never`` (kustomize/overlays/testbed). A
  re-import of another build under the same name replaces it.
* Failures raise `testbed.baseimage.ImageBuildError` with buildah's output.

CLI: ``python -m testbed.image`` builds if needed and prints the archive and its sizes.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from testbed import baseimage
from testbed.baseimage import ImageBuildError, buildah, run
from testbed.gocache import cache_root, ensure_entry

REPO = Path(__file__).resolve().parent.parent
NAME = "sniffer.dev/testbed/sniffer:testbed"
"""The name the testbed overlay's `images:` entry gives the containers' image."""
ARCHIVE = "sniffer.oci.tar"
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
BUILD_CA_PATH = "/run/sniffer-build-ca.crt"
_SKIP = ("__pycache__", "*.pyc")


@dataclass(frozen=True)
class SnifferImage:
    """A built image and what its build measured."""

    archive: Path
    name: str
    key: str
    made: dict[str, Any]
    """``seconds`` (the build), ``archive_bytes``, ``unpacked_bytes``, ``base_seconds``."""


def context_files(repo: Path = REPO) -> list[Path]:
    """The files ``.dockerignore`` admits, sorted; its first rule must be ``*``."""
    lines = [ln.strip() for ln in (repo / ".dockerignore").read_text().splitlines()
             if ln.strip() and not ln.strip().startswith("#")]
    if lines[0] != "*":
        raise ImageBuildError(".dockerignore must be an allow-list starting with '*'")
    files: list[Path] = []
    for entry in (ln[1:].rstrip("/") for ln in lines if ln.startswith("!")):
        source = repo / entry
        if source.is_dir():
            files += [p for p in source.rglob("*") if p.is_file()
                      and "__pycache__" not in p.parts and p.suffix != ".pyc"]
        elif source.is_file():
            files.append(source)
    return sorted(files)


def image_key(repo: Path = REPO) -> str:
    """A short hash of the base and of everything the build reads (see the contract)."""
    digest = hashlib.sha256(f"image\0{baseimage.base_key()}\0{NAME}\0".encode())
    for path in [repo / "Dockerfile", repo / ".dockerignore", *context_files(repo)]:
        digest.update(str(path.relative_to(repo)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def _say(message: str) -> None:
    print(f"testbed.image: {message}", file=sys.stderr, flush=True)


def _build(scratch: Path, *, repo: Path, quiet: bool) -> None:
    base = baseimage.ensure_base(quiet=quiet)
    context = scratch / "context"
    for path in [repo / "Dockerfile", repo / ".dockerignore", *context_files(repo)]:
        target = context / path.relative_to(repo)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)
    storage = scratch / "storage"
    if not quiet:
        _say("buildah bud of the Dockerfile (first time: a few minutes; pip downloads the "
             "locked wheels)…")
    started = time.monotonic()
    try:
        # chroot isolation: the RUN steps need no runc, network namespace or daemon, and
        # pip reaches the package index over the host's network.
        buildah(storage, "bud", "--isolation", "chroot", "--layers=false", "--pull=never",
                *_trust_mounts(scratch),
                "--build-arg", f"BASE={base.ref}", "-f", context / "Dockerfile",
                "-t", NAME, context, what="buildah bud")
        size = buildah(storage, "inspect", "--type", "image", "--format",
                       "{{range .OCIv1.RootFS.DiffIDs}}{{.}} {{end}}", NAME,
                       what="buildah inspect")
        unpacked = _unpacked_bytes(storage, size.split())
        buildah(storage, "push", NAME, f"oci-archive:{scratch / ARCHIVE}:{NAME}",
                what="buildah push")
        seconds = time.monotonic() - started  # bud and push: what a warm cache saves
    finally:
        shutil.rmtree(storage, ignore_errors=True)
        shutil.rmtree(context, ignore_errors=True)
    base_made = json.loads((base.archive.parent / "made.json").read_text())
    (scratch / "made.json").write_text(json.dumps({
        "seconds": round(seconds, 1), "archive_bytes": (scratch / ARCHIVE).stat().st_size,
        "unpacked_bytes": unpacked, "base_seconds": base_made["seconds"],
        "base_archive_bytes": base_made["bytes"]}, indent=2))
    if not quiet:
        _say(f"built in {seconds:.0f}s")


def _trust_mounts(scratch: Path) -> list[str]:
    """Volumes that let the RUN steps' pip trust what this machine's pip trusts.

    This machine reaches the package index through a TLS-inspecting proxy whose CA is in
    the host's bundle only. The bundle and a pip.conf naming it are mounted for the RUN
    steps (``-v``), which never commits them: the image keeps Debian's own CA set."""
    bundle = Path(os.environ.get("PIP_CERT") or HOST_CA_BUNDLE)
    if not bundle.is_file():
        return []
    conf = scratch / "pip.conf"
    conf.write_text(f"[global]\ncert = {BUILD_CA_PATH}\n")
    return ["-v", f"{bundle}:{BUILD_CA_PATH}:ro", "-v", f"{conf}:/etc/pip.conf:ro"]


def _unpacked_bytes(storage: Path, diff_ids: list[str]) -> int:
    """Sum of the image's uncompressed layers, as vfs stores them."""
    layers = json.loads((storage / "root" / "vfs-layers" / "layers.json").read_text())
    sizes = {lay.get("diff-digest"): int(lay.get("diff-size", 0)) for lay in layers}
    return sum(sizes.get(d, 0) for d in diff_ids)


def ensure_image(*, repo: Path = REPO, quiet: bool = False) -> SnifferImage:
    """Return the image for the current sources, building it first if the cache lacks it."""
    key = image_key(repo)
    entry = cache_root() / f"image-{key}"

    def complete(e: Path) -> bool:
        return (e / ARCHIVE).is_file() and (e / "made.json").is_file()

    def build(scratch: Path) -> None:
        _build(scratch, repo=repo, quiet=quiet)

    ensure_entry(entry, complete=complete, build=build,
                 waiting=None if quiet else lambda lock: _say(f"waiting for {lock}"))
    return SnifferImage(archive=entry / ARCHIVE, name=NAME, key=key,
                        made=json.loads((entry / "made.json").read_text()))


def import_into(image: SnifferImage, ctr: Path, address: Path) -> None:
    """Import ``image`` into the containerd at ``address`` (namespace k8s.io) as its name."""
    run([ctr, "--address", address, "-n", "k8s.io", "images", "import",
         image.archive], what=f"ctr images import {image.name}")


def main() -> int:
    try:
        image = ensure_image()
    except ImageBuildError as e:
        print(f"testbed.image: {e}", file=sys.stderr)
        return 1
    print(f"{image.name}\t{image.archive}")
    print(json.dumps(image.made))
    return 0


if __name__ == "__main__":
    sys.exit(main())
