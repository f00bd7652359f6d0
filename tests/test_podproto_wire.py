"""`KubeClient` on the protobuf wire (setting ``kube.wire``), against a real kube-apiserver.

* By default slim LISTs, GETs and watches travel in protobuf and give exactly the views a
  JSON client gets for the same pods; the client stays on protobuf.
* Behind a proxy that refuses protobuf (406, 415) or answers JSON whatever is asked, the
  client falls back to JSON: the same views, and one warning, however many calls follow.
"""

from __future__ import annotations

import contextlib
import logging
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import trustme
from aiohttp import web

from sniffer.kube import KubeClient
from sniffer.kubedecode import KubeError, NotFound, WatchEvent
from sniffer.podview import PodView, project
from sniffer.protowire import CONTENT_TYPE
from testbed.apiserver import ApiServer
from testbed.kubeconfig import write_admin_kubeconfig
from tests.test_podproto import STATUS_SHAPES, Raw, populate

SELECTOR = "sniffer.io/run-id"


async def views(client: KubeClient, namespace: str, since: str, until: str,
                ) -> tuple[list[PodView], list[tuple[str, PodView]]]:
    """The client's slim LIST (in pages of 5) and its watch from `since` to `until`."""
    listed: list[PodView] = []
    token = None
    while True:
        page = await client.list_pods(namespace, label_selector=SELECTOR, limit=5,
                                      continue_token=token, slim=True)
        listed += [project(item) for item in page.items]
        if not (token := page.continue_token):
            break
    watched: list[tuple[str, PodView]] = []
    stream = client.watch_pods(namespace, label_selector=SELECTOR, resource_version=since,
                               timeout_seconds=60, read_timeout=60, slim=True)
    async with contextlib.aclosing(stream):
        async for event in stream:
            assert isinstance(event, WatchEvent), event
            if event.type == "BOOKMARK":
                continue
            watched.append((event.type, project(event.object)))
            if watched[-1][1].resource_version == until:
                break
    return listed, watched


@pytest.fixture
async def raw(apiserver: ApiServer) -> AsyncIterator[Raw]:
    async with aiohttp.ClientSession() as session:
        yield Raw(apiserver, session)


async def test_the_protobuf_wire_gives_the_views_of_the_json_wire(apiserver, raw, namespace):
    since, until = await populate(raw, namespace)
    kubeconfig = str(apiserver.kubeconfig)
    protobuf = await KubeClient.connect(kubeconfig=kubeconfig)
    plain = await KubeClient.connect(kubeconfig=kubeconfig, wire="json")
    try:
        assert protobuf.wire == "protobuf"
        got = await views(protobuf, namespace, since, until)
        assert got == await views(plain, namespace, since, until)
        assert len(got[0]) == len(STATUS_SHAPES) + 3  # the untracked pod is not selected
        one = got[0][0]
        assert project(await protobuf.get_pod(namespace, one.name, slim=True)) == one
        assert protobuf.wire == "protobuf", "the server answered protobuf"
    finally:
        await protobuf.close()
        await plain.close()


