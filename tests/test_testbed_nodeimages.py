"""testbed.nodeimages: OCI layouts that containerd can import, written without a registry."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import pytest

from testbed import nodeimages


@pytest.fixture
def busybox(tmp_path: Path) -> Path:
    path = tmp_path / "busybox"
    path.write_bytes(b"\x7fELF not really busybox")
    return path


def _members(archive: bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        return {m.name: tar.extractfile(m).read()
                for m in tar.getmembers() if m.isfile()}


def test_every_blob_the_index_names_is_present_under_its_digest(busybox: Path) -> None:
    files = _members(nodeimages.workload_image(busybox).archive)
    for path, data in files.items():
        if path.startswith("blobs/sha256/"):
            assert hashlib.sha256(data).hexdigest() == path.rsplit("/", 1)[1]
    index = json.loads(files["index.json"])
    manifest = json.loads(files["blobs/sha256/" + index["manifests"][0]["digest"][7:]])
    for desc in [manifest["config"], *manifest["layers"]]:
        assert len(files["blobs/sha256/" + desc["digest"][7:]]) == desc["size"]


def test_the_index_names_the_image_by_its_full_reference(busybox: Path) -> None:
    image = nodeimages.pause_image(busybox)
    entry = json.loads(_members(image.archive)["index.json"])["manifests"][0]
    assert entry["annotations"]["io.containerd.image.name"] == image.name
    assert entry["annotations"]["org.opencontainers.image.ref.name"] == image.name
    assert image.name.startswith("sniffer.dev/testbed/pause:")


def test_the_layer_holds_busybox_and_a_shell_on_path(busybox: Path) -> None:
    files = _members(nodeimages.workload_image(busybox).archive)
    index = json.loads(files["index.json"])
    manifest = json.loads(files["blobs/sha256/" + index["manifests"][0]["digest"][7:]])
    layer = files["blobs/sha256/" + manifest["layers"][0]["digest"][7:]]
    with tarfile.open(fileobj=io.BytesIO(layer), mode="r:gz") as tar:
        assert tar.extractfile("bin/busybox").read() == busybox.read_bytes()
        assert tar.getmember("bin/sh").linkname == "busybox"


def test_the_same_busybox_gives_the_same_bytes_and_another_gives_another_name(
        busybox: Path, tmp_path: Path) -> None:
    assert nodeimages.workload_image(busybox) == nodeimages.workload_image(busybox)
    other = tmp_path / "other"
    other.write_bytes(b"another busybox")
    assert nodeimages.workload_image(other).name != nodeimages.workload_image(busybox).name
