"""A real Kubernetes node beside the testbed's API server: containerd, kubelet, scheduler and
controller-manager, all on loopback.

Contract (work in progress, issue 12):

* `start(workdir, kube)` starts containerd (own root, state and socket under ``workdir``),
  imports the busybox workload image and the blocking pause image (`testbed.nodeimages`),
  then kube-scheduler, kube-controller-manager and a kubelet registered as node
  ``localhost``; it returns a `RealNode` only when that node reports Ready, else raises
  `RealNodeError` with the tail of the failing process's log and stops what it started.
* Every listener binds 127.0.0.1. Pods get addresses from a CNI bridge with no gateway and
  no masquerade: a pod can reach only its own loopback and the bridge's other pods.
* `RealNode.stop()` stops the kubelet first (so it starts nothing new), every container,
  containerd, the scheduler and the controller-manager, then unmounts what the kubelet
  mounted under its root and removes the paths outside ``workdir`` that the kubelet and
  containerd write (`OUTSIDE_PATHS`), the CNI bridge and the kubepods/k8s.io cgroups.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from testbed import nodebuild, nodeimages, nodepackages
from testbed.apiserver import ApiServer
from testbed.kubeletpki import KubeletPki
from testbed.nodecleanup import alive, remove_cgroups, shims_of, terminate, unmount_under

NODE_NAME = "localhost"
READY_TIMEOUT = 180.0
TERMINATED_POD_GC_THRESHOLD = 50
CRASHLOOP_MAX_BACKOFF = "2s"
"""The kubelet's crash-loop back-off cap (`crashLoopBackOff.maxContainerRestartPeriod`,
beta and on by default since 1.35): a crash loop reaches Sniffer's restart threshold in
seconds, not the minutes of the default 10 s doubling to 300 s."""
OUTSIDE_PATHS = (Path("/var/log/pods"), Path("/var/log/containers"),
                 Path("/var/lib/kubelet/device-plugins/kubelet.sock"))
BRIDGE = "sniffer0"
POD_SUBNET = "10.244.0.0/16"
HOST_ADDRESS = "10.244.0.1"
"""The host's own address on the bridge: the one place outside a pod a pod can reach (no
route leads elsewhere). Services pods must reach (the API server, the platform) are
relayed from here to loopback (`testbed.podaccess`); pods never get a default route."""
POD_REACHABLE_PORTS = (6443, 8080, 4318)
"""The only TCP ports of HOST_ADDRESS a pod may open (iptables, `_bridge_up`): the relays
of the API server, the platform and OTLP that kustomize/overlays/testbed names. Anything
else the host serves on a wildcard address stays out of the pods' reach."""
APISERVER_EXTRA_ARGS = (f"--advertise-address={HOST_ADDRESS}",)
"""kube-apiserver flags for a server this node serves: its self-signed certificate then
names HOST_ADDRESS too, where pods reach it through `testbed.podaccess`."""


class RealNodeError(RuntimeError):
    """The node did not come up; the message carries the failing process's log tail."""


@dataclass
class RealNode:
    """The running node's processes and files."""

    workdir: Path
    image: str
    pause_image: str
    pids: dict[str, int] = field(default_factory=dict)

    def stop(self) -> None:
        """Stop every process, container and mount this node made (see the contract)."""
        _stop_node(self.workdir, self.pids)


def _dirs(workdir: Path) -> dict[str, Path]:
    return {n: workdir / n for n in ("containerd", "cni", "kubelet", "logs")}


def containerd_config(workdir: Path, pause_image: str) -> str:
    """containerd's config (version 3) for this node."""
    d = _dirs(workdir)["containerd"]
    cri = 'plugins."io.containerd.cri.v1.runtime"'
    return f"""version = 3
root = "{d / 'root'}"
state = "{d / 'state'}"
[grpc]
  address = "{d / 'containerd.sock'}"
[ttrpc]
  address = "{d / 'containerd.sock.ttrpc'}"
[debug]
  address = ""
[metrics]
  address = ""
[{cri}]
  restrict_oom_score_adj = true
  disable_apparmor = true
  [{cri}.containerd]
    default_runtime_name = "runc"
    [{cri}.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [{cri}.containerd.runtimes.runc.options]
        BinaryName = "{nodepackages.RUNC}"
  [{cri}.cni]
    bin_dirs = ["{nodepackages.CNI_BIN_DIR}"]
    conf_dir = "{_dirs(workdir)['cni'] / 'conf'}"
[plugins."io.containerd.cri.v1.images"]
  snapshotter = "overlayfs"
  [plugins."io.containerd.cri.v1.images".pinned_images]
    sandbox = "{pause_image}"
[plugins."io.containerd.grpc.v1.cri"]
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
"""