class RefusingProxy:
    """An HTTPS proxy in front of the API server that will not carry protobuf: it answers
    `refusal` (406 or 415) to a request that accepts protobuf, or with "json" forwards
    every request asking for JSON only (as a JSON-only proxy would)."""

    def __init__(self, server: ApiServer, workdir: Path, refusal: int | str) -> None:
        self.server, self.workdir, self.refusal = server, workdir, refusal
        self.protobuf_asked = 0

    async def __aenter__(self) -> RefusingProxy:
        ca = trustme.CA()
        cert = ca.issue_cert("127.0.0.1")
        ca.cert_pem.write_to_path(str(self.workdir / "proxy-ca.pem"))
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        cert.configure_cert(context)
        self.session = aiohttp.ClientSession()
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.forward)
        # A handler ends when its client goes: a watch the client left must not stay open.
        self.runner = web.AppRunner(app, handler_cancellation=True)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0, ssl_context=context)
        await site.start()
        port = self.runner.addresses[0][1]
        self.kubeconfig = self.workdir / "proxy-kubeconfig"
        write_admin_kubeconfig(self.kubeconfig, f"https://127.0.0.1:{port}",
                               self.workdir / "proxy-ca.pem", self.server.token or "")
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.runner.cleanup()
        await self.session.close()

    async def forward(self, request: web.Request) -> web.StreamResponse:
        if "protobuf" in request.headers.get("Accept", ""):
            self.protobuf_asked += 1
            if self.refusal != "json":
                return web.Response(status=int(self.refusal), text="protobuf not carried")
        headers = {"Accept": "application/json",
                   "Authorization": request.headers.get("Authorization", "")}
        if "Content-Type" in request.headers:
            headers["Content-Type"] = request.headers["Content-Type"]
        async with self.session.request(
                request.method, self.server.url + request.path_qs, headers=headers,
                data=await request.read(), ssl=self.server.ssl_context()) as upstream:
            response = web.StreamResponse(status=upstream.status, headers={
                "Content-Type": upstream.headers.get("Content-Type", "application/json")})
            await response.prepare(request)
            async for chunk in upstream.content.iter_any():
                await response.write(chunk)
            await response.write_eof()
            return response


@pytest.mark.parametrize("refusal", [406, 415, "json"])
async def test_a_proxy_that_refuses_protobuf_gets_json_and_one_warning(
        apiserver, raw, namespace, tmp_path, caplog, refusal):
    since, until = await populate(raw, namespace)
    direct = await KubeClient.connect(kubeconfig=str(apiserver.kubeconfig), wire="json")
    try:
        expected = await views(direct, namespace, since, until)
    finally:
        await direct.close()
    async with RefusingProxy(apiserver, tmp_path, refusal) as proxy:
        client = await KubeClient.connect(kubeconfig=str(proxy.kubeconfig))
        try:
            with caplog.at_level(logging.WARNING, logger="sniffer.kube"):
                assert await views(client, namespace, since, until) == expected
                assert await views(client, namespace, since, until) == expected
        finally:
            await client.close()
    assert client.wire == "json"
    assert proxy.protobuf_asked == 1, "after the first refusal, only JSON is asked for"
    refused = [r for r in caplog.records if "refused protobuf" in r.getMessage()]
    assert len(refused) == 1
    answer = "Content-Type application/json" if refusal == "json" else f"HTTP {refusal}"
    assert refused[0].__dict__["answer"] == answer


async def test_a_json_wire_client_never_asks_for_protobuf(apiserver, raw, namespace,
                                                          tmp_path):
    since, until = await populate(raw, namespace)
    async with RefusingProxy(apiserver, tmp_path, 406) as proxy:
        client = await KubeClient.connect(kubeconfig=str(proxy.kubeconfig), wire="json")
        try:
            await views(client, namespace, since, until)
        finally:
            await client.close()
    assert proxy.protobuf_asked == 0


async def test_protobuf_is_asked_for_as_client_go_asks(raw, namespace):
    # The Accept header the client sends: the server must answer protobuf to it.
    await populate(raw, namespace)
    status, content_type, _ = await raw.call(
        "GET", f"/api/v1/namespaces/{namespace}/pods",
        accept=f"{CONTENT_TYPE}, application/json")
    assert (status, content_type) == (200, CONTENT_TYPE)


async def test_an_error_answered_in_protobuf_keeps_its_message(apiserver, namespace):
    client = await KubeClient.connect(kubeconfig=str(apiserver.kubeconfig))
    try:
        with pytest.raises(NotFound, match='pods "no-such-pod" not found'):
            await client.get_pod(namespace, "no-such-pod", slim=True)
        with pytest.raises(KubeError, match="invalid continue token") as refused:
            await client.list_pods(namespace, label_selector=SELECTOR, limit=1,
                                   continue_token="not-a-token", slim=True)
        assert refused.value.status == 400
        assert client.wire == "protobuf"
    finally:
        await client.close()
