"""`python -m testbed ...`: a local test bed in the current folder (development only).

Contract:
* ``up [--node simulated|real]`` starts a real kube-apiserver (with embedded etcd) and the
  reference Platform in the background, waits until both answer, writes ``.testbed/kubeconfig`` and
  ``.testbed/env`` (shell exports) and prints the exports. Ports are free ones, and all
  state lives under ``.testbed/`` of the current folder, so two folders can each run a
  testbed at once. A second ``up`` in the same folder is refused while one runs.
* ``status`` says what runs (exit 0 when both answer, 1 otherwise).
* ``down`` stops everything ``up`` started and removes its state.
* ``simulate ...`` runs the pod simulator against this testbed (options: ``--help``);
  ``simulate --node real ...`` plays the lifecycles for real on the real node instead
  (`testbed.realcli`; options: ``simulate --node real --help``).

`.testbed/env` exports KUBECONFIG, SNIFFER_PLATFORM_URL, SNIFFER_PLATFORM_TOKEN_FILE and
SNIFFER_KUBECTL. The platform token is exported as a file path, never as a value:
Sniffer reads tokens only from files.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import sys
import time
import urllib.request
from pathlib import Path

from testbed import apiserver, realnode
from testbed.build import ensure_binaries
from testbed.platform.launcher import launch

DEFAULT_DIR = Path(".testbed")


def _paths(root: Path) -> dict[str, Path]:
    return {"kube": root / "kube", "platform": root / "platform", "env": root / "env",
            "node": root / "node",
            "state": root / "testbed.json", "kubeconfig": root / "kubeconfig"}


NODE_REASONS = {
    "simulated": "the simulator writes pod statuses: fast, no root needed (the default)",
    "real": "a real kubelet, containerd and runc run the pods: statuses as production sees "
            "them (needs root on this kind of machine)",
}


def up(root: Path, node: str = "simulated",
       pod_gc_threshold: int = realnode.TERMINATED_POD_GC_THRESHOLD) -> int:
    p = _paths(root)
    if p["state"].exists() and _platform_alive(json.loads(p["state"].read_text())):
        print(f"a testbed already runs in {root}; `python -m testbed down` first", file=sys.stderr)
        return 1
    binaries = ensure_binaries()
    print("starting kube-apiserver ...", file=sys.stderr)
    kube = apiserver.start(p["kube"], detached=True, kubectl=binaries.kubectl)
    print("starting the reference platform ...", file=sys.stderr)
    try:
        platform = launch(p["platform"])
    except Exception:
        kube.stop()
        raise
    print(f"node: {node}: {NODE_REASONS[node]}", file=sys.stderr)
    image = ""
    if node == "real":
        print("starting the real node (containerd, kubelet, scheduler, controller-manager) ...",
              file=sys.stderr)
        try:
            image = realnode.start(p["node"], kube, pod_gc_threshold=pod_gc_threshold).image
        except Exception:
            _terminate(platform.pid)
            kube.stop()
            raise
    shutil.copyfile(kube.kubeconfig, p["kubeconfig"])
    p["kubeconfig"].chmod(0o600)
    state = {"apiserver_url": kube.url, "apiserver_pid": kube.pid,
             "platform_url": platform.url, "platform_pid": platform.pid,
             "platform_token_file": str(platform.token_file.resolve()),
             "kubectl": str(binaries.kubectl), "node": node}
    p["state"].write_text(json.dumps(state, indent=2))
    exports = {
        "KUBECONFIG": str(p["kubeconfig"].resolve()),
        "SNIFFER_PLATFORM_URL": platform.url,
        "SNIFFER_PLATFORM_TOKEN_FILE": state["platform_token_file"],
        "SNIFFER_KUBECTL": str(binaries.kubectl),
    }
    if image:
        exports["SNIFFER_TESTBED_IMAGE"] = image
    text = "".join(f"export {k}={v}\n" for k, v in exports.items())
    p["env"].write_text(text)
    print(text, end="")
    print(f"# testbed up: `source {p['env']}`, then `$SNIFFER_KUBECTL get pods -A`",
          file=sys.stderr)
    return 0


def status(root: Path) -> int:
    p = _paths(root)
    if not p["state"].exists():
        print(f"no testbed in {root}")
        return 1
    state = json.loads(p["state"].read_text())
    kube_ok = apiserver.pid_alive(state["apiserver_pid"])
    platform_ok = _platform_alive(state)
    print(f"kube-apiserver  {state['apiserver_url']}  pid {state['apiserver_pid']}  "
          f"{'running' if kube_ok else 'NOT RUNNING'}")
    print(f"platform        {state['platform_url']}  pid {state['platform_pid']}  "
          f"{'running' if platform_ok else 'NOT RUNNING'}")
    node_ok = True
    node = realnode.attach(p["node"])
    if node is not None:
        for name, pid in node.pids.items():
            ok = realnode.alive(pid)
            node_ok = node_ok and ok
            print(f"{name:<24}pid {pid}  {'running' if ok else 'NOT RUNNING'}")
    return 0 if kube_ok and platform_ok and node_ok else 1


def down(root: Path) -> int:
    p = _paths(root)
    if p["state"].exists():
        state = json.loads(p["state"].read_text())
        _terminate(int(state["platform_pid"]))
    node = realnode.attach(p["node"])
    if node is not None:
        node.stop()
    with contextlib.suppress(apiserver.ApiServerError):
        apiserver.attach(p["kube"]).stop()
    shutil.rmtree(root, ignore_errors=True)
    print(f"testbed in {root} stopped and removed", file=sys.stderr)
    return 0


def simulate(root: Path, argv: list[str]) -> int:
    env_file = _paths(root)["env"]
    if env_file.exists():
        for line in env_file.read_text().splitlines():
            key, _, value = line.removeprefix("export ").partition("=")
            os.environ.setdefault(key, value)
    if "--node" in argv or any(a.startswith("--node=") for a in argv):
        from testbed.realcli import main as real_main
        return real_main(argv)
    from testbed.simulator.__main__ import main as simulator_main
    return simulator_main(argv)


def _platform_alive(state: dict[str, object]) -> bool:
    try:
        with urllib.request.urlopen(f"{state['platform_url']}/healthz", timeout=2) as r:
            return bool(r.status == 200)
    except OSError:
        return False


def _terminate(pid: int, timeout: float = 10.0) -> None:
    if not apiserver.pid_alive(pid):
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while apiserver.pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if apiserver.pid_alive(pid):
        os.kill(pid, signal.SIGKILL)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m testbed", description=__doc__.split("\n")[0])
    parser.add_argument("--dir", type=Path, default=DEFAULT_DIR,
                        help="state folder (default: ./.testbed)")
    sub = parser.add_subparsers(dest="action", required=True)
    up_parser = sub.add_parser("up", help="start the API server and the platform in the background")
    up_parser.add_argument("--node", choices=sorted(NODE_REASONS), default="simulated",
                           help="who runs the pods: the simulator (default) or a real node")
    up_parser.add_argument("--pod-gc-threshold", type=int,
                           default=realnode.TERMINATED_POD_GC_THRESHOLD, metavar="N",
                           help="real node: finished pods kept before pod GC deletes the "
                           f"oldest (default {realnode.TERMINATED_POD_GC_THRESHOLD})")
    sub.add_parser("status", help="show what runs")
    sub.add_parser("down", help="stop everything and remove the state")
    sub.add_parser("simulate", help="run the pod simulator (its options: simulate --help)",
                   add_help=False)
    rest: list[str] = []
    if "simulate" in argv:  # everything after it belongs to the simulator, options too
        cut = argv.index("simulate") + 1
        argv, rest = argv[:cut], argv[cut:]
    args = parser.parse_args(argv)
    root: Path = args.dir.resolve()  # children run in their own folders
    if args.action == "up":
        root.mkdir(parents=True, exist_ok=True)
        return up(root, args.node, args.pod_gc_threshold)
    if args.action == "status":
        return status(root)
    if args.action == "down":
        return down(root)
    return simulate(root, rest)
