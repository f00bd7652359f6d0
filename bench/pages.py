"""The LIST pages the decode benchmarks read: captured pods made unique, as JSON.

Contract: the pods are the templates in bench/decode_pods.json (captured from the testbed's
kube-apiserver: managedFields, defaulted spec, kubelet-shaped status), made unique per pod
(name, run id, uid, resourceVersion, traceparent) with timestamps advancing one second per
five pods, 90 % finished as in the cold-start scenario, served as LIST pages of `page`
pods. The same seed gives the same bytes. `bench.protopages` renders the same pods as
protobuf.
"""

from __future__ import annotations

import calendar
import json
import random
import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["BASE", "STAMP", "TEMPLATES", "pages", "seconds"]

TEMPLATES = Path(__file__).with_name("decode_pods.json")
STAMP = re.compile(rb'"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ)"')
BASE = 1_767_225_600  # 2026-01-01T00:00:00Z


class _Template:
    """One captured pod as byte segments between its per-pod values."""

    def __init__(self, pod: dict[str, Any]) -> None:
        meta = pod["metadata"]
        text = json.dumps(pod, separators=(",", ":")).encode()
        literal = {meta["labels"]["sniffer.io/run-id"].encode(): "run",
                   meta["uid"].encode(): "uid",
                   f'"resourceVersion":"{meta["resourceVersion"]}"'.encode(): "rv",
                   meta["annotations"]["sniffer.io/traceparent"].encode(): "trace"}
        pattern = re.compile(b"|".join([STAMP.pattern, *map(re.escape, literal)]))
        stamps = [seconds(m.group(1)) for m in STAMP.finditer(text)]
        self.segments: list[bytes] = []
        self.slots: list[str | int] = []  # a value name, or a timestamp's offset
        last = 0
        for m in pattern.finditer(text):
            self.segments.append(text[last:m.start()])
            self.slots.append(int(seconds(m.group(1)) - min(stamps)) if m.group(1)
                              else literal[m.group(0)])
            last = m.end()
        self.segments.append(text[last:])

    def render(self, values: dict[str, bytes], now: int) -> bytes:
        out = [self.segments[0]]
        for slot, segment in zip(self.slots, self.segments[1:], strict=True):
            out.append(values[slot] if isinstance(slot, str) else _stamp(now + slot))
            out.append(segment)
        return b"".join(out)


def seconds(stamp: bytes) -> int:
    return int(calendar.timegm(time.strptime(stamp.decode(), "%Y-%m-%dT%H:%M:%SZ")))


def _stamp(seconds: int) -> bytes:
    return time.strftime('"%Y-%m-%dT%H:%M:%SZ"', time.gmtime(seconds)).encode()


def pages(pods: int, page: int, seed: int = 7) -> Iterator[bytes]:
    """The LIST pages of a namespace of `pods` pods, as the API server sends them."""
    doc = json.loads(TEMPLATES.read_text())
    finished = [_Template(p) for p in doc["finished"]]
    running = [_Template(p) for p in doc["running"]]
    rng = random.Random(seed)
    for start in range(0, pods, page):
        items = []
        for i in range(start, min(pods, start + page)):
            pool = running if i % 10 == 9 else finished
            items.append(pool[i // 10 % len(pool)].render({
                "run": b"bench-%06d" % i,
                "uid": str(uuid.UUID(int=rng.getrandbits(128))).encode(),
                "rv": b'"resourceVersion":"%d"' % (1_000_000 + i),
                "trace": b"00-%032x-%016x-01" % (rng.getrandbits(128), rng.getrandbits(64)),
            }, BASE + i // 5))
        more = start + page < pods
        meta = (b'{"resourceVersion":"999999"' +
                (b',"continue":"token-%d"' % (start + page) if more else b"") + b"}")
        yield (b'{"kind":"PodList","apiVersion":"v1","metadata":' + meta + b',"items":[' +
               b",".join(items) + b"]}")
