"""The real node's two images, written as OCI layout tars without any registry.

Contract:

* `workload_image(busybox)` and `pause_image(busybox)` return an `Image`: a reference name
  and the bytes of an OCI image layout tar (``oci-layout``, ``index.json``, ``blobs/sha256``)
  holding one manifest, one config and one gzip layer. The layer holds Debian's static
  busybox at ``/bin/busybox`` and a link for each applet the tests use, so ``sh``, ``sleep``,
  ``cat`` etc. resolve on ``PATH``.
* The bytes are a pure function of the busybox file's content and the name: every field
  that could vary (mtimes, owners, gzip header) is fixed. The name's tag is a hash of the
  content, so a changed busybox gives a new name and never a stale image of the same name.
* The pause image blocks until SIGTERM or SIGINT and then exits 0: a pause process that
  exits at once breaks every sandbox ("failed to get bootstrap params of sandbox").
* Both index entries carry ``io.containerd.image.name`` and
  ``org.opencontainers.image.ref.name`` set to the full reference, so
  ``ctr -n k8s.io images import`` registers exactly `Image.name` (the name containerd's
  ``pinned_images.sandbox`` must equal).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import platform
import tarfile
from dataclasses import dataclass
from pathlib import Path

REPOSITORY = "sniffer.dev/testbed"
APPLETS = ("sh", "sleep", "echo", "cat", "true", "false", "kill", "head", "dd", "env", "ls",
           "grep", "yes", "wc", "date")
PAUSE_SCRIPT = "trap 'exit 0' TERM INT; while :; do sleep 3600 & wait $!; done"
_MTIME = 0


@dataclass(frozen=True)
class Image:
    """An image ready for ``ctr images import``."""

    name: str
    """Full reference, e.g. ``sniffer.dev/testbed/busybox:0123456789ab``."""
    archive: bytes
    """An OCI image layout as a tar."""


def _arch() -> str:
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())


def _layer(busybox: bytes) -> bytes:
    """The uncompressed layer tar: /bin/busybox plus applet links, /tmp, /etc/passwd."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        def add(name: str, kind: bytes, *, data: bytes = b"", mode: int = 0o755,
                link: str = "") -> None:
            info = tarfile.TarInfo(name)
            info.type, info.mode, info.mtime, info.linkname = kind, mode, _MTIME, link
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data else None)
        add("bin", tarfile.DIRTYPE)
        add("bin/busybox", tarfile.REGTYPE, data=busybox)
        for applet in APPLETS:
            add(f"bin/{applet}", tarfile.SYMTYPE, mode=0o777, link="busybox")
        add("etc", tarfile.DIRTYPE)
        add("etc/passwd", tarfile.REGTYPE, data=b"root:x:0:0:root:/:/bin/sh\n", mode=0o644)
        add("tmp", tarfile.DIRTYPE, mode=0o1777)
    return buf.getvalue()


def _blob(blobs: dict[str, bytes], data: bytes) -> str:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    blobs[digest] = data
    return digest


def _oci_layout(name: str, layer: bytes, cmd: list[str]) -> bytes:
    blobs: dict[str, bytes] = {}
    gz = gzip.compress(layer, mtime=_MTIME)
    config = json.dumps({
        "architecture": _arch(), "os": "linux",
        "config": {"Cmd": cmd, "Env": ["PATH=/bin"], "WorkingDir": "/"},
        "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(layer).hexdigest()]},
    }, sort_keys=True).encode()
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": _blob(blobs, config), "size": len(config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": _blob(blobs, gz), "size": len(gz)}],
    }, sort_keys=True).encode()
    index = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
                       "digest": _blob(blobs, manifest), "size": len(manifest),
                       "platform": {"architecture": _arch(), "os": "linux"},
                       "annotations": {"io.containerd.image.name": name,
                                       "org.opencontainers.image.ref.name": name}}],
    }, sort_keys=True).encode()
    files = {"oci-layout": b'{"imageLayoutVersion":"1.0.0"}', "index.json": index,
             **{f"blobs/sha256/{d.removeprefix('sha256:')}": b for d, b in sorted(blobs.items())}}
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for dirname in ("blobs", "blobs/sha256"):
            info = tarfile.TarInfo(dirname)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, _MTIME
            tar.addfile(info)
        for path, data in files.items():
            info = tarfile.TarInfo(path)
            info.size, info.mode, info.mtime = len(data), 0o644, _MTIME
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _image(kind: str, busybox: Path, cmd: list[str]) -> Image:
    layer = _layer(busybox.read_bytes())
    tag = hashlib.sha256(layer + json.dumps(cmd).encode()).hexdigest()[:12]
    name = f"{REPOSITORY}/{kind}:{tag}"
    return Image(name=name, archive=_oci_layout(name, layer, cmd))


def workload_image(busybox: Path) -> Image:
    """The workload image: busybox with ``sh`` as its default command."""
    return _image("busybox", busybox, ["/bin/sh"])


def pause_image(busybox: Path) -> Image:
    """The sandbox image: blocks until SIGTERM/SIGINT, then exits 0."""
    return _image("pause", busybox, ["/bin/sh", "-c", PAUSE_SCRIPT])
