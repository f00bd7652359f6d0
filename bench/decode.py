"""``python -m bench.decode``: decoding and projecting a 100k-pod LIST, and memory per pod.

Contract:

* The pods are the templates in bench/decode_pods.json (captured from the testbed's
  kube-apiserver: managedFields, defaulted spec, kubelet-shaped status), made unique per
  pod (name, run id, uid, resourceVersion, traceparent) with timestamps advancing one
  second per five pods, 90 % finished as in the cold-start scenario; served as LIST pages
  of `--page` pods (the reflector's page size). The same seed gives the same bytes.
* Speed: for each decoder, the CPU time (`time.process_time`) to turn every page's bytes
  into `PodView`s, split into decoding and projecting; the best of `--repeat` passes (the
  machine is shared: the minimum is the least disturbed). Pages are built before timing.
* Memory (`--memory`): for each decoder, in a fresh child process, the pods are decoded
  page by page and kept in a dict keyed by `PodView.key` (as the store keeps them); the
  report gives RSS growth per pod and, from tracemalloc, the heap the kept views hold.
* Decoders: ``stdlib`` (json.loads), ``orjson``, ``msgspec`` (untyped, like json.loads),
  and ``sniffer`` (what `sniffer.kube.decode_pod_list` does for the reflector). One that
  is not installed is reported as such, never an error.
"""

from __future__ import annotations

import argparse
import calendar
import gc
import json
import os
import random
import re
import subprocess
import sys
import time
import tracemalloc
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from sniffer.podview import PodView, project

TEMPLATES = Path(__file__).with_name("decode_pods.json")
DECODERS = ("stdlib", "orjson", "msgspec", "sniffer")
_STAMP = re.compile(rb'"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ)"')
_BASE = 1_767_225_600  # 2026-01-01T00:00:00Z

Decoder = Callable[[bytes], list[Any]]


def _decoder(name: str) -> Decoder | None:
    """Page bytes → the list of items `project` takes; None if not installed."""
    if name == "stdlib":
        return lambda body: json.loads(body)["items"]
    if name == "orjson":
        try:
            import orjson
        except ImportError:
            return None
        return lambda body: orjson.loads(body)["items"]
    if name == "msgspec":
        try:
            import msgspec
        except ImportError:
            return None
        return lambda body: msgspec.json.decode(body)["items"]
    import sniffer.kube as kube
    decode = getattr(kube, "decode_pod_list", None)
    if decode is None:  # a tree from before it existed decoded with the stdlib
        return lambda body: json.loads(body)["items"]
    return lambda body: decode(body, slim=True).items


class _Template:
    """One captured pod as byte segments between its per-pod values."""

    def __init__(self, pod: dict[str, Any]) -> None:
        meta = pod["metadata"]
        text = json.dumps(pod, separators=(",", ":")).encode()
        literal = {meta["labels"]["sniffer.io/run-id"].encode(): "run",
                   meta["uid"].encode(): "uid",
                   f'"resourceVersion":"{meta["resourceVersion"]}"'.encode(): "rv",
                   meta["annotations"]["sniffer.io/traceparent"].encode(): "trace"}
        pattern = re.compile(b"|".join([_STAMP.pattern, *map(re.escape, literal)]))
        stamps = [_seconds(m.group(1)) for m in _STAMP.finditer(text)]
        self.segments: list[bytes] = []
        self.slots: list[str | int] = []  # a value name, or a timestamp's offset
        last = 0
        for m in pattern.finditer(text):
            self.segments.append(text[last:m.start()])
            self.slots.append(int(_seconds(m.group(1)) - min(stamps)) if m.group(1)
                              else literal[m.group(0)])
            last = m.end()
        self.segments.append(text[last:])

    def render(self, values: dict[str, bytes], now: int) -> bytes:
        out = [self.segments[0]]
        for slot, segment in zip(self.slots, self.segments[1:], strict=True):
            out.append(values[slot] if isinstance(slot, str) else _stamp(now + slot))
            out.append(segment)
        return b"".join(out)


