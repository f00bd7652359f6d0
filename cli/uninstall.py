"""Uninstall: `sniffer finalizers remove` takes Sniffer's finalizer off every tracked pod.

Contract:
* Every tracked pod (the label selector) of every configured namespace (all when none) is
  listed once, page by page, slim; each one that carries ``sniffer.io/outcome`` loses it
  (`sniffer.pods.release_finalizer`, without a uid: uninstall means whichever pod has the
  name now). Other finalizers are left alone.
* A pod that is gone by the time of its patch is not counted as removed, nor as failed.
  Any other failure is logged, counted and skipped: uninstall makes progress past one bad
  pod. The exit code is 1 iff anything failed.
* Pods whose outcome was not yet recorded lose their protection; run `sniffer reconcile`
  first (the runbook's uninstall order).
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass

from config import Settings
from sniffer.kube import KubeClient
from sniffer.pods import list_pages, release_finalizer
from sniffer.podview import OUTCOME_FINALIZER

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RemovalReport:
    """What one uninstall pass did."""

    scanned: int
    """Tracked pods listed."""
    removed: int
    """Finalizers taken off."""
    failed: int
    """Pods whose patch failed (logged)."""


async def remove_all(kube: KubeClient, *, namespaces: tuple[str, ...], label_selector: str,
                     page_size: int = 500) -> RemovalReport:
    """Remove Sniffer's finalizer from every tracked pod (see the module contract)."""
    scanned = removed = failed = 0
    for namespace in namespaces or (None,):
        # Slim: it reads only metadata name, namespace and finalizers, which
        # `sniffer.podwire` keeps.
        pages = list_pages(kube, namespace, label_selector=label_selector,
                           page_size=page_size)
        async with contextlib.aclosing(pages):
            async for page in pages:
                for obj in page.items:
                    scanned += 1
                    meta = obj.get("metadata") or {}
                    if OUTCOME_FINALIZER not in (meta.get("finalizers") or []):
                        continue
                    try:
                        if await release_finalizer(kube, str(meta.get("namespace")),
                                                   str(meta.get("name")), None):
                            removed += 1
                    except Exception as exc:  # noqa: BLE001 - one bad pod must not stop the uninstall
                        failed += 1
                        log.error("could not remove finalizer", extra={
                            "pod": f"{meta.get('namespace')}/{meta.get('name')}",
                            "error": str(exc)})
    return RemovalReport(scanned=scanned, removed=removed, failed=failed)


async def uninstall(settings: Settings) -> int:
    """`sniffer finalizers remove`: one pass over the configured pods; the exit code."""
    kube = await KubeClient.from_settings(settings.kube, pool_size=32)
    try:
        report = await remove_all(kube, namespaces=settings.kube.namespaces,
                                  label_selector=settings.kube.label_selector,
                                  page_size=settings.kube.page_size)
    finally:
        await kube.close()
    print(f"scanned {report.scanned} tracked pods, removed {report.removed} finalizers, "
          f"{report.failed} failures")
    return 1 if report.failed else 0
