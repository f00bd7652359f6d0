"""Kubeconfig files (testbed/kubeconfig.py): the admin's, written; anyone's, read."""

from __future__ import annotations

import base64
import shutil
import stat
from pathlib import Path

import pytest
import yaml

from testbed.apiserver import ApiServer, ApiServerError
from testbed.kubeconfig import KubeconfigError, read_kubeconfig, write_admin_kubeconfig


def test_the_admin_kubeconfig_reads_back_as_written_and_is_private(tmp_path: Path) -> None:
    path = tmp_path / "kubeconfig"
    ca = tmp_path / "ca with spaces.crt"
    write_admin_kubeconfig(path, "https://127.0.0.1:6443", ca, 'to"ken')
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    access = read_kubeconfig(path)
    assert (access.url, access.token, access.ca_file, access.path) == (
        "https://127.0.0.1:6443", 'to"ken', ca, path)
    assert (access.client_cert, access.insecure, access.scratch) == (None, False, None)


def _write(path: Path, user: dict[str, str], cluster: dict[str, object]) -> None:
    path.write_text(yaml.safe_dump({
        "clusters": [{"name": "c", "cluster": {"server": "https://k:6443/", **cluster}}],
        "users": [{"name": "u", "user": user}],
        "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
        "current-context": "x",
    }))


def test_inline_credentials_go_to_a_scratch_directory(tmp_path: Path) -> None:
    path = tmp_path / "config"
    data = {key: base64.b64encode(key.encode()).decode()
            for key in ("client-certificate-data", "client-key-data")}
    _write(path, data, {"certificate-authority-data": base64.b64encode(b"ca").decode(),
                        "insecure-skip-tls-verify": True})
    access = read_kubeconfig(path)
    try:
        assert access.url == "https://k:6443"
        assert access.scratch is not None
        assert access.ca_file is not None and access.ca_file.read_bytes() == b"ca"
        assert access.client_key is not None
        assert access.client_key.read_bytes() == b"client-key-data"
        assert access.insecure
    finally:
        shutil.rmtree(access.scratch or tmp_path / "none", ignore_errors=True)


def test_file_credentials_are_relative_to_the_kubeconfig(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("t0k\n")
    _write(tmp_path / "config", {"tokenFile": "token", "client-certificate": "cert.pem"},
           {"certificate-authority": "ca.pem"})
    access = read_kubeconfig(tmp_path / "config")
    assert (access.token, access.ca_file, access.client_cert) == (
        "t0k", tmp_path / "ca.pem", tmp_path / "cert.pem")


def test_a_missing_context_is_named(tmp_path: Path) -> None:
    _write(tmp_path / "config", {}, {})
    with pytest.raises(KubeconfigError, match="no context named 'other'"):
        read_kubeconfig(tmp_path / "config", context="other")
    with pytest.raises(ApiServerError, match="no context named 'other'"):
        ApiServer.from_kubeconfig(tmp_path / "config", context="other")


def test_an_api_server_from_a_kubeconfig_owns_only_its_scratch(tmp_path: Path) -> None:
    _write(tmp_path / "config", {"token": "t"},
           {"certificate-authority-data": base64.b64encode(b"ca").decode()})
    server = ApiServer.from_kubeconfig(tmp_path / "config")
    assert server.ca_file is not None and server.ca_file.exists()
    server.stop()
    assert not server.ca_file.exists()
    assert (tmp_path / "config").exists()
