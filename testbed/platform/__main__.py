"""Command line: ``python -m testbed.platform serve --db PATH --token-file PATH [...]``.

Promises:

* It serves HTTPS when given ``--tls-cert`` and ``--tls-key``, else plain HTTP.
* When the server accepts connections it prints its URL on stdout and, with
  ``--ready-file``, atomically writes ``{"url": ..., "pid": ...}`` there (the file appears
  whole or not at all).
* SIGTERM or SIGINT stops it cleanly: it stops accepting, lets in-flight requests finish
  (up to 5 s), checkpoints the database and exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import ssl
import sys
from pathlib import Path

from aiohttp import web

from .app import build_app
from .store import Store

log = logging.getLogger("testbed.platform")


def _write_ready(path: Path, url: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({"url": url, "pid": os.getpid()}), encoding="utf-8")
    os.replace(tmp, path)


def _tls_context(cert: Path | None, key: Path | None) -> ssl.SSLContext | None:
    if cert is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return context


_MAX_REQUEST_LINE = 1024 * 1024


async def serve(
    host: str, port: int, db: Path, token_file: Path, ready_file: Path | None,
    tls: ssl.SSLContext | None = None,
) -> None:
    store = Store.open(db)
    store.start_checkpointer()
    runner = web.AppRunner(
        build_app(store, token_file), access_log=None, handle_signals=False,
        shutdown_timeout=5.0,
        # aiohttp answers a request line or header over 8 KiB itself, in plain text; let
        # such requests reach the application, which refuses them as the contract says.
        max_line_size=_MAX_REQUEST_LINE, max_field_size=_MAX_REQUEST_LINE,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await runner.setup()
        site = web.TCPSite(
            runner, host, port, backlog=1024, reuse_address=True, ssl_context=tls
        )
        await site.start()
        bound_port = runner.addresses[0][1]
        scheme = "https" if tls is not None else "http"
        url = f"{scheme}://{host if ':' not in host else f'[{host}]'}:{bound_port}"
        print(url, flush=True)
        if ready_file is not None:
            _write_ready(ready_file, url)
        log.info("platform server listening on %s (db %s)", url, db)
        await stop.wait()
        log.info("stopping")
    finally:
        with contextlib.suppress(Exception):
            await runner.cleanup()
        store.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m testbed.platform")
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve", help="run the reference Platform API server")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=0)
    s.add_argument("--db", type=Path, required=True, help="SQLite database file")
    s.add_argument("--token-file", type=Path, required=True,
                   help="file with the accepted bearer token(s), one per line")
    s.add_argument("--ready-file", type=Path, help="where to write {url, pid} when ready")
    s.add_argument("--tls-cert", type=Path, help="serve HTTPS with this certificate (PEM)")
    s.add_argument("--tls-key", type=Path, help="private key of --tls-cert (PEM)")
    s.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not args.token_file.is_file():
        parser.error(f"--token-file {args.token_file} does not exist")
    if (args.tls_cert is None) != (args.tls_key is None):
        parser.error("--tls-cert and --tls-key go together")
    tls = _tls_context(args.tls_cert, args.tls_key)
    asyncio.run(serve(args.host, args.port, args.db, args.token_file, args.ready_file, tls))
    return 0


if __name__ == "__main__":
    sys.exit(main())