def cni_conflist(workdir: Path) -> str:
    """A bridge with no gateway and no masquerade: pods reach only each other."""
    return json.dumps({
        "cniVersion": "1.0.0", "name": "sniffer-testbed",
        "plugins": [{"type": "bridge", "bridge": BRIDGE, "isGateway": False,
                     "ipMasq": False, "hairpinMode": False,
                     # The gateway is never given to a pod (host-local skips it) and,
                     # with isGateway false, becomes no route: it is HOST_ADDRESS.
                     "ipam": {"type": "host-local",
                              "ranges": [[{"subnet": POD_SUBNET, "gateway": HOST_ADDRESS}]],
                              "dataDir": str(_dirs(workdir)["cni"] / "ipam")}},
                    {"type": "loopback"}]}, indent=2)


def kubelet_config(workdir: Path, *, port: int = 10250, healthz_port: int = 10248,
                   pki: KubeletPki | None = None) -> str:
    """The KubeletConfiguration (JSON is YAML) for this node. With ``pki`` the kubelet
    serves its certificate and accepts only the API server's client certificate
    (`testbed.kubeletpki`); without, anyone on loopback (anonymous)."""
    sock = _dirs(workdir)["containerd"] / "containerd.sock"
    return json.dumps({
        "apiVersion": "kubelet.config.k8s.io/v1beta1", "kind": "KubeletConfiguration",
        "failCgroupV1": False, "cgroupDriver": "cgroupfs",
        "containerRuntimeEndpoint": f"unix://{sock}",
        "authentication": {"anonymous": {"enabled": True}, "webhook": {"enabled": False}},
        "authorization": {"mode": "AlwaysAllow"},
        "address": "127.0.0.1", "port": port, "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1", "healthzPort": healthz_port,
        "failSwapOn": False, "enforceNodeAllocatable": [],
        "evictionHard": {"memory.available": "1Mi", "nodefs.available": "1%",
                         "imagefs.available": "1%", "nodefs.inodesFree": "1%"},
        "resolvConf": "", "maxPods": 500, "serializeImagePulls": False,
        "podLogsDir": str(OUTSIDE_PATHS[0]),
        "crashLoopBackOff": {"maxContainerRestartPeriod": CRASHLOOP_MAX_BACKOFF},
        **(pki.kubelet_settings() if pki else {}),
    }, indent=2)


def _spawn(name: str, argv: list[str], workdir: Path,
           env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    log = open(_dirs(workdir)["logs"] / f"{name}.log", "ab")  # noqa: SIM115 - child owns it
    try:
        return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                start_new_session=True, env=env)
    finally:
        log.close()


def _tail(workdir: Path, name: str, lines: int = 30) -> str:
    path = _dirs(workdir)["logs"] / f"{name}.log"
    if not path.exists():
        return "(no log)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def _wait(what: str, check: object, procs: dict[str, subprocess.Popen[bytes]],
          workdir: Path, timeout: float) -> None:
    assert callable(check)
    deadline = time.monotonic() + timeout
    while not check():
        for name, proc in procs.items():
            if proc.poll() is not None:
                raise RealNodeError(f"{name} exited with {proc.returncode} while waiting for "
                                    f"{what}:\n{_tail(workdir, name)}")
        if time.monotonic() > deadline:
            raise RealNodeError(f"timed out after {timeout:.0f}s waiting for {what}:\n"
                                + "\n".join(f"--- {n}\n{_tail(workdir, n)}" for n in procs))
        time.sleep(0.2)


def _node_ready(kube: ApiServer) -> bool:
    out = subprocess.run(kube.kubectl_command(
        "get", "node", NODE_NAME, "-o",
        "jsonpath={.status.conditions[?(@.type=='Ready')].status}"),
        capture_output=True, text=True, check=False)
    return out.returncode == 0 and out.stdout.strip() == "True"


def _default_account(kube: ApiServer) -> bool:
    return subprocess.run(kube.kubectl_command("-n", "default", "get", "serviceaccount",
                                               "default"),
                          capture_output=True, check=False).returncode == 0


