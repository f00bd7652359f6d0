"""Results on disk: `<stamp>.json` (everything), `<stamp>.md` (tables), `<stamp>-*.png` (plots).

Contract:

* `write(results, out_dir, stamp)` writes the three kinds of files and returns their paths;
  plots are skipped (with a note in the markdown) when matplotlib is missing.
* The markdown has one table per scenario, one row per system (and parameter), the same
  columns everywhere: latency p50/p90/p99/max in ms, sustained throughput and the offered
  rate in state changes/s, CPU seconds per 1,000 changes, peak RSS, dropped or wrong.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

ORDER = ["sniffer", "sniffer-finalizers", "sniffer-w256", "client-go", "client-go-json",
         "kopf", "baseline-serial"]
COLORS = {"sniffer": "#1f77b4", "sniffer-finalizers": "#17becf", "sniffer-w256": "#9467bd",
          "client-go": "#2ca02c", "client-go-json": "#8c564b", "kopf": "#ff7f0e",
          "baseline-serial": "#d62728"}


def _ms(v: float | None) -> str:
    return "-" if v is None else (f"{v * 1000:.0f}" if v * 1000 >= 10 else f"{v * 1000:.1f}")


def _num(v: float | None, fmt: str = "{:.0f}") -> str:
    return "-" if v is None else fmt.format(v)


def _mib(v: float | None) -> str:
    return "-" if not v else f"{v / 2**20:.0f}"


def _key(f: dict[str, Any]) -> tuple[int, str]:
    s = f["system"]
    return (ORDER.index(s) if s in ORDER else 99, s)


def _params(p: dict[str, Any]) -> str:
    names = {"rate_jobs_per_s": "jobs/s", "platform_latency_ms": "ms platform",
             "jobs": "jobs", "window_s": "s window"}
    return ", ".join(f"{v:g} {names.get(k, k)}" for k, v in p.items()
                     if isinstance(v, (int, float)) and not (k == "platform_latency_ms"
                                                             and v == 0))


TRIAL_HEADER = ("| system | load | p50 ms | p90 ms | p99 ms | max ms | throughput /s "
                "(offered) | CPU s / 1k changes | peak RSS MiB | dropped or wrong | "
                "platform requests | cores: system / API server / other sessions |\n"
                "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|")


def trial_row(f: dict[str, Any]) -> str:
    lat = f["latency_s"]
    bad = f["wrong"] + f["missing"]
    late = f["not_acknowledged_at_end"]
    bad_text = f"{bad}" + (f" ({late} late)" if late else "")
    return (f"| {f['system']} | {_params(f['params'])} | {_ms(lat['p50'])} | {_ms(lat['p90'])} "
            f"| {_ms(lat['p99'])} | {_ms(lat['max'])} | {_num(f['throughput_per_s'])} "
            f"({f['offered_per_s']:.0f}) | {_num(f['cpu_s_per_1000'], '{:.2f}')} | "
            f"{_mib(f['peak_rss'])} | {bad_text} | {f['platform_requests']} | "
            f"{_cores(f)} |")


def _cores(f: dict[str, Any]) -> str:
    c = f.get("cpu_cores") or {}
    if not c:
        return "-"
    return f"{c['system']:.2f} / {c['apiserver']:.2f} / {c['others']:.2f}"


COLD_HEADER = ("| system | pods | synced (ready) s | wrong runs repaired s | quiet s | "
               "platform requests | updates applied | CPU s | RSS MiB | bytes / pod | "
               "wrong at end |\n|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|")


def cold_row(f: dict[str, Any]) -> str:
    done = "" if f["done"] else f" (not done in {f['timeout_s']:.0f} s)"
    return (f"| {f['system']}{done} | {f['pods']} | {_num(f['ready_s'], '{:.1f}')} | "
            f"{_num(f['repaired_s'], '{:.1f}')} | {_num(f['quiet_s'], '{:.1f}')} | "
            f"{f['platform_requests']} | {f['platform_updates_applied']} | "
            f"{_num(f['cpu_s'], '{:.1f}')} | {_mib(f['rss_end'])} | "
            f"{_num(f['bytes_per_pod'])} | {f['wrong']} |")


CATCHUP_HEADER = ("| system | platform latency ms | runs behind | all repaired after s | "
                  "repairs /s | platform requests | CPU s | wrong at end |\n"
                  "|---|--:|--:|--:|--:|--:|--:|--:|")


def catchup_row(f: dict[str, Any]) -> str:
    done = "" if f["done"] else f" (not done in {f['timeout_s']:.0f} s)"
    return (f"| {f['system']}{done} | {f['params']['platform_latency_ms']:g} | {f['pods']} | "
            f"{_num(f['repaired_s'], '{:.1f}')} | {_num(f['repair_rate_per_s'])} | "
            f"{f['platform_requests']} | {_num(f['cpu_s'], '{:.1f}')} | {f['wrong']} |")


TITLES = {
    "steady": "a. Steady load at increasing rates",
    "election": "b. Election night",
    "slow": "c. Slow platform (+200 ms per call): steady load",
    "slow-burst": "c. Slow platform (+200 ms per call): election-night burst",
    "catchup": "c. Slow platform: catching up on runs that are all behind",
    "cold": "d + e. Cold start and memory per cached pod",
}


def markdown(doc: dict[str, Any], plots: list[str]) -> str:
    results = doc["results"]
    by: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for f in results:
        by[f["scenario"]].append(f)
    m = doc["machine"]
    c = doc.get("ceiling") or {}
    lines = [f"# Benchmark results {doc['stamp']}", "",
             f"Machine: {m['cores']} cores, {m['memory_gib']:.0f} GiB; API server, etcd, "
             "platform, load generator and the system under test share these cores. "
             f"Load average {m['loadavg_start']:.1f} at the start, "
             f"{m['loadavg_end']:.1f} at the end. Commit {doc['commit']}. "
             f"Mode: {'quick' if doc['quick'] else 'full'}. Duration {doc['duration_s']:.0f} s.",
             ""]
    if c:
        lines += [f"API server alone (nothing watching): {c['jobs_per_s']:.0f} jobs/s = "
                  f"{c['state_changes_per_s']:.0f} run-state changes/s ({c['writes_per_s']:.0f} "
                  f"pod writes/s, {c['apiserver_cores']:.2f} cores); "
                  f"{c['status_updates_per_s']:.0f} bare final-status updates/s.", ""]
    for scenario in ("steady", "election", "slow", "slow-burst"):
        rows = by.get(scenario)
        if not rows:
            continue
        lines += [f"## {TITLES[scenario]}", "", TRIAL_HEADER]
        rows.sort(key=lambda f: (sorted((k, v) for k, v in f["params"].items()
                                        if isinstance(v, (int, float))), _key(f)))
        lines += [trial_row(f) for f in rows]
        lines.append("")
    if by.get("catchup"):
        lines += [f"## {TITLES['catchup']}", "", CATCHUP_HEADER]
        lines += [catchup_row(f) for f in sorted(
            by["catchup"], key=lambda f: (f["params"]["platform_latency_ms"], _key(f)))]
        lines.append("")
    if by.get("cold"):
        lines += [f"## {TITLES['cold']}", "", COLD_HEADER]
        lines += [cold_row(f) for f in sorted(by["cold"], key=lambda f: (f["pods"], _key(f)))]
        lines.append("")
    if plots:
        lines += ["## Plots", ""] + [f"![{p}]({p})" for p in plots] + [""]
    return "\n".join(lines)


_Save = Callable[[Any, str], None]
"""Writes one figure under a name and closes it."""


def _plots(doc: dict[str, Any], out: Path, stamp: str) -> list[str]:
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

    for figure in (_latency_cdf, _steady, _platform_latency, _cold_memory):
        figure(plt, doc, save)
    return written


def _latency_cdf(plt: Any, doc: dict[str, Any], save: _Save) -> None:
    """Latency CDF per system, one panel per scenario (steady: the highest rate all ran)."""
    results = doc["results"]
    panels: list[tuple[str, list[dict[str, Any]]]] = []
    steady = [f for f in results if f["scenario"] == "steady"]
    systems = {f["system"] for f in steady}
    common = [r for r in sorted({f["params"]["rate_jobs_per_s"] for f in steady})
              if {f["system"] for f in steady if f["params"]["rate_jobs_per_s"] == r}
              == systems]
    if common:
        rate = common[-1]
        panels.append((f"steady {rate:g} jobs/s",
                       [f for f in steady if f["params"]["rate_jobs_per_s"] == rate]))
    for scenario in ("election", "slow", "slow-burst"):
        rows = [f for f in results if f["scenario"] == scenario]
        if rows:
            panels.append((TITLES[scenario].split(". ", 1)[1], rows))
    if panels:
        fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4), squeeze=False)
        for ax, (title, rows) in zip(axes[0], panels, strict=True):
            for f in sorted(rows, key=_key):
                points = f.get("latency_cdf_s") or []
                if points:
                    ys = [i / (len(points) - 1) for i in range(len(points))]
                    ax.plot([max(p, 1e-4) * 1000 for p in points], ys, label=f["system"],
                            color=COLORS.get(f["system"]))
            ax.set_xscale("log")
            ax.set_xlabel("end-to-end latency (ms, log)")
            ax.set_ylabel("fraction of changes")
            ax.set_title(title, fontsize=10)
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize=8)
        save(fig, "latency-cdf")



def _steady(plt: Any, doc: dict[str, Any], save: _Save) -> None:
    """Throughput and p99 against the offered load, steady scenario."""
    results = doc["results"]
    steady = [f for f in results if f["scenario"] == "steady"]
    systems = {f["system"] for f in steady}
    if steady:
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
        for system in sorted(systems, key=lambda s: _key({"system": s})):
            rows = sorted((f for f in steady if f["system"] == system),
                          key=lambda f: f["params"]["rate_jobs_per_s"])
            xs = [2 * f["params"]["rate_jobs_per_s"] for f in rows]
            a1.plot(xs, [f["throughput_per_s"] or 0 for f in rows], "o-", label=system,
                    color=COLORS.get(system))
            a2.plot(xs, [(f["latency_s"]["p99"] or 0) * 1000 for f in rows], "o-",
                    label=system, color=COLORS.get(system))
        top = max(2 * f["params"]["rate_jobs_per_s"] for f in steady)
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



def _platform_latency(plt: Any, doc: dict[str, Any], save: _Save) -> None:
    """Against platform latency: the same load at 0 and +200 ms."""
    results = doc["results"]
    pairs = [("steady", "slow", "p99 latency, steady load (ms, log)", "p99"),
             ("catchup", "catchup", "catch-up throughput (repairs/s)", "rate")]
    slow_rows = [f for f in results if f["scenario"] == "slow"]
    catchup_rows = [f for f in results if f["scenario"] == "catchup"]
    if slow_rows or catchup_rows:
        rate = slow_rows[0]["params"]["rate_jobs_per_s"] if slow_rows else None
        latency = max(f["params"]["platform_latency_ms"] for f in slow_rows + catchup_rows)
        pairs = [p for p in pairs if (slow_rows if p[0] == "steady" else catchup_rows)]
        fig, axes = plt.subplots(1, len(pairs), figsize=(5.5 * len(pairs), 4), squeeze=False)
        for ax, (fast, slow, ylabel, what) in zip(axes[0], pairs, strict=True):
            for system in sorted({f["system"] for f in results if f["scenario"] == slow
                                  or (f["scenario"] == fast and what != "p99")},
                                 key=lambda s: _key({"system": s})):
                xs, ys = [], []
                for x, picked in ((0.0, _pick(results, fast, system, 0.0, rate)),
                                  (latency, _pick(results, slow, system, latency, rate))):
                    if picked is None:
                        continue
                    y = (picked["latency_s"]["p99"] or 0) * 1000 if what == "p99" else (
                        picked["repair_rate_per_s"] or 0)
                    xs.append(x)
                    ys.append(y)
                ax.plot(xs, ys, "o-", label=system, color=COLORS.get(system))
            ax.set_xlabel("added platform latency (ms)")
            ax.set_ylabel(ylabel)
            if what == "p99":
                ax.set_yscale("log")
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize=8)
        save(fig, "platform-latency")



def _pick(results: list[dict[str, Any]], scenario: str, system: str, ms: float,
          rate: float | None) -> dict[str, Any] | None:
    """The result of `system` in `scenario`: at `ms` of platform latency for catch-up, at
    the `rate` for the steady and slow scenarios."""
    for f in results:
        if f["scenario"] != scenario or f["system"] != system:
            continue
        if scenario == "catchup" and f["params"]["platform_latency_ms"] != ms:
            continue
        if scenario in ("steady", "slow") and f["params"]["rate_jobs_per_s"] != rate:
            continue
        return f
    return None


def _cold_memory(plt: Any, doc: dict[str, Any], save: _Save) -> None:
    """Memory and time to quiet against the number of existing pods."""
    results = doc["results"]
    cold = [f for f in results if f["scenario"] == "cold"]
    if cold:
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
        for system in sorted({f["system"] for f in cold}, key=lambda s: _key({"system": s})):
            rows = sorted((f for f in cold if f["system"] == system), key=lambda f: f["pods"])
            a1.plot([f["pods"] for f in rows], [f["rss_end"] / 2**20 for f in rows], "o-",
                    label=system, color=COLORS.get(system))
            a2.plot([f["pods"] for f in rows], [f["quiet_s"] or float("nan") for f in rows],
                    "o-", label=system, color=COLORS.get(system))
        a1.set_xlabel("existing pods")
        a1.set_ylabel("RSS once synced (MiB)")
        a2.set_xlabel("existing pods")
        a2.set_ylabel("cold start: time until quiet (s)")
        for ax in (a1, a2):
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize=8)
        save(fig, "cold-memory")


def main(argv: list[str] | None = None) -> int:
    """``python -m bench.report RESULT.json``: render its markdown and plots again."""
    import sys

    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m bench.report RESULT.json", file=sys.stderr)
        return 2
    path = Path(args[0])
    for written in write(json.loads(path.read_text()), path.parent):
        print(written)
    return 0


def write(doc: dict[str, Any], out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    stamp = doc["stamp"]
    plots = _plots(doc, out, stamp)
    json_path = out / f"{stamp}.json"
    json_path.write_text(json.dumps(doc, indent=1, sort_keys=True, default=str) + "\n")
    md_path = out / f"{stamp}.md"
    md_path.write_text(markdown(doc, plots))
    return [json_path, md_path, *(out / p for p in plots)]


if __name__ == "__main__":
    raise SystemExit(main())
