"""Sampling profiles of a system under test (py-spy), and where their time goes.

Contract:

* `Profiler.attach(pid, path)` starts ``py-spy record --format raw`` on a running Python
  process (non-blocking sampling, idle frames excluded), `stop()` ends it with SIGINT so
  that it writes the collapsed stacks to `path`. If py-spy is missing or cannot attach,
  `attach` returns None and the trial goes on unprofiled.
* `summarise(raw)` reads collapsed stacks ("frame;frame;... count") and returns the top
  functions by self samples and by inclusive samples, and the share of samples per
  top-level area (the first project or library module met from the leaf up), as text.
* `flamegraph(raw, svg)` renders the collapsed stacks as a static SVG flame graph.
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^:()]+)(?::(?P<line>\d+))?\)$")
_OURS = ("sniffer/", "watch/", "config/", "reconcile/")


def _py_spy() -> str | None:
    candidate = Path(sys.executable).with_name("py-spy")
    return str(candidate) if candidate.exists() else shutil.which("py-spy")


class Profiler:
    def __init__(self, proc: subprocess.Popen[bytes], path: Path) -> None:
        self.proc = proc
        self.path = path

    @classmethod
    def attach(cls, pid: int, path: Path, rate: int = 100) -> Profiler | None:
        exe = _py_spy()
        if exe is None:
            return None
        log = open(path.with_suffix(".log"), "wb")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen([exe, "record", "--pid", str(pid), "--format", "raw",
                                 "--rate", str(rate), "--nonblocking", "-o", str(path)],
                                stdout=log, stderr=subprocess.STDOUT)
        return cls(proc, path)

    def stop(self) -> Path | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.path if self.path.exists() else None


def _stacks(raw: Path) -> list[tuple[list[str], int]]:
    stacks = []
    for line in raw.read_text(errors="replace").splitlines():
        frames, _, count = line.rpartition(" ")
        if frames and count.isdigit():
            stacks.append((frames.split(";"), int(count)))
    return stacks


def _name(frame: str) -> str:
    m = _FRAME.match(frame)
    if not m:
        return frame
    return f"{m['func']} ({m['file']})"


def _area(frames: list[str]) -> str:
    """The first of our modules from the leaf up, else the leaf's library."""
    for frame in reversed(frames):
        m = _FRAME.match(frame)
        if m and m["file"].startswith(_OURS):
            return m["file"]
    m = _FRAME.match(frames[-1]) if frames else None
    return (m["file"].split("/")[0] if m else "?") + " (library, leaf)"


def summarise(raw: Path, top: int = 25) -> str:
    stacks = _stacks(raw)
    total = sum(c for _, c in stacks) or 1
    self_time: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    ours: Counter[str] = Counter()
    for frames, count in stacks:
        self_time[_name(frames[-1])] += count
        for name in {_name(f) for f in frames}:
            inclusive[name] += count
        ours[_area(frames)] += count
    lines = [f"{total} samples", "", "Top functions by self samples:"]
    lines += [f"  {100 * c / total:5.1f}%  {n}" for n, c in self_time.most_common(top)]
    lines += ["", "Top functions by inclusive samples:"]
    lines += [f"  {100 * c / total:5.1f}%  {n}" for n, c in inclusive.most_common(top)]
    lines += ["", "Samples by the nearest project module (else the leaf's library):"]
    lines += [f"  {100 * c / total:5.1f}%  {n}" for n, c in ours.most_common(top)]
    return "\n".join(lines) + "\n"


def flamegraph(raw: Path, svg: Path) -> Path | None:
    """An SVG flame graph of the collapsed stacks (a minimal renderer of our own)."""
    stacks = _stacks(raw)
    if not stacks:
        return None
    counts: Counter[tuple[str, ...]] = Counter()
    for frames, count in stacks:
        for depth in range(1, len(frames) + 1):
            counts[tuple(frames[:depth])] += count
    total = sum(c for _, c in stacks)
    width, row = 1600, 16
    depth_max = max(len(f) for f, _ in stacks)
    rects: list[str] = []
    offsets: dict[tuple[str, ...], float] = {(): 0.0}
    for path in sorted(counts, key=lambda p: (len(p), p)):
        parent = path[:-1]
        x = offsets.get(parent, 0.0)
        w = counts[path] / total * width
        offsets[parent] = x + w
        offsets[path] = x
        if w < 0.5:
            continue
        y = (depth_max - len(path)) * row
        label = _name(path[-1])
        pct = 100 * counts[path] / total
        text = label if w > 7 * len(label) else label[: max(0, int(w / 7) - 1)]
        hue = 20 + (hash(label) % 40)
        rects.append(
            f'<g><title>{_esc(label)} ({pct:.1f}%)</title><rect x="{x:.1f}" y="{y}" '
            f'width="{w:.1f}" height="{row - 1}" fill="hsl({hue},80%,60%)"/>'
            f'<text x="{x + 2:.1f}" y="{y + row - 4}" font-size="11">{_esc(text)}</text></g>')
    height = (depth_max + 1) * row
    svg.write_text(f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
                   f'font-family="monospace">{"".join(rects)}</svg>\n')
    return svg


def _esc(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")

