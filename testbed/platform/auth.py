"""Bearer-token authentication for the reference Platform server.

Promises:

* Every path except ``/healthz`` needs ``Authorization: Bearer <token>`` with a token from
  the token file; otherwise the answer is 401 with a JSON error (and nothing is done).
* The token file holds one or more tokens, one per line (several allow an overlapping
  rotation). It is re-read when its inode, size or mtime changes, so rewriting or replacing
  it rotates the accepted tokens without a restart.
* Tokens are compared in constant time and never logged or echoed.
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Awaitable, Callable
from pathlib import Path

from aiohttp import typedefs, web

PUBLIC_PATHS = frozenset({"/healthz"})


class TokenFile:
    """The accepted tokens, refreshed from ``path`` when the file changes.

    Invariant: ``_tokens`` is the content of the file as of stat signature ``_signature``.
    """

    def __init__(self, path: Path) -> None:
        self._path = path
        self._signature: tuple[int, int, int] | None = None
        self._tokens: tuple[bytes, ...] = ()
        self.refresh()

    def refresh(self) -> None:
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

    def accepts(self, presented: str) -> bool:
        self.refresh()
        candidate = presented.encode()
        ok = False
        for token in self._tokens:
            ok |= hmac.compare_digest(candidate, token)
        return ok


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
