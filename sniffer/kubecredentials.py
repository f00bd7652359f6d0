"""Where Sniffer's Kubernetes credentials come from, and how they are renewed.

Contract:
* `Credentials.load` reads in-cluster config when ``KUBERNETES_SERVICE_HOST`` is set and no
  kubeconfig is given, else the kubeconfig ($KUBECONFIG, ~/.kube/config): client
  certificates, bearer tokens, exec plugins, all through `kubernetes.aio`'s loaders.
  Anything unusable raises `CredentialsError` naming where it looked, never the secret.
* `reload()` reads the same source again: rotated service-account tokens and expiring
  exec-plugin tokens are picked up (the client calls it once after a 401).
* `headers()` carries the current bearer token, if any; it is never logged.
* TLS verification is on unless the caller (``verify_tls=False``) or the kubeconfig
  (``insecure-skip-tls-verify``) turns it off, and turning it off is logged either way.
"""

from __future__ import annotations

import logging
import os

from kubernetes.aio import client as kclient
from kubernetes.aio import config as kconfig
from kubernetes.aio.config.config_exception import ConfigException

log = logging.getLogger(__name__)


class CredentialsError(Exception):
    """No usable credentials: a missing or malformed kubeconfig, or not in a cluster."""


class Credentials:
    """The API server's address, TLS settings and authentication, renewable in place.

    Create with `await Credentials.load(...)`."""

    def __init__(self, configuration: kclient.Configuration, *, kubeconfig: str | None,
                 context: str | None, in_cluster: bool) -> None:
        self.configuration = configuration
        """The `kubernetes.aio` configuration the HTTP client is built from."""
        self._kubeconfig = kubeconfig
        self._context = context
        self._in_cluster = in_cluster

    @classmethod
    async def load(cls, *, kubeconfig: str | None = None, context: str | None = None,
                   verify_tls: bool = True, pool_size: int = 32) -> Credentials:
        """Load credentials (see the module contract); `pool_size` is the most
        connections the HTTP client keeps open."""
        configuration = kclient.Configuration()
        in_cluster = kubeconfig is None and "KUBERNETES_SERVICE_HOST" in os.environ
        path = kubeconfig or os.environ.get("KUBECONFIG") or None
        try:
            await _load(configuration, path, context, in_cluster)
        except (ConfigException, OSError, ValueError, TypeError, KeyError) as exc:
            where = "in-cluster credentials" if in_cluster else (
                f"kubeconfig {path or '~/.kube/config'}")
            raise CredentialsError(f"{where}: {exc}") from None
        configuration.connection_pool_maxsize = pool_size
        # trust_env makes aiohttp look up ~/.netrc and proxy settings in a thread for every
        # request (a quarter of the CPU of a finalizer burst); in-cluster and kubeconfig
        # credentials never come from there.
        configuration.client_session_kwargs = {"trust_env": False}
        if not verify_tls:
            log.warning("TLS verification of the Kubernetes API server is OFF "
                        "(kube.verify_tls=false); do not run like this in production")
            configuration.verify_ssl = False
        elif not configuration.verify_ssl:
            log.warning("TLS verification of the Kubernetes API server is OFF (the "
                        "kubeconfig sets insecure-skip-tls-verify); do not run like this "
                        "in production")
        return cls(configuration, kubeconfig=path, context=context, in_cluster=in_cluster)

    @property
    def host(self) -> str:
        """The API server's base URL, without a trailing slash."""
        return str(self.configuration.host)

    async def headers(self, content_type: str = "application/json") -> dict[str, str]:
        """Request headers with the current bearer token (none for client certificates)."""
        headers = {"Accept": "application/json", "Content-Type": content_type}
        auth = await self.configuration.auth_settings()
        bearer = auth.get("BearerToken")
        if bearer and bearer.get("value"):
            headers["Authorization"] = str(bearer["value"])
        return headers

    async def reload(self) -> None:
        """Read the credentials again from where `load` found them."""
        await _load(self.configuration, self._kubeconfig, self._context, self._in_cluster)


async def _load(configuration: kclient.Configuration, path: str | None,
                context: str | None, in_cluster: bool) -> None:
    if in_cluster:
        kconfig.load_incluster_config(client_configuration=configuration)
    else:
        await kconfig.load_kube_config(config_file=path, context=context,
                                       client_configuration=configuration,
                                       persist_config=False)