def _seconds(stamp: bytes) -> int:
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
            }, _BASE + i // 5))
        more = start + page < pods
        meta = (b'{"resourceVersion":"999999"' +
                (b',"continue":"token-%d"' % (start + page) if more else b"") + b"}")
        yield (b'{"kind":"PodList","apiVersion":"v1","metadata":' + meta + b',"items":[' +
               b",".join(items) + b"]}")


def time_decoder(decode: Decoder, bodies: list[bytes]) -> tuple[float, float, int]:
    """CPU seconds to decode and to project every page, and the pods projected."""
    decode_s = project_s = 0.0
    count = 0
    for body in bodies:
        t0 = time.process_time()
        items = decode(body)
        t1 = time.process_time()
        views = [project(item) for item in items]
        t2 = time.process_time()
        decode_s += t1 - t0
        project_s += t2 - t1
        count += len(views)
        del items, views
    return decode_s, project_s, count


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def memory_child(name: str, pods: int, page: int) -> dict[str, float]:
    """Run in a fresh process: keep every pod's view as the store does; bytes per pod."""
    decode = _decoder(name)
    assert decode is not None
    gc.collect()
    rss0 = _rss()
    cache: dict[str, PodView] = {}
    for body in pages(pods, page):  # each page is built, decoded and dropped in turn
        for item in decode(body):
            view = project(item)
            cache[view.key] = view
    gc.collect()
    rss1 = _rss()
    # The heap the kept views hold, measured apart (tracemalloc itself costs RSS).
    bodies = list(pages(min(pods, 20_000), page, seed=8))
    kept: dict[str, PodView] = {}
    tracemalloc.start()
    heap0 = tracemalloc.get_traced_memory()[0]
    for body in bodies:
        for item in decode(body):
            view = project(item)
            kept[view.key] = view
    del bodies, body
    gc.collect()
    heap1 = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    return {"pods": len(cache), "rss_per_pod": (rss1 - rss0) / len(cache),
            "heap_per_pod": (heap1 - heap0) / len(kept)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.decode", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pods", type=int, default=100_000)
    p.add_argument("--page", type=int, default=500)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--decoders", default=",".join(DECODERS))
    p.add_argument("--memory", action="store_true", help="also measure memory per pod")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(memory_child(args.child, args.pods, args.page)))
        return 0
    names = [n for n in args.decoders.split(",") if n]
    bodies = list(pages(args.pods, args.page))
    megabytes = sum(map(len, bodies)) / 1e6
    print(f"{args.pods:,} pods in {len(bodies)} pages of {args.page}, {megabytes:,.0f} MB "
          f"of JSON; CPU seconds, best of {args.repeat}")
    print(f"{'decoder':10} {'decode':>8} {'project':>8} {'total':>8} {'µs/pod':>8}")
    for name in names:
        decode = _decoder(name)
        if decode is None:
            print(f"{name:10} not installed")
            continue
        runs = [time_decoder(decode, bodies) for _ in range(args.repeat)]
        d, pr, n = min(runs, key=lambda r: r[0] + r[1])
        print(f"{name:10} {d:8.2f} {pr:8.2f} {d + pr:8.2f} {(d + pr) * 1e6 / n:8.1f}")
    if args.memory:
        del bodies
        print(f"\nmemory, {args.pods:,} pods kept by key (a fresh process per decoder; heap: "
              "tracemalloc over 20,000 of them)")
        print(f"{'decoder':10} {'RSS B/pod':>10} {'heap B/pod':>10}")
        for name in names:
            if _decoder(name) is None:
                continue
            out = subprocess.run(
                [sys.executable, "-m", "bench.decode", "--child", name, "--pods",
                 str(args.pods), "--page", str(args.page)],
                check=True, capture_output=True, text=True).stdout
            m = json.loads(out)
            print(f"{name:10} {m['rss_per_pod']:10.0f} {m['heap_per_pod']:10.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
