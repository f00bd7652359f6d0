"""``python -m bench.decode``: decoding and projecting a 100k-pod LIST, and memory per pod.

Contract:

* The pods are `bench.pages`' (captured pods made unique, 90 % finished), served as LIST
  pages of `--page` pods (the reflector's page size); `bench.protopages` gives the same
  pods as protobuf pages.
* Speed: for each decoder, the CPU time (`time.process_time`) to turn every page's bytes
  into `PodView`s, split into decoding and projecting; the best of `--repeat` passes (the
  machine is shared: the minimum is the least disturbed), the decoders' passes taken in
  turn so that a busy spell falls on all of them. Pages are built before timing.
* Memory (`--memory`): for each decoder, in a fresh child process, the pods are decoded
  page by page and kept in a dict keyed by `PodView.key` (as the store keeps them); the
  report gives RSS growth per pod and, from tracemalloc, the heap the kept views hold.
* Decoders: ``stdlib`` (json.loads), ``orjson``, ``msgspec`` (untyped, like json.loads),
  and ``sniffer`` (what `sniffer.kubedecode.decode_pod_list` does for the reflector) read the
  JSON pages; ``upb`` (classes protoc generates from k8s.io/api's generated.proto, on
  PyPI protobuf's upb backend, read into the slim dicts) and ``podproto`` (the skipping
  decoder, `sniffer.podproto`) read the same pods as the API server's protobuf pages
  (the ``k8s\\0`` envelope around a PodList). One that is not installed is reported as
  such, never an error.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import json
import os
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Callable, Iterator
from typing import Any

from bench.pages import pages
from bench.protopages import UpbSlim, proto_pages
from sniffer.podview import PodView, project

__all__ = ["DECODERS", "PROTOBUF", "pages", "proto_pages"]

DECODERS = ("stdlib", "orjson", "msgspec", "sniffer", "upb", "podproto")
PROTOBUF = frozenset({"upb", "podproto"})  # decoders of the protobuf pages

Decoder = Callable[[bytes], list[Any]]


def _decoder(name: str) -> Decoder | None:
    """Page bytes → the list of items `project` takes; None if not installed."""
    if name in PROTOBUF:
        return _protobuf_decoder(name)
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
    try:  # where it lives now; an older tree kept it in sniffer.kube
        kube = importlib.import_module("sniffer.kubedecode")
    except ImportError:
        kube = importlib.import_module("sniffer.kube")
    decode = getattr(kube, "decode_pod_list", None)
    if decode is None:  # a tree from before it existed decoded with the stdlib
        return lambda body: json.loads(body)["items"]
    return lambda body: decode(body, slim=True).items


def _protobuf_decoder(name: str) -> Decoder | None:
    if name == "podproto":
        from sniffer.podproto import proto_list
        return lambda body: proto_list(body)["items"]
    try:
        return UpbSlim().decode
    except (ImportError, RuntimeError, OSError, subprocess.CalledProcessError):
        return None


def _pages_for(name: str, pods: int, page: int, seed: int = 7) -> Iterator[bytes]:
    """The pages decoder `name` reads: protobuf for the protobuf decoders, else JSON."""
    return (proto_pages if name in PROTOBUF else pages)(pods, page, seed)


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


def _interleaved(names: list[str], wires: dict[str, list[bytes]], repeat: int,
                 ) -> dict[str, list[tuple[float, float, int]]]:
    """`repeat` timed passes of each decoder (none for one not installed), in turn."""
    decoders = {name: _decoder(name) for name in names}
    runs: dict[str, list[tuple[float, float, int]]] = {name: [] for name in names}
    for _ in range(repeat):  # passes interleaved: a busy spell hits every decoder
        for name, decode in decoders.items():
            wire = "protobuf" if name in PROTOBUF else "json"
            if decode is not None and wire in wires:
                runs[name].append(time_decoder(decode, wires[wire]))
    return runs


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
    for body in _pages_for(name, pods, page):  # each page is built, decoded, dropped
        for item in decode(body):
            view = project(item)
            cache[view.key] = view
    gc.collect()
    rss1 = _rss()
    # The heap the kept views hold, measured apart (tracemalloc itself costs RSS).
    bodies = list(_pages_for(name, min(pods, 20_000), page, seed=8))
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
    wires = {"json": list(pages(args.pods, args.page))}
    if PROTOBUF & set(names) and _decoder("upb") is not None:  # upb builds the pages
        wires["protobuf"] = list(proto_pages(args.pods, args.page))
    bodies = wires["json"]
    megabytes = sum(map(len, bodies)) / 1e6
    print(f"{args.pods:,} pods in {len(bodies)} pages of {args.page}, {megabytes:,.0f} MB "
          f"of JSON; CPU seconds, best of {args.repeat}")
    if "protobuf" in wires:
        print(f"(protobuf decoders: the same pods in {sum(map(len, wires['protobuf'])) / 1e6:,.0f}"
              " MB of protobuf)")
    print(f"{'decoder':10} {'decode':>8} {'project':>8} {'total':>8} {'µs/pod':>8}")
    runs = _interleaved(names, wires, args.repeat)
    for name in names:
        if not runs[name]:
            print(f"{name:10} not installed")
            continue
        d, pr, n = min(runs[name], key=lambda r: r[0] + r[1])
        print(f"{name:10} {d:8.2f} {pr:8.2f} {d + pr:8.2f} {(d + pr) * 1e6 / n:8.1f}")
    if args.memory:
        del bodies, wires
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
