"""A result's plots: each point is a row's median, its bar or band the min-max of its trials.

Contract:

* `write(doc, out, stamp)` writes ``<stamp>-<name>.png`` for each plot the results have
  data for and returns the file names; [] when matplotlib is missing.
* ``latency-cdf``: one panel per scenario (steady: the highest rate every system ran), one
  curve per system: the median across its trials of each latency quantile, shaded
  between the trials' lowest and highest.
* ``steady``: sustained throughput and p99 against the offered load; ``platform-latency``:
  the steady p99 and the catch-up repairs/s at 0 and at the added platform latency;
  ``cold-memory``: RSS once synced and time until quiet against the existing pods. Each
  point the median of its row's trials, with a bar from the lowest to the highest.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.trials import Trial, group, pointwise, spread

ORDER = ["sniffer", "sniffer-finalizers", "sniffer-defaults", "sniffer-w256", "client-go",
         "client-go-json", "kopf", "baseline-serial"]
COLORS = {"sniffer": "#1f77b4", "sniffer-finalizers": "#17becf",
          "sniffer-defaults": "#e377c2", "sniffer-w256": "#9467bd", "client-go": "#2ca02c",
          "client-go-json": "#8c564b", "kopf": "#ff7f0e", "baseline-serial": "#d62728"}
LATENCY_TITLES = {"election": "Election night", "slow": "Slow platform: steady load",
                  "slow-burst": "Slow platform: election-night burst"}

_Save = Callable[[Any, str], None]
"""Writes one figure under a name and closes it."""


def order(system: str) -> tuple[int, str]:
    return (ORDER.index(system) if system in ORDER else 99, system)


def write(doc: dict[str, Any], out: Path, stamp: str) -> list[str]:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    written: list[str] = []

    def save(fig: Any, name: str) -> None:
        path = out / f"{stamp}-{name}.png"
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path.name)

    rows = group(doc["results"])
    for plot in (_latency_cdf, _steady, _platform_latency, _cold_memory):
        plot(plt, doc, rows, save)
    return written


def _rows(rows: list[list[Trial]], scenario: str) -> list[list[Trial]]:
    return [r for r in rows if r[0]["scenario"] == scenario]


def _points(ax: Any, xs: list[float], trials: list[list[Trial]],
            value: Callable[[Trial], float | None], system: str) -> None:
    """Medians joined by a line, each with a bar from its row's lowest to highest."""
    px, ys, below, above = [], [], [], []
    for x, row in zip(xs, trials, strict=True):
        s = spread(value(t) for t in row)
        if s is None:
            continue
        px.append(x)
        ys.append(s.median)
        below.append(s.median - s.lo)
        above.append(s.hi - s.median)
    if px:
        ax.errorbar(px, ys, yerr=[below, above], fmt="o-", capsize=3, label=system,
                    color=COLORS.get(system))


def _latency_cdf(plt: Any, doc: dict[str, Any], rows: list[list[Trial]], save: _Save) -> None:
    panels: list[tuple[str, list[list[Trial]]]] = []
    steady = _rows(rows, "steady")
    systems = {r[0]["system"] for r in steady}
    rates = sorted({r[0]["params"]["rate_jobs_per_s"] for r in steady})
    common = [rate for rate in rates if {r[0]["system"] for r in steady
                                         if r[0]["params"]["rate_jobs_per_s"] == rate} == systems]
    if common:
        panels.append((f"steady {common[-1]:g} jobs/s",
                       [r for r in steady if r[0]["params"]["rate_jobs_per_s"] == common[-1]]))
    for scenario, title in LATENCY_TITLES.items():
        if picked := _rows(rows, scenario):
            panels.append((title, picked))
    if not panels:
        return
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4), squeeze=False)
    for ax, (title, picked) in zip(axes[0], panels, strict=True):
        for row in sorted(picked, key=lambda r: order(r[0]["system"])):
            med, lo, hi = pointwise([t.get("latency_cdf_s") or [] for t in row])
            if not med:
                continue
            ys = [i / (len(med) - 1) for i in range(len(med))]
            color = COLORS.get(row[0]["system"])
            ax.plot([max(v, 1e-4) * 1000 for v in med], ys, color=color,
                    label=f"{row[0]['system']} (n={len(row)})")
            if len(row) > 1:
                ax.fill_betweenx(ys, [max(v, 1e-4) * 1000 for v in lo],
                                 [max(v, 1e-4) * 1000 for v in hi], color=color, alpha=0.15)
        ax.set_xscale("log")
        ax.set_xlabel("end-to-end latency (ms, log); band: trials' min-max")
        ax.set_ylabel("fraction of changes")
        ax.set_title(title, fontsize=10)
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    save(fig, "latency-cdf")


