"""/healthz and /readyz for the kubelet's probes.

Contract:
* ``/readyz`` answers 200 once the pod cache has synced (every namespace listed once),
  503 before: a standby replica is ready too, with a warm cache, so a rollout can proceed.
* ``/healthz`` answers 200 while every check passes, 503 with the failing checks
  otherwise; a check is a named callable returning None (healthy) or a reason. The
  watcher registers "the reflector received something recently" and "workers are not
  wedged" checks, so a stuck process is restarted by its liveness probe.
* The body is JSON (``{"status": "ok"}`` or the reasons) and never includes secrets.
* `start()` binds and returns; `stop()` closes. Port 0 picks a free port (tests).
"""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web

Check = Callable[[], str | None]


class HealthServer:
    def __init__(self, *, host: str, port: int, ready: Callable[[], bool],
                 checks: dict[str, Check] | None = None,
                 info: Callable[[], dict[str, object]] | None = None) -> None:
        self._host, self._port = host, port
        self._ready = ready
        self._checks = dict(checks or {})
        self._info = info or dict
        self._runner: web.AppRunner | None = None
        self.port: int | None = None
        """The bound port, once started."""

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self._port)
        await site.start()
        server = site._server  # aiohttp exposes the bound sockets only here
        sockets = getattr(server, "sockets", None) or []
        self.port = sockets[0].getsockname()[1] if sockets else self._port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _healthz(self, _: web.Request) -> web.Response:
        failing = {name: reason for name, check in self._checks.items()
                   if (reason := check()) is not None}
        if failing:
            return web.json_response({"status": "unhealthy", "failing": failing}, status=503)
        return web.json_response({"status": "ok", **self._info()})

    async def _readyz(self, _: web.Request) -> web.Response:
        if self._ready():
            return web.json_response({"status": "ready"})
        return web.json_response({"status": "not ready", "reason": "cache not synced"},
                                 status=503)