def start(workdir: Path, kube: ApiServer, *,
          pod_gc_threshold: int = TERMINATED_POD_GC_THRESHOLD,
          kubelet_pki: KubeletPki | None = None,
          timeout: float = READY_TIMEOUT) -> RealNode:
    """Start the node against ``kube`` and wait until it is Ready (see the contract).

    ``kubelet_pki``: the pairs ``kube`` was started with (`KubeletPki.apiserver_args`), so
    that the API server and the kubelet verify each other."""
    workdir = workdir.resolve()
    nodepackages.ensure()
    kubebin = nodebuild.ensure_kube()
    ctrd = nodebuild.ensure_containerd()
    dirs = _dirs(workdir)
    for d in dirs.values():
        d.mkdir(parents=True, exist_ok=True)
    (dirs["cni"] / "conf").mkdir(exist_ok=True)
    image = nodeimages.workload_image(nodepackages.BUSYBOX)
    pause = nodeimages.pause_image(nodepackages.BUSYBOX)
    (dirs["containerd"] / "config.toml").write_text(containerd_config(workdir, pause.name))
    (dirs["cni"] / "conf" / "10-sniffer-testbed.conflist").write_text(cni_conflist(workdir))
    (dirs["kubelet"] / "config.json").write_text(kubelet_config(workdir, pki=kubelet_pki))
    sock = dirs["containerd"] / "containerd.sock"
    procs: dict[str, subprocess.Popen[bytes]] = {}
    node = RealNode(workdir=workdir, image=image.name, pause_image=pause.name)
    try:
        env = {**os.environ, "PATH": f"{ctrd.bin_dir}:{os.environ.get('PATH', '')}"}
        procs["containerd"] = _spawn("containerd", [
            str(ctrd.containerd), "--config", str(dirs["containerd"] / "config.toml")],
            workdir, env)
        node.pids["containerd"] = procs["containerd"].pid
        _wait("containerd's socket", sock.exists, procs, workdir, 60)
        for img in (pause, image):
            tar = dirs["containerd"] / f"{img.name.rsplit('/', 1)[1].replace(':', '-')}.tar"
            tar.write_bytes(img.archive)
            proc = subprocess.run([str(ctrd.ctr), "--address", str(sock), "-n", "k8s.io",
                                   "images", "import", str(tar)],
                                  capture_output=True, text=True, check=False)
            if proc.returncode != 0:
                raise RealNodeError(f"ctr images import {img.name} failed:\n"
                                    f"{proc.stdout}{proc.stderr}")
        state = Path(str(kube.workdir)) / "state"
        common = [f"--kubeconfig={kube.kubeconfig}",
                  f"--authentication-kubeconfig={kube.kubeconfig}",
                  f"--authorization-kubeconfig={kube.kubeconfig}",
                  "--leader-elect=false", "--bind-address=127.0.0.1"]
        procs["kube-scheduler"] = _spawn("kube-scheduler", [
            str(kubebin.scheduler), *common, "--secure-port=10259"], workdir)
        node.pids["kube-scheduler"] = procs["kube-scheduler"].pid
        procs["kube-controller-manager"] = _spawn("kube-controller-manager", [
            str(kubebin.controller_manager), *common, "--secure-port=10257",
            f"--service-account-private-key-file={state / 'service-account.key'}",
            f"--root-ca-file={state / 'cert' / 'apiserver.crt'}",
            "--use-service-account-credentials=false",
            f"--terminated-pod-gc-threshold={pod_gc_threshold}"], workdir)
        node.pids["kube-controller-manager"] = procs["kube-controller-manager"].pid
        _bridge_up()
        procs["kubelet"] = _spawn("kubelet", [
            str(kubebin.kubelet), f"--config={dirs['kubelet'] / 'config.json'}",
            f"--kubeconfig={kube.kubeconfig}", f"--root-dir={dirs['kubelet'] / 'root'}",
            f"--cert-dir={dirs['kubelet'] / 'root' / 'pki'}",
            f"--hostname-override={NODE_NAME}"], workdir)
        node.pids["kubelet"] = procs["kubelet"].pid
        _wait(f"node {NODE_NAME} Ready", lambda: _node_ready(kube), procs, workdir, timeout)
        # With the ServiceAccount admission plugin on, a pod is admitted only once its
        # account exists; the controller-manager makes `default` shortly after it starts.
        _wait("ServiceAccount default/default", lambda: _default_account(kube), procs,
              workdir, timeout)
    except BaseException:
        node.stop()
        raise
    (workdir / "pids.json").write_text(json.dumps(
        {"image": node.image, "pause_image": node.pause_image, "pids": node.pids}))
    return node


