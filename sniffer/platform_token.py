"""The Platform API's bearer token, read from a file that may be rotated under us.

Contract:

* `TokenFile.current` returns the file's content without surrounding white space. It looks
  at the file again at most every `TokenFile.RECHECK_S` seconds, and reads it again only
  when its inode, size or mtime changed (a rotated Secret mount swaps the file).
* `TokenFile.reread` reads the file at once, whatever its stat says (after a 401).
* A file that cannot be read or is empty raises `PlatformRejected` with code
  ``"token_unavailable"`` only while no token was ever read; after that the last good token
  is kept, since such a file is a rotation in progress.
* The token never appears in a ``repr``, a log record or an exception message.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

from sniffer.platform_model import PlatformRejected


class TokenFile:
    """The bearer token from a file. Invariant: ``_value`` is the file's content as of stat
    signature ``_signature``. Its repr never shows the token."""

    __slots__ = ("_checked", "_path", "_signature", "_value")

    # A rotated Secret mount is picked up within this long (and at once after a 401);
    # a stat per request was 10 % of the CPU of a burst.
    RECHECK_S = 1.0

    def __init__(self, path: Path) -> None:
        self._path = path
        self._signature: tuple[int, int, int] | None = None
        self._value: str | None = None
        self._checked = -math.inf

    def __repr__(self) -> str:
        return f"<token from {self._path} (redacted)>"

    def _read(self, force: bool) -> None:
        try:
            st = os.stat(self._path)
            signature = (st.st_ino, st.st_size, st.st_mtime_ns)
            if not force and signature == self._signature:
                return
            value = self._path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            if self._value is not None:
                return  # a rotation in progress; keep the last good token
            raise PlatformRejected(
                0, "token_unavailable", f"cannot read token file {self._path}: {exc.strerror}"
            ) from None
        if not value:
            if self._value is not None:
                return
            raise PlatformRejected(0, "token_unavailable", f"token file {self._path} is empty")
        self._signature = signature
        self._value = value

    def current(self) -> str:
        now = time.monotonic()
        if self._value is None or now - self._checked >= self.RECHECK_S:
            self._read(force=False)
            self._checked = now
        assert self._value is not None
        return self._value

    def reread(self) -> bool:
        """Read the file again; True iff the token changed."""
        before = self._value
        self._read(force=True)
        return self._value != before
