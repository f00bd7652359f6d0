"""`make demo DEMO_ARGS="--node real"`: the demo on the real node, narrated.

What it shows, in order:
1. A real kube-apiserver, the reference platform and the real node (containerd, kubelet,
   scheduler, controller-manager) start.
2. `sniffer watch` runs (finalizer mode) while every lifecycle of `testbed.realcatalogue`
   plays at once for real: the kubelet and the controllers write every status.
3. The watcher is paused; the lifecycles that end by themselves play again while nobody
   watches; `sniffer reconcile` shows the mismatches (dry run) and repairs them; the
   watcher comes back.
4. A summary: runs by platform state, mismatches with the catalogue's expectations (must
   be 0) and runs that went backwards (must be 0).
Exit status 0 iff both are 0. It needs root and this kind of machine (the node cannot
start elsewhere, and says why); one real node per machine.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

from config import load_settings
from sniffer.kube import KubeClient
from testbed import apiserver as kube_testbed
from testbed.demo import NAMESPACE, LiveWatcher, _settle_all, judged, say, testbed_up, watch_env
from testbed.platform.launcher import PlatformServer
from testbed.realcatalogue import CATALOGUE, Act
from testbed.realdriver import drive
from testbed.simulator.kubeapi import PodApi

IMAGE_PULL_FAILURE_AFTER_S = "5"
"""Sniffer's stuck-image rule in the demo (default 300 s): the stuck images fail in time."""
LIVE = [name for name, lc in CATALOGUE.items() if lc.act is not Act.AWAIT_POD_GC]
"""Played while the watcher runs: every lifecycle but pod GC's (the truth tests play that
one on a node whose pod GC keeps one finished pod; here it would also collect the
finished pods of the paused phase before the reconciler could read them, a race the
demo lost under load)."""
PAUSED = [name for name, lc in CATALOGUE.items() if lc.act is Act.NOTHING]
"""Played while the watcher is paused: pods that stay until the reconciler runs."""


async def run_real_demo(workdir: Path) -> int:
    say("== Sniffer demo on the real node ==")
    say("1. Starting the testbed: kube-apiserver, the reference platform and a real node "
        "(containerd, kubelet, kube-scheduler, kube-controller-manager)")
    async with testbed_up(workdir, real_node=True) as bed:
        assert bed.node is not None
        return await _scenario(bed.server, bed.platform, bed.kube, bed.node.image, workdir)


async def _leading(watcher: LiveWatcher, bound_s: float = 60.0) -> None:
    """Until the watcher reports itself leader on /healthz (bounded)."""
    deadline = asyncio.get_running_loop().time() + bound_s
    for _ in range(10_000):
        if (watcher.status().startswith("watcher: leader")
                or asyncio.get_running_loop().time() > deadline):
            return
        await asyncio.sleep(0.2)


async def _scenario(server: kube_testbed.ApiServer, platform: PlatformServer,
                    kube: KubeClient, image: str, workdir: Path) -> int:
    env = {**watch_env(server, platform),
           "SNIFFER_STATES_IMAGE_PULL_FAILURE_AFTER_S": IMAGE_PULL_FAILURE_AFTER_S}
    settings = load_settings(env=env)
    watcher = LiveWatcher(env, workdir / "watch.log")
    say(f"   API server {server.url}, platform {platform.url}; logs in {workdir}")
    say(f"\n2. sniffer watch is running; {len(LIVE)} lifecycles play at once on the "
        "real node (stuck images fail after "
        f"{IMAGE_PULL_FAILURE_AFTER_S} s here)")
    # The watcher's lease lives in the demo namespace: it must exist before the watcher.
    await PodApi(kube, asyncio.Semaphore(4)).ensure_namespace(NAMESPACE)
    watcher.start()
    await _leading(watcher)  # a pod created and gone before it watches would be lost
    live = await drive(kube, platform.url, platform.token_file, LIVE,
                       namespace=NAMESPACE, image=image, run_prefix="live",
                       decided_within_s=120)
    for run_id, error in live.errors.items():
        say(f"   play failed: {run_id}: {error}")
    await _settle_all(platform, live.expected, watcher)
    say(f"   played in {live.elapsed_s:.1f} s")

    say(f"\n3. Pausing the watcher; {len(PAUSED)} lifecycles play while nobody watches")
    await watcher.stop()
    paused = await drive(kube, platform.url, platform.token_file, PAUSED,
                         namespace=NAMESPACE, image=image, run_prefix="paused")
    await asyncio.sleep(settings.reconcile.grace_period_s)  # runs must outlive the grace
    from reconcile.app import run_reconcile
    say("\n   sniffer reconcile --dry-run (what is wrong; nothing is written):")
    await run_reconcile(settings, asyncio.Event(), dry_run=True, only=(), output="table")
    say("\n   sniffer reconcile (repairs):")
    code = await run_reconcile(settings, asyncio.Event(), dry_run=False, only=(),
                               output="table")
    say(f"   reconcile exit code {code}")
    say("\n   Resuming the watcher")
    watcher.start()
    expected = {**live.expected, **paused.expected}
    await _settle_all(platform, expected, watcher)
    await watcher.stop()

    say("\n4. Summary")
    runs, wrong, backwards = judged(platform, expected)
    errors = {**live.errors, **paused.errors}
    by_state = Counter(r["state"] for r in runs.values())
    say(f"   runs by platform state  : {dict(sorted(by_state.items()))}")
    say(f"   workloads               : {len(expected)} ({len(live.plays)} live, "
        f"{len(paused.plays)} while paused); plays that failed: {len(errors)}")
    say(f"   mismatches              : {len(wrong)}")
    names = {p.run_id: p.lifecycle.name for p in (*live.plays, *paused.plays)}
    for m in wrong[:10]:
        say(f"     {m.run_id} ({names.get(m.run_id)}): expected {m.expected}, "
            f"platform has {m.actual}")
    say(f"   runs that went backwards: {len(backwards)}")
    ok = not wrong and not backwards and not errors
    say("\nDemo on the real node " + ("passed: the platform matches every pod."
                                      if ok else "FAILED."))
    return 0 if ok else 1