def _steady(plt: Any, doc: dict[str, Any], rows: list[list[Trial]], save: _Save) -> None:
    steady = _rows(rows, "steady")
    if not steady:
        return
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
    for system in sorted({r[0]["system"] for r in steady}, key=order):
        mine = sorted((r for r in steady if r[0]["system"] == system),
                      key=lambda r: r[0]["params"]["rate_jobs_per_s"])
        xs = [2 * r[0]["params"]["rate_jobs_per_s"] for r in mine]
        _points(a1, xs, mine, lambda t: t["throughput_per_s"] or 0, system)
        _points(a2, xs, mine, lambda t: (t["latency_s"]["p99"] or 0) * 1000, system)
    top = max(2 * r[0]["params"]["rate_jobs_per_s"] for r in steady)
    a1.plot([0, top], [0, top], ":", color="grey", label="offered")
    ceiling = (doc.get("ceiling") or {}).get("state_changes_per_s")
    if ceiling:
        for ax in (a1, a2):
            ax.axvline(ceiling, color="grey", linestyle="--", linewidth=0.8,
                       label="API server alone")
    a1.set_xlabel("offered load (state changes/s: 2 per job)")
    a1.set_ylabel("sustained throughput (changes/s)")
    a2.set_xlabel("offered load (state changes/s: 2 per job)")
    a2.set_ylabel("p99 latency (ms, log)")
    a2.set_yscale("log")
    for ax in (a1, a2):
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    save(fig, "steady")


def _row_at(rows: list[list[Trial]], scenario: str, system: str, ms: float,
            rate: float | None) -> list[Trial] | None:
    """`system`'s row in `scenario`: at `ms` of platform latency for the catch-up, at the
    `rate` for the steady and slow scenarios."""
    for row in rows:
        f = row[0]
        if f["scenario"] != scenario or f["system"] != system:
            continue
        if scenario == "catchup" and f["params"]["platform_latency_ms"] != ms:
            continue
        if scenario in ("steady", "slow") and f["params"]["rate_jobs_per_s"] != rate:
            continue
        return row
    return None


def _platform_latency(plt: Any, doc: dict[str, Any], rows: list[list[Trial]],
                      save: _Save) -> None:
    slow, catchup = _rows(rows, "slow"), _rows(rows, "catchup")
    if not (slow or catchup):
        return
    rate = slow[0][0]["params"]["rate_jobs_per_s"] if slow else None
    latency = max(r[0]["params"]["platform_latency_ms"] for r in slow + catchup)
    pairs = [p for p in (("steady", "slow", "p99 latency, steady load (ms, log)"),
                         ("catchup", "catchup", "catch-up throughput (repairs/s)"))
             if (slow if p[0] == "steady" else catchup)]
    fig, axes = plt.subplots(1, len(pairs), figsize=(5.5 * len(pairs), 4), squeeze=False)
    for ax, (fast, slower, ylabel) in zip(axes[0], pairs, strict=True):
        p99 = fast == "steady"
        for system in sorted({r[0]["system"] for r in _rows(rows, slower)}, key=order):
            found = [(x, row) for x, row in (
                (0.0, _row_at(rows, fast, system, 0.0, rate)),
                (latency, _row_at(rows, slower, system, latency, rate))) if row is not None]
            _points(ax, [x for x, _ in found], [row for _, row in found],
                    (lambda t: (t["latency_s"]["p99"] or 0) * 1000) if p99 else
                    (lambda t: t["repair_rate_per_s"] or 0), system)
        ax.set_xlabel("added platform latency (ms)")
        ax.set_ylabel(ylabel)
        if p99:
            ax.set_yscale("log")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    save(fig, "platform-latency")


def _cold_memory(plt: Any, doc: dict[str, Any], rows: list[list[Trial]], save: _Save) -> None:
    cold = _rows(rows, "cold")
    if not cold:
        return
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
    for system in sorted({r[0]["system"] for r in cold}, key=order):
        mine = sorted((r for r in cold if r[0]["system"] == system), key=lambda r: r[0]["pods"])
        xs = [r[0]["pods"] for r in mine]
        _points(a1, xs, mine, lambda t: t["rss_end"] / 2**20, system)
        _points(a2, xs, mine, lambda t: t["quiet_s"], system)
    a1.set_xlabel("existing pods")
    a1.set_ylabel("RSS once synced (MiB)")
    a2.set_xlabel("existing pods")
    a2.set_ylabel("cold start: time until quiet (s)")
    for ax in (a1, a2):
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    save(fig, "cold-memory")

