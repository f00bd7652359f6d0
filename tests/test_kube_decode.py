"""Watch-line decoding: lines of any length, typed errors, nothing else escapes."""

from __future__ import annotations

import asyncio
import contextlib
import json

import aiohttp
import pytest
from aiohttp.base_protocol import BaseProtocol
from hypothesis import given
from hypothesis import strategies as st

from sniffer.kube import Gone, KubeError, MalformedEvent, WatchEvent, _lines, decode_event


def feed(chunks: list[bytes]) -> aiohttp.StreamReader:
    loop = asyncio.get_running_loop()
    reader = aiohttp.StreamReader(BaseProtocol(loop), 2**30, loop=loop)  # never pauses
    for chunk in chunks:
        reader.feed_data(chunk)
    reader.feed_eof()
    return reader


async def collect(chunks: list[bytes]) -> list[bytes]:
    return [line async for line in _lines(feed(chunks), 1.0)]


async def test_a_line_far_longer_than_aiohttps_readline_limit_is_one_line():
    big = json.dumps({"type": "ADDED", "object": {"metadata": {
        "annotations": {"x": "y" * 1_000_000}}}}).encode()
    lines = await collect([big[i:i + 5000] for i in range(0, len(big), 5000)] + [b"\n"])
    assert lines == [big]


@given(st.lists(st.binary(min_size=1, max_size=50).filter(lambda b: b"\n" not in b),
                min_size=1, max_size=20), st.integers(min_value=1, max_value=64))
def test_lines_are_the_same_however_the_stream_is_chunked(lines, size):
    data = b"\n".join(lines) + b"\n"
    chunks = [data[i:i + size] for i in range(0, len(data), size)]
    assert asyncio.run(collect(chunks)) == lines


def test_bookmark_and_object_events_decode():
    event = decode_event(b'{"type":"BOOKMARK","object":{"metadata":{"resourceVersion":"7"}}}')
    assert event == WatchEvent("BOOKMARK", {"metadata": {"resourceVersion": "7"}})


@pytest.mark.parametrize("line", [
    b'{"type":"ERROR","object":{"kind":"Status","code":410,"reason":"Expired"}}',
    b'{"type":"ERROR","object":{"kind":"Status","reason":"Gone","message":"too old"}}',
])
def test_error_event_with_410_raises_gone(line):
    with pytest.raises(Gone):
        decode_event(line)


def test_other_error_events_raise_a_kube_error_with_the_code():
    with pytest.raises(KubeError) as info:
        decode_event(b'{"type":"ERROR","object":{"code":500,"message":"boom"}}')
    assert info.value.status == 500 and not isinstance(info.value, Gone)


@given(st.binary(max_size=200))
def test_arbitrary_bytes_decode_or_raise_only_typed_errors(line):
    with contextlib.suppress(KubeError):
        decode_event(line)


@pytest.mark.parametrize("line", [b"not json", b"[1,2]", b'{"type":"ADDED"}',
                                  b'{"type":1,"object":{}}', b"[" * 100_000])
def test_malformed_lines_raise_malformed_event(line):
    with pytest.raises(MalformedEvent):
        decode_event(line)
