"""Ending what a real node left behind: its processes, mounts and cgroups.

Contract: each function is safe to call on something already gone (a process that has
exited, a cgroup already removed, a mount already lazily unmounted) and never raises for
it; `terminate` waits `STOP_TIMEOUT` for SIGTERM before SIGKILL and reaps our own child.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path

__all__ = ["CGROUPS", "STOP_TIMEOUT", "alive", "remove_cgroups", "shims_of", "terminate",
           "unmount_under", "with_reap"]

STOP_TIMEOUT = 20.0
CGROUPS = ("kubepods", "k8s.io")  # what the kubelet and containerd make in each hierarchy


def alive(pid: int) -> bool:
    """True iff a process with this id exists."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def terminate(pid: int) -> None:
    if not alive(pid):
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT
    while alive(pid) and time.monotonic() < deadline:
        with_reap(pid)
        time.sleep(0.05)
    if alive(pid):
        os.kill(pid, signal.SIGKILL)
    with_reap(pid)


def with_reap(pid: int) -> None:
    """Collect ``pid`` if it is our exited child, so it does not linger as a zombie."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def remove_cgroups() -> None:
    """Remove the (by now empty) cgroups the kubelet and containerd made, deepest first."""
    for hierarchy in Path("/sys/fs/cgroup").iterdir():
        for top in CGROUPS:
            root = hierarchy / top
            if not root.is_dir():
                continue
            for d in sorted((p for p in root.rglob("*") if p.is_dir()),
                            key=lambda p: len(p.parts), reverse=True):
                with contextlib.suppress(OSError):
                    d.rmdir()
            with contextlib.suppress(OSError):
                root.rmdir()


def shims_of(sock: Path) -> list[int]:
    """Process ids of the containerd shims started for the containerd at ``sock``."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            args = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if (args and args[0].endswith(b"containerd-shim-runc-v2")
                and str(sock).encode() in args):
            found.append(int(proc.name))
    return found


def unmount_under(workdir: Path) -> None:
    """Unmount every mount point at or below ``workdir``, deepest first."""
    prefix = str(workdir)
    points = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]
    for point in sorted((p for p in points if p == prefix or p.startswith(prefix + "/")),
                        key=len, reverse=True):
        subprocess.run(["umount", "-l", point], capture_output=True, check=False)
