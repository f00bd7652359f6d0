"""Let pods on the real node reach a testbed service that listens on loopback.

The testbed's API server and platform bind 127.0.0.1 only, and a pod's network namespace
has its own loopback: from the CNI bridge the one host address a pod can reach is
`testbed.realnode.HOST_ADDRESS`. A `Relay` listens there, on a fixed port the testbed
overlay names (kustomize/overlays/testbed), and copies bytes both ways to the loopback
service. Nothing listens on any other interface, so no traffic leaves the machine.

Contract:

* `Relay.start(listen_port, target)` binds ``HOST_ADDRESS:listen_port`` before it returns
  (a port in use raises `OSError` at once) and then serves in daemon threads.
* It is a plain TCP pipe: TLS passes through untouched, so a pod verifies the API server's
  own certificate (which names `HOST_ADDRESS`, see `testbed.realnode.APISERVER_EXTRA_ARGS`).
* `stop()` closes the listener and every relayed connection; it is idempotent.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from dataclasses import dataclass, field

from testbed.realnode import HOST_ADDRESS

_CHUNK = 65536


@dataclass
class Relay:
    """One listening relay; see the module's contract."""

    listen: tuple[str, int]
    target: tuple[str, int]
    _server: socket.socket | None = field(default=None, repr=False)
    _conns: set[socket.socket] = field(default_factory=set, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _closed: bool = field(default=False, repr=False)

    @classmethod
    def start(cls, listen_port: int, target: tuple[str, int], *,
              host: str = HOST_ADDRESS) -> Relay:
        """Bind ``host:listen_port`` and relay every connection to ``target``."""
        server = socket.create_server((host, listen_port), reuse_port=False)
        relay = cls(listen=(host, listen_port), target=target, _server=server)
        threading.Thread(target=relay._accept, name=f"relay-{listen_port}",
                         daemon=True).start()
        return relay

    def _accept(self) -> None:
        assert self._server is not None
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return  # closed by stop()
            try:
                upstream = socket.create_connection(self.target, timeout=10)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            with self._lock:
                if self._closed:
                    client.close()
                    upstream.close()
                    return
                self._conns |= {client, upstream}
            threading.Thread(target=self._serve, args=(client, upstream), daemon=True).start()

    def _serve(self, client: socket.socket, upstream: socket.socket) -> None:
        back = threading.Thread(target=_pipe, args=(upstream, client), daemon=True)
        back.start()
        _pipe(client, upstream)
        back.join()
        with self._lock:
            self._conns -= {client, upstream}
        client.close()
        upstream.close()

    def stop(self) -> None:
        """Close the listener and every relayed connection."""
        with self._lock:
            self._closed = True
            conns, self._conns = self._conns, set()
        if self._server is not None:
            with contextlib.suppress(OSError):
                self._server.shutdown(socket.SHUT_RDWR)
            self._server.close()
        for s in conns:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()


def _pipe(src: socket.socket, dst: socket.socket) -> None:
    """Copy until ``src`` ends, then half-close ``dst`` so its peer sees the end too."""
    try:
        while data := src.recv(_CHUNK):
            dst.sendall(data)
    except OSError:
        pass
    with contextlib.suppress(OSError):
        dst.shutdown(socket.SHUT_WR)
