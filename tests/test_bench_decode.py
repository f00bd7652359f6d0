"""bench.decode: the synthetic LIST is shaped as the API server's, and every decoder it
compares gives the reflector the same views."""

from __future__ import annotations

import json

from bench.decode import DECODERS, PROTOBUF, _decoder, pages, proto_pages
from sniffer.podview import project


def test_pages_hold_unique_pods_ninety_percent_finished_with_a_continue_token():
    bodies = list(pages(40, 15))
    docs = [json.loads(body) for body in bodies]
    assert [len(d["items"]) for d in docs] == [15, 15, 10]
    assert [d["metadata"].get("continue") for d in docs] == ["token-15", "token-30", None]
    pods = [project(item) for d in docs for item in d["items"]]
    assert len({p.key for p in pods}) == len({p.uid for p in pods}) == 40
    assert len({p.traceparent for p in pods}) == 40
    assert sum(p.phase in ("Succeeded", "Failed") for p in pods) == 36
    assert pods[5].created_at == pods[0].created_at + 1  # five pods per second


def test_every_installed_decoder_gives_the_same_views():
    body = next(pages(30, 30))
    decoders = {name: decode for name in DECODERS
                if name not in PROTOBUF and (decode := _decoder(name)) is not None}
    assert {"stdlib", "msgspec", "sniffer"} <= decoders.keys()  # orjson is optional
    views = {name: [project(item) for item in decode(body)] for name, decode in decoders.items()}
    assert all(v == views["stdlib"] for v in views.values())


def test_the_protobuf_decoders_give_the_same_views_of_the_protobuf_pages():
    body = next(proto_pages(30, 30))
    views = {name: [project(item) for item in decode(body)] for name in PROTOBUF
             if (decode := _decoder(name)) is not None}
    assert views.keys() == PROTOBUF  # the pages themselves are built with upb's classes
    assert all(v == views["podproto"] for v in views.values())
    assert len({v.key for v in views["podproto"]}) == 30