def _input_rules() -> list[list[str]]:
    """iptables INPUT rules for traffic from the pods to the host, first match first:
    replies to the host's own connections (the kubelet's probes), the relay ports, and
    nothing else. A refused TCP connection is reset at once, so a pod (and a test) sees
    "refused" rather than waiting out a connect timeout; other protocols are dropped."""
    ports = ",".join(map(str, POD_REACHABLE_PORTS))
    return [["-i", BRIDGE, "-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED",
             "-j", "ACCEPT"],
            ["-i", BRIDGE, "-p", "tcp", "-m", "multiport", "--dports", ports, "-j", "ACCEPT"],
            ["-i", BRIDGE, "-p", "tcp", "-j", "REJECT", "--reject-with", "tcp-reset"],
            ["-i", BRIDGE, "-j", "DROP"]]


def _bridge_up() -> None:
    """Make the CNI bridge before the first pod, holding `HOST_ADDRESS` (the bridge plugin
    adopts an existing bridge and, with isGateway false, leaves its address alone), and
    let pods open only `POD_REACHABLE_PORTS` on the host."""
    subprocess.run(["ip", "link", "add", BRIDGE, "type", "bridge"], capture_output=True,
                   check=False)  # exists already after an unclean stop: adopted as is
    prefix = POD_SUBNET.split("/")[1]
    _remove_input_rules()  # left by an unclean stop: never twice
    inserts = [["iptables", "-I", "INPUT", "1", *rule] for rule in reversed(_input_rules())]
    for argv in (["ip", "addr", "replace", f"{HOST_ADDRESS}/{prefix}", "dev", BRIDGE],
                 *inserts, ["ip", "link", "set", BRIDGE, "up"]):
        proc = subprocess.run(argv, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise RealNodeError(f"`{' '.join(argv)}` failed: {proc.stderr.strip()}")


def _remove_input_rules() -> None:
    for rule in _input_rules():
        while subprocess.run(["iptables", "-D", "INPUT", *rule], capture_output=True,
                             check=False).returncode == 0:
            pass


def attach(workdir: Path) -> RealNode | None:
    """The node `start` left running in ``workdir`` (its processes may have died since), or
    None if no node was started there."""
    pids_file = workdir.resolve() / "pids.json"
    if not pids_file.exists():
        return None
    saved = json.loads(pids_file.read_text())
    return RealNode(workdir=workdir.resolve(), image=saved.get("image", ""),
                    pause_image=saved.get("pause_image", ""),
                    pids={k: int(v) for k, v in saved.get("pids", {}).items()})


def _stop_node(workdir: Path, pids: dict[str, int]) -> None:
    if "kubelet" in pids:
        terminate(pids["kubelet"])
    ctr = nodebuild.ensure_containerd(quiet=True).ctr
    sock = _dirs(workdir)["containerd"] / "containerd.sock"
    if sock.exists() and "containerd" in pids and alive(pids["containerd"]):
        tasks = subprocess.run([str(ctr), "--address", str(sock), "-n", "k8s.io", "tasks",
                                "ls", "-q"], capture_output=True, text=True, check=False)
        for task in tasks.stdout.split():
            subprocess.run([str(ctr), "--address", str(sock), "-n", "k8s.io", "tasks", "kill",
                            "-s", "SIGKILL", task], capture_output=True, check=False)
    for name in ("containerd", "kube-scheduler", "kube-controller-manager"):
        if name in pids:
            terminate(pids[name])
    # A shim outlives containerd until its task is deleted; ours name our socket.
    for pid in shims_of(sock):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    unmount_under(workdir)
    # Shim sockets and runc state land here whatever containerd's state dir is.
    for path in (*OUTSIDE_PATHS, Path("/run/containerd/s"), Path("/run/containerd/runc/k8s.io")):
        subprocess.run(["rm", "-rf", str(path)], check=False)
    (workdir / "pids.json").unlink(missing_ok=True)
    subprocess.run(["ip", "link", "delete", BRIDGE], capture_output=True, check=False)
    _remove_input_rules()
    remove_cgroups()
