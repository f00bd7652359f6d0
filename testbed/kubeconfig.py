"""Kubeconfig files: the testbed admin's, written; anyone's, read.

Contract:

* `write_admin_kubeconfig(path, url, ca_file, token)` replaces ``path`` atomically with a
  kubeconfig (mode 0600) whose one context, ``testbed``, authenticates with the bearer token
  and verifies the server with ``ca_file``; kubectl and Sniffer both read it.
* `read_kubeconfig(path, context)` describes the cluster of the current (or given) context
  as a `ClusterAccess`. It supports token and client-certificate auth, with credentials as
  files (relative paths are relative to the kubeconfig's folder) or inline (``*-data``).
  Inline data is written to a private temporary directory, ``ClusterAccess.scratch``, which
  the caller must remove. An unreadable kubeconfig, or one without the context or the
  cluster or user a context names, raises `KubeconfigError`.
* Only reading needs PyYAML; writing uses the standard library alone.
"""

from __future__ import annotations

import base64
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class KubeconfigError(RuntimeError):
    """A kubeconfig could not be read or lacks what its context names."""


@dataclass(frozen=True)
class ClusterAccess:
    """How a kubeconfig's context reaches its cluster."""

    url: str
    """The server's base URL, without a trailing slash."""
    token: str | None
    ca_file: Path | None
    """PEM bundle that verifies the server; None means the system's trust store."""
    client_cert: Path | None
    client_key: Path | None
    insecure: bool
    """Skip server certificate verification (the kubeconfig says so)."""
    path: Path
    """The kubeconfig itself, as an absolute path."""
    scratch: Path | None
    """The temporary directory holding inline credentials, if any; the caller removes it."""


def write_admin_kubeconfig(path: Path, url: str, ca_file: Path, token: str) -> None:
    """Replace ``path`` atomically with the admin's kubeconfig (mode 0600, see the contract)."""
    # JSON strings are valid YAML scalars, so json.dumps quotes values safely.
    q = json.dumps
    text = f"""apiVersion: v1
kind: Config
clusters:
- name: testbed
  cluster:
    server: {q(url)}
    certificate-authority: {q(str(ca_file))}
users:
- name: testbed-admin
  user:
    token: {q(token)}
contexts:
- name: testbed
  context:
    cluster: testbed
    user: testbed-admin
current-context: testbed
"""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.chmod(0o600)
    tmp.replace(path)


def read_kubeconfig(path: Path, *, context: str | None = None) -> ClusterAccess:
    """Describe the cluster of a kubeconfig's current (or given) context (see the contract)."""
    try:
        import yaml  # only needed here; writing is stdlib only
    except ImportError as e:  # pragma: no cover - PyYAML is a project dependency
        raise KubeconfigError("reading a kubeconfig needs PyYAML") from e
    path = path.expanduser().resolve()
    try:
        config = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise KubeconfigError(f"cannot read kubeconfig {path}: {e}") from e

    def named(section: str, name: str) -> dict[str, Any]:
        for item in config.get(section) or []:
            if item.get("name") == name:
                return dict(item.get(section[:-1]) or {})
        raise KubeconfigError(f"kubeconfig {path}: no {section[:-1]} named {name!r}")

    ctx_name = context or config.get("current-context")
    if not ctx_name:
        raise KubeconfigError(f"kubeconfig {path}: no current-context")
    ctx = named("contexts", ctx_name)
    cluster = named("clusters", ctx["cluster"])
    user = named("users", ctx["user"]) if ctx.get("user") else {}
    base = path.parent
    scratch: Path | None = None

    def credential(file_key: str, data_key: str, source: dict[str, Any]) -> Path | None:
        nonlocal scratch
        if source.get(file_key):
            return (base / source[file_key]).resolve()
        if source.get(data_key):
            if scratch is None:
                scratch = Path(tempfile.mkdtemp(prefix="sniffer-kubeconfig-"))
            out = scratch / file_key
            out.write_bytes(base64.b64decode(source[data_key]))
            return out
        return None

    token = user.get("token")
    if not token and user.get("tokenFile"):
        token = (base / user["tokenFile"]).read_text().strip()
    return ClusterAccess(
        url=str(cluster["server"]).rstrip("/"), token=token,
        ca_file=credential("certificate-authority", "certificate-authority-data", cluster),
        client_cert=credential("client-certificate", "client-certificate-data", user),
        client_key=credential("client-key", "client-key-data", user),
        insecure=bool(cluster.get("insecure-skip-tls-verify")), path=path, scratch=scratch)
