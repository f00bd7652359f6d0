"""Results on disk: `<stamp>.json` (every trial), `<stamp>.md` (tables), `<stamp>-*.png` (plots).

Contract:

* `write(doc, out_dir)` writes the three kinds of files and returns their paths; plots
  (bench.plots) are skipped, with no note, when matplotlib is missing.
* The JSON keeps every trial's raw figures: `results` holds one dict per trial, with its
  `trial` index; `trials` is N, `scenario_s` the wall time of each scenario.
* The markdown has one table per scenario and one row per system (and parameters), made of
  that row's trials (bench.trials.group): every figure is the median across the trials
  with their min-max in brackets ("45 (30-60)"; the median alone when they agree), and
  column n says how many trials the row has. Trial columns, the same everywhere: latency
  p50/p90/p99/max in ms, sustained throughput and the offered rate in state changes/s,
  the system's CPU seconds per 1,000 changes, the API server's CPU seconds per 1,000
  accepted changes while the system watched, peak RSS, dropped or wrong, platform
  requests, cores.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

from bench import plots
from bench.trials import Trial, cell, figure, group


def _ms(v: float) -> str:
    return f"{v:.0f}" if abs(v) >= 10 else f"{v:.1f}"


def _params(p: dict[str, Any]) -> str:
    names = {"rate_jobs_per_s": "jobs/s", "platform_latency_ms": "ms platform",
             "jobs": "jobs", "window_s": "s window"}
    return ", ".join(f"{v:g} {names.get(k, k)}" for k, v in p.items()
                     if isinstance(v, (int, float)) and not (k == "platform_latency_ms"
                                                             and v == 0))


def _c(row: list[Trial], path: str, fmt: str = ".0f", scale: float = 1.0) -> str:
    return cell((None if v is None else v * scale for v in figure(row, path)), fmt)


def _ms_cell(row: list[Trial], path: str) -> str:
    return cell((None if v is None else v * 1000 for v in figure(row, path)), _ms)


TRIAL_HEADER = ("| system | load | n | p50 ms | p90 ms | p99 ms | max ms | throughput /s | "
                "offered /s | CPU s / 1k changes | API server CPU s / 1k changes | "
                "peak RSS MiB | dropped or wrong | platform requests | "
                "cores: system / API server / other sessions |\n"
                "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|")


def trial_row(row: list[Trial]) -> str:
    f = row[0]
    bad = cell(t["wrong"] + t["missing"] for t in row)
    late = [t["not_acknowledged_at_end"] for t in row]
    bad_text = bad + (f" ({cell(late)} late)" if any(late) else "")
    cores = " / ".join(_c(row, f"cpu_cores.{k}", ".2f") for k in ("system", "apiserver",
                                                                   "others"))
    return (f"| {f['system']} | {_params(f['params'])} | {len(row)} | "
            f"{_ms_cell(row, 'latency_s.p50')} | {_ms_cell(row, 'latency_s.p90')} | "
            f"{_ms_cell(row, 'latency_s.p99')} | {_ms_cell(row, 'latency_s.max')} | "
            f"{_c(row, 'throughput_per_s')} | {_c(row, 'offered_per_s')} | "
            f"{_c(row, 'cpu_s_per_1000', '.2f')} | "
            f"{_c(row, 'apiserver_cpu_s_per_1000', '.2f')} | "
            f"{_c(row, 'peak_rss', '.0f', 2**-20)} | {bad_text} | "
            f"{_c(row, 'platform_requests')} | {cores} |")


def _not_done(row: list[Trial]) -> str:
    late = sum(not t["done"] for t in row)
    return "" if not late else f" ({late} of {len(row)} not done in {row[0]['timeout_s']:.0f} s)"


COLD_HEADER = ("| system | pods | n | synced (ready) s | wrong runs repaired s | quiet s | "
               "platform requests | updates applied | CPU s | API server CPU s | RSS MiB | "
               "bytes / pod | wrong at end |\n"
               "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|")


def cold_row(row: list[Trial]) -> str:
    f = row[0]
    return (f"| {f['system']}{_not_done(row)} | {f['pods']} | {len(row)} | "
            f"{_c(row, 'ready_s', '.1f')} | {_c(row, 'repaired_s', '.1f')} | "
            f"{_c(row, 'quiet_s', '.1f')} | {_c(row, 'platform_requests')} | "
            f"{_c(row, 'platform_updates_applied')} | {_c(row, 'cpu_s', '.1f')} | "
            f"{_c(row, 'apiserver_cpu_s', '.1f')} | {_c(row, 'rss_end', '.0f', 2**-20)} | "
            f"{_c(row, 'bytes_per_pod')} | {_c(row, 'wrong')} |")


CATCHUP_HEADER = ("| system | platform latency ms | runs behind | n | all repaired after s | "
                  "repairs /s | platform requests | CPU s | API server CPU s | "
                  "wrong at end |\n|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|")


def catchup_row(row: list[Trial]) -> str:
    f = row[0]
    return (f"| {f['system']}{_not_done(row)} | {f['params']['platform_latency_ms']:g} | "
            f"{f['pods']} | {len(row)} | {_c(row, 'repaired_s', '.1f')} | "
            f"{_c(row, 'repair_rate_per_s')} | {_c(row, 'platform_requests')} | "
            f"{_c(row, 'cpu_s', '.1f')} | {_c(row, 'apiserver_cpu_s', '.1f')} | "
            f"{_c(row, 'wrong')} |")


TITLES = {
    "steady": "a. Steady load at increasing rates",
    "election": "b. Election night",
    "slow": "c. Slow platform (+200 ms per call): steady load",
    "slow-burst": "c. Slow platform (+200 ms per call): election-night burst",
    "catchup": "c. Slow platform: catching up on runs that are all behind",
    "cold": "d + e. Cold start and memory per cached pod",
}


def _key(row: list[Trial]) -> tuple[int, str]:
    return plots.order(row[0]["system"])


def _numeric(row: list[Trial]) -> list[tuple[str, Any]]:
    return sorted((k, v) for k, v in row[0]["params"].items() if isinstance(v, (int, float)))


def _preamble(doc: dict[str, Any]) -> list[str]:
    m = doc["machine"]
    c = doc.get("ceiling") or {}
    n = doc.get("trials", 1)
    lines = [f"# Benchmark results {doc['stamp']}", "",
             f"Machine: {m['cores']} cores, {m['memory_gib']:.0f} GiB; API server, etcd, "
             "platform, load generator and the system under test share these cores. "
             f"Load average {m['loadavg_start']:.1f} at the start, "
             f"{m['loadavg_end']:.1f} at the end. Commit {doc['commit']}. "
             f"Mode: {'quick' if doc['quick'] else 'full'}. Duration {doc['duration_s']:.0f} s.",
             "", f"Trials: {n} of each system per row, interleaved (every system once, then "
             "every system again), so a busy spell falls on all of them. Each figure is the "
             "median of the row's trials with their min-max in brackets (the median alone "
             "when they agree); n is the row's number of trials.", ""]
    if doc.get("scenario_s"):
        lines += ["Wall time by scenario: " + ", ".join(
            f"{k} {v:.0f} s" for k, v in doc["scenario_s"].items()) + ".", ""]
    if c:
        per_1000 = c.get("apiserver_cpu_s_per_1000")
        lines += [f"API server alone (nothing watching): {c['jobs_per_s']:.0f} jobs/s = "
                  f"{c['state_changes_per_s']:.0f} run-state changes/s ({c['writes_per_s']:.0f} "
                  f"pod writes/s, {c['apiserver_cores']:.2f} cores"
                  + ("" if per_1000 is None else
                     f", {per_1000:.2f} CPU s per 1k changes: compare the API server column")
                  + f"); {c['status_updates_per_s']:.0f} bare final-status updates/s.", ""]
    return lines


def markdown(doc: dict[str, Any], images: list[str]) -> str:
    by: dict[str, list[list[Trial]]] = defaultdict(list)
    for row in group(doc["results"]):
        by[row[0]["scenario"]].append(row)
    lines = _preamble(doc)
    for scenario in ("steady", "election", "slow", "slow-burst"):
        rows = by.get(scenario)
        if not rows:
            continue
        lines += [f"## {TITLES[scenario]}", "", TRIAL_HEADER]
        lines += [trial_row(r) for r in sorted(rows, key=lambda r: (_numeric(r), _key(r)))]
        lines.append("")
    if by.get("catchup"):
        lines += [f"## {TITLES['catchup']}", "", CATCHUP_HEADER]
        lines += [catchup_row(r) for r in sorted(
            by["catchup"], key=lambda r: (r[0]["params"]["platform_latency_ms"], _key(r)))]
        lines.append("")
    if by.get("cold"):
        lines += [f"## {TITLES['cold']}", "", COLD_HEADER]
        lines += [cold_row(r) for r in sorted(by["cold"], key=lambda r: (r[0]["pods"], _key(r)))]
        lines.append("")
    if images:
        lines += ["## Plots", "", "Points and curves are medians; bars and bands the trials' "
                  "min-max.", ""] + [f"![{p}]({p})" for p in images] + [""]
    return "\n".join(lines)


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
    images = plots.write(doc, out, stamp)
    json_path = out / f"{stamp}.json"
    json_path.write_text(json.dumps(doc, indent=1, sort_keys=True, default=str) + "\n")
    md_path = out / f"{stamp}.md"
    md_path.write_text(markdown(doc, images))
    return [json_path, md_path, *(out / p for p in images)]


if __name__ == "__main__":
    raise SystemExit(main())
