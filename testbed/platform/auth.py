"""Bearer-token authentication for the reference Platform server.

Promises:

* Every path except ``/healthz`` needs ``Authorization: Bearer <token>`` with a token from
  the token file; otherwise the answer is 401 with a JSON error (and nothing is done).
* The token file holds one or more tokens, one per line (several allow an overlapping
  rotation). It is re-read when its inode, size or mtime changes, so rewriting or replacing
  it rotates the accepted tokens without a restart: a new token is accepted at once (an
  unknown token triggers a check of the file), a removed one is refused within
  :data:`RECHECK_S` seconds (a known token re-checks the file at most that often).
* Tokens are compared in constant time and never logged or echoed.
"""

from __future__ import annotations

import hmac
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from aiohttp import typedefs, web

PUBLIC_PATHS = frozenset({"/healthz"})
RECHECK_S = 1.0


class TokenFile:
    """The accepted tokens, refreshed from ``path`` when the file changes.

    Invariant: ``_tokens`` is the content of the file as of stat signature ``_signature``.
    """

    def __init__(self, path: Path) -> None:
        self._path = path
        self._signature: tuple[int, int, int] | None = None
        self._tokens: tuple[bytes, ...] = ()
        self._checked_at = 0.0
        self.refresh()

    def refresh(self) -> None:
        self._checked_at = time.monotonic()
        try:
            st = os.stat(self._path)
        except OSError:
            return  # keep the last good tokens while a rotation swaps files
        signature = (st.st_ino, st.st_size, st.st_mtime_ns)
        if signature == self._signature:
            return
        text = self._path.read_text(encoding="utf-8")
        self._tokens = tuple(
            line.strip().encode() for line in text.splitlines() if line.strip()
        )
        self._signature = signature

    def _matches(self, candidate: bytes) -> bool:
        ok = False
        for token in self._tokens:
            ok |= hmac.compare_digest(candidate, token)
        return ok

    def accepts(self, presented: str) -> bool:
        candidate = presented.encode()
        if time.monotonic() - self._checked_at >= RECHECK_S or not self._matches(candidate):
            self.refresh()
        return self._matches(candidate)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def unauthorized(message: str) -> web.Response:
    return web.json_response(
        {"error": {"code": "unauthorized", "message": message}},
        status=401,
        headers={"WWW-Authenticate": 'Bearer realm="platform"'},
    )


def middleware(tokens: TokenFile) -> typedefs.Middleware:
    @web.middleware
    async def authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in PUBLIC_PATHS:
            return await handler(request)
        header = request.headers.get("Authorization", "")
        scheme, _, presented = header.partition(" ")
        if scheme.lower() != "bearer" or not presented.strip():
            return unauthorized("missing bearer token")
        if not tokens.accepts(presented.strip()):
            return unauthorized("invalid bearer token")
        return await handler(request)

    return authenticate
