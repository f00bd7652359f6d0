"""Sniffer deployed as users deploy it, on the testbed's real node (issue 13).

The image is built from the Dockerfile with buildah (testbed/image.py, cached), imported
into the node's containerd, and `kubectl apply -k kustomize/overlays/testbed` installs the
base with prod's shape: two leader-elected watchers, the reconcile CronJob, namespaced
RBAC, the admission policy, restricted Pod Security. The pods reach the API server, the
reference platform and an OTLP receiver through relays on the node's bridge address
(testbed/podaccess.py). Then, in order:

* both watcher replicas turn Ready (readiness = caches synced) and one holds the Lease;
* a workload run on the node reaches the platform through the deployed watcher, and its
  trace reaches the collector, found by run id;
* the containers run as UID 65532 on a read-only root filesystem, seen from inside;
* `kubectl logs`/`exec` reach the kubelet with both sides' certificates verified, and the
  kubelet refuses anyone else;
* the CronJob fires on its schedule and `kubectl logs` shows its report;
* the runbook's dry pass and real pass, run word for word from docs/runbook.md;
* `kubectl rollout restart` with workloads running: no outcome lost;
* `kubectl delete pod` of the leader: the standby takes the Lease and reports;
* the uninstall procedure of docs/deploy.md leaves no finalizer behind.

Without the real node (or the image build) every test here FAILS; nothing skips. The
bounds on each wait only turn a hang into a failure; no speed is asserted.
"""

from __future__ import annotations

import json
import re
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

from testbed import image as sniffer_image
from testbed import nodebuild, realnode
from testbed.baseimage import ImageBuildError
from testbed.platform.launcher import PlatformServer, launch
from testbed.podaccess import Relay
from tests.fixtures.otlp import OtlpReceiver
from tests.fixtures.realnode import RealNodeBed

REPO = Path(__file__).resolve().parent.parent
OVERLAY = REPO / "kustomize" / "overlays" / "testbed"
NS = "sniffer"
WATCHED = ("batch", "notebooks", "webapps")
FINALIZER = "sniffer.io/outcome"
# The relay ports the testbed overlay names (kustomize/overlays/testbed/kustomization.yaml).
APISERVER_PORT, PLATFORM_PORT, OTLP_PORT = realnode.POD_REACHABLE_PORTS
BOUND_S = 240.0
"""Long enough for a cold pod start on two busy cores and a CronJob minute; never a speed."""

T = TypeVar("T")


def until(check: Callable[[], T | None], what: str, *, bound_s: float = BOUND_S,
          interval: float = 0.5) -> T:
    """Poll ``check`` until it returns something truthy; fail after ``bound_s``."""
    deadline = time.monotonic() + bound_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {bound_s:.0f}s: {what}")
        time.sleep(interval)


@dataclass
class Cluster:
    """The real node with Sniffer deployed on it, and the services its pods reach."""

    bed: RealNodeBed
    platform: PlatformServer
    otlp: OtlpReceiver
    image: sniffer_image.SnifferImage
    shell_env: dict[str, str]

    def kubectl(self, *args: str, check: bool = True, input: str | None = None,
                timeout: float = 300) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(self.bed.kube.kubectl_command(*args), input=input,
                              capture_output=True, text=True, check=False, timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} exited {proc.returncode}:\n"
                                 f"{proc.stdout}\n{proc.stderr}")
        return proc

    def json(self, *args: str) -> Any:
        return json.loads(self.kubectl(*args, "-o", "json").stdout)

    def sh(self, script: str, **env: str) -> subprocess.CompletedProcess[str]:
        """Run a shell snippet as on-call would: kubectl and jq on PATH, the admin's
        kubeconfig."""
        return subprocess.run(["bash", "-euo", "pipefail", "-c", script],
                              env={**self.shell_env, **env}, capture_output=True, text=True,
                              check=False, timeout=600)

    def watchers(self) -> list[dict[str, Any]]:
        pods = self.json("-n", NS, "get", "pods", "-l",
                         "app.kubernetes.io/name=sniffer,app.kubernetes.io/component=watch")
        return [p for p in pods["items"] if not p["metadata"].get("deletionTimestamp")]

    def ready_watchers(self) -> list[str]:
        return [p["metadata"]["name"] for p in self.watchers()
                if any(c["type"] == "Ready" and c["status"] == "True"
                       for c in p.get("status", {}).get("conditions", []))]

    def two_ready(self) -> list[str] | None:
        ready = self.ready_watchers()
        return ready if len(ready) == 2 else None

    def lease_holder(self) -> str:
        proc = self.kubectl("-n", NS, "get", "lease", "sniffer-watch", "-o",
                            "jsonpath={.spec.holderIdentity}", check=False)
        return proc.stdout.strip() if proc.returncode == 0 else ""

    def workload(self, namespace: str, *, command: str, run: bool = True) -> tuple[str, str]:
        """A platform run and its pod on the node, running ``command``; (run id, pod)."""
        run_id = f"run-{uuid.uuid4().hex[:8]}"
        name = f"job-{run_id.removeprefix('run-')}"
        if run:
            self.platform.create_run(run_id, kind="job", pod_namespace=namespace,
                                     pod_name=name)
        pod = {"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": name, "namespace": namespace,
                            "labels": {"sniffer.io/run-id": run_id, "sniffer.io/kind": "job"}},
               "spec": {"restartPolicy": "Never", "terminationGracePeriodSeconds": 2,
                        "containers": [{"name": "main", "image": self.bed.node.image,
                                        "imagePullPolicy": "Never",
                                        "command": ["sh", "-c", command]}]}}
        self.kubectl("create", "-f", "-", input=json.dumps(pod))
        return run_id, name

    def run_state(self, run_id: str) -> str | None:
        run = self.platform.get_run(run_id)
        return run["state"] if run else None


def runbook_block(doc: Path, heading: str, index: int = 0) -> str:
    """The ``index``-th ```sh block under ``heading`` in ``doc``, as written."""
    text = doc.read_text()
    start = text.index(heading)
    blocks = re.findall(r"^```sh(?: testbed)?\n(.*?)^```$", text[start:], re.MULTILINE | re.DOTALL)
    return str(blocks[index])


def report(logs: str) -> str:
    """The report part of a pass's output: every line that is not a JSON log line."""
    return "\n".join(ln for ln in logs.splitlines() if not ln.startswith('{"time"'))


@pytest.fixture(scope="module")
def cluster(real_node: RealNodeBed, tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[Cluster]:
    try:
        built = sniffer_image.ensure_image()
        sniffer_image.import_into(
            built, nodebuild.ensure_containerd(quiet=True).ctr,
            real_node.node.workdir / "containerd" / "containerd.sock")
    except ImageBuildError as e:
        pytest.fail(f"Sniffer's image could not be built or imported: {e}", pytrace=False)
    work = tmp_path_factory.mktemp("deploy-cluster")
    platform = launch(work / "platform")
    otlp = OtlpReceiver().start()
    relays: list[Relay] = []
    kube_port = int(real_node.kube.url.rsplit(":", 1)[1])
    try:
        for port, target in ((APISERVER_PORT, kube_port), (PLATFORM_PORT, platform.port),
                             (OTLP_PORT, otlp.port)):
            relays.append(Relay.start(port, ("127.0.0.1", target)))
        kubectl_dir = str(Path(str(real_node.kube.kubectl)).parent)
        env = {"PATH": f"{kubectl_dir}:{Path(sys.executable).parent}:/usr/bin:/bin",
               "KUBECONFIG": str(real_node.kube.kubeconfig), "HOME": str(work)}
        c = Cluster(bed=real_node, platform=platform, otlp=otlp, image=built, shell_env=env)
        install(c, token_file=platform.token_file)
        yield c
    finally:
        _teardown(real_node)
        for relay in relays:
            relay.stop()
        otlp.stop()
        platform.stop()


def install(c: Cluster, *, token_file: Path) -> None:
    """docs/deploy.md, "Before the first deploy" and "Deploy", for the testbed overlay."""
    proc = c.sh(f"""
kubectl create namespace {NS} --dry-run=client -o yaml | kubectl apply -f -
kubectl label namespace {NS} --overwrite \\
  pod-security.kubernetes.io/enforce=restricted pod-security.kubernetes.io/warn=restricted
for ns in {' '.join(WATCHED)}; do
  kubectl create namespace $ns --dry-run=client -o yaml | kubectl apply -f -
done
kubectl -n {NS} create secret generic sniffer-platform-token \\
  --from-file=token="$TOKEN_FILE" --dry-run=client -o yaml | kubectl apply -f -
kubectl apply -k {OVERLAY}
""", TOKEN_FILE=str(token_file))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _teardown(bed: RealNodeBed) -> None:
    """Leave the session's node as the other real-node tests expect it: Sniffer gone, no
    finalizer left on a workload pod, the namespaces on their way out."""
    kubectl = bed.kube.kubectl_command
    subprocess.run(kubectl("delete", "-k", str(OVERLAY), "--ignore-not-found", "--wait=false"),
                   capture_output=True, check=False)
    for ns in WATCHED:
        pods = subprocess.run(kubectl("-n", ns, "get", "pods", "-o", "name"),
                              capture_output=True, text=True, check=False).stdout.split()
        for pod in pods:
            subprocess.run(kubectl("-n", ns, "patch", pod, "--type=json", "-p",
                                   '[{"op":"remove","path":"/metadata/finalizers"}]'),
                           capture_output=True, check=False)
    subprocess.run(kubectl("delete", "namespace", NS, *WATCHED, "--wait=false",
                           "--ignore-not-found"), capture_output=True, check=False)


# -- the deployment comes up ---------------------------------------------------------------

def test_both_watchers_turn_ready_once_synced_and_one_holds_the_lease(cluster: Cluster):
    c = cluster
    proc = c.kubectl("-n", NS, "rollout", "status", "deployment/sniffer-watch",
                     "--timeout=5m")
    assert "successfully rolled out" in proc.stdout, proc.stdout + proc.stderr
    ready = until(c.two_ready, "2 Ready watchers")
    holder = until(c.lease_holder, "a Lease holder")
    assert holder in ready
    # Ready means synced: each replica logged its caches synced (docs/deploy.md).
    for pod in ready:
        logs = c.kubectl("-n", NS, "logs", pod).stdout
        assert '"caches synced"' in logs, logs[-2000:]


def test_a_workload_on_the_node_reaches_the_platform_through_the_deployed_watcher(
        cluster: Cluster):
    c = cluster
    until(lambda: len(c.ready_watchers()) == 2 and c.lease_holder(), "a synced leader")
    run_id, pod = c.workload("batch", command="sleep 3; exit 0")
    until(lambda: c.run_state(run_id) == "succeeded", f"{run_id} succeeded on the platform")
    updates = [u for u in c.platform.updates() if u.get("run_id") == run_id]
    assert updates and updates[-1]["to_state"] == "succeeded", updates
    # The watcher's finalizer held the pod until the platform had the outcome, then went.
    until(lambda: FINALIZER not in c.json("-n", "batch", "get", "pod", pod)["metadata"]
          .get("finalizers", []), f"{pod} released")
    # The state change's trace reached the collector, found by run id as on-call would.
    spans = until(lambda: [s for s in c.otlp.spans() if s.name == "sniffer.state_change"
                           and s.attributes.get("sniffer.run_id") == run_id],
                  f"a sniffer.state_change span for {run_id}")
    assert spans[0].resource["service.name"] == "sniffer-watch"
    assert spans[0].resource["k8s.namespace.name"] == NS
    assert spans[0].resource["deployment.environment.name"] == "testbed"


def test_the_containers_run_as_non_root_on_a_read_only_root_filesystem(cluster: Cluster):
    c = cluster
    pod = until(lambda: next(iter(c.ready_watchers()), None), "a Ready watcher")
    probe = (
        "import os\n"
        "print('uid', os.getuid(), os.getgid())\n"
        "root = [ln.split() for ln in open('/proc/self/mounts') if ln.split()[1] == '/']\n"
        "print('root-mount', root[-1][3].split(',')[0])\n"
        "try:\n"
        "    open('/probe', 'w')\n"
        "    print('rootfs writable')\n"
        "except OSError as e:\n"
        "    print('rootfs', e.strerror)\n"
        "open('/tmp/probe', 'w').write('ok')\n"
        "print('tmp writable')\n")
    out = c.kubectl("-n", NS, "exec", pod, "-c", "sniffer", "--", "python", "-c",
                    probe).stdout
    assert "uid 65532 65532" in out, out
    assert "root-mount ro" in out, out
    assert "rootfs Read-only file system" in out, out
    assert "tmp writable" in out, out


def test_pods_reach_the_relays_on_the_host_and_no_other_host_port(cluster: Cluster):
    c = cluster
    pod = until(lambda: next(iter(c.ready_watchers()), None), "a Ready watcher")
    with socket.create_server((realnode.HOST_ADDRESS, 0)) as other:  # not a relay port
        other_port = other.getsockname()[1]
        probe = (
            "import socket, sys\n"
            "for port in map(int, sys.argv[1:]):\n"
            "    try:\n"
            f"        socket.create_connection(({realnode.HOST_ADDRESS!r}, port), timeout=3)\n"
            "        print(port, 'open')\n"
            "    except OSError as e:\n"
            "        print(port, 'blocked', type(e).__name__)\n")
        out = c.kubectl("-n", NS, "exec", pod, "-c", "sniffer", "--", "python", "-c", probe,
                        str(APISERVER_PORT), str(other_port)).stdout
    assert f"{APISERVER_PORT} open" in out, out
    # Refused, not timed out: the host resets the connection (testbed.realnode's rules).
    assert f"{other_port} blocked ConnectionRefusedError" in out, out


def test_the_kubelet_serves_logs_only_to_the_api_server_and_proves_who_it_is(
        cluster: Cluster):
    """`kubectl logs`/`exec` above went API server → kubelet with both sides verified; a
    caller without the API server's client certificate is refused."""
    pki = cluster.bed.kubelet_pki
    ctx = ssl.create_default_context(cafile=str(pki.ca))  # verifies the kubelet's cert
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen("https://localhost:10250/pods", context=ctx, timeout=10)
    assert refused.value.code == 401
    ctx.load_cert_chain(str(pki.client_cert), str(pki.client_key))
    with urllib.request.urlopen("https://localhost:10250/pods", context=ctx, timeout=10) as r:
        pods = json.loads(r.read())
    assert any(p["metadata"]["namespace"] == NS for p in pods["items"])


# -- the reconciler: scheduled, and on-call's runbook ----------------------------------------

def test_the_cronjob_fires_on_schedule_and_its_report_is_in_the_logs(cluster: Cluster):
    c = cluster

    def scheduled_report() -> str | None:
        """The logs of the newest completed Job of the CronJob, read from its pod. With a
        1-minute schedule and successfulJobsHistoryLimit 3 the CronJob controller deletes
        the oldest Jobs (and their pods) as new ones finish, so a Job listed may be gone
        by the time its logs are read: then the next poll reads a newer one."""
        jobs = [job for job in c.json("-n", NS, "get", "jobs")["items"]
                if any(o["kind"] == "CronJob" and o["name"] == "sniffer-reconcile"
                       for o in job["metadata"].get("ownerReferences", []))
                and job.get("status", {}).get("succeeded")]
        jobs.sort(key=lambda job: job["metadata"]["creationTimestamp"], reverse=True)
        for job in jobs[:1]:
            selector = f"batch.kubernetes.io/job-name={job['metadata']['name']}"
            for pod in c.json("-n", NS, "get", "pods", "-l", selector)["items"]:
                logs = c.kubectl("-n", NS, "logs", pod["metadata"]["name"], check=False)
                if logs.returncode == 0 and logs.stdout.strip():
                    return logs.stdout
        return None

    logs = report(until(scheduled_report, "the report of a completed Job of the CronJob"))
    assert re.search(r"^pass: \d+ tracked pods in ", logs, re.MULTILINE), logs
    assert re.search(r"^result: (consistent|ok)\b.*\(exit 0\)$", logs, re.MULTILINE), logs


@pytest.fixture(scope="module")
def orphan(cluster: Cluster) -> tuple[str, str]:
    """A running pod whose run the platform does not know: a row both passes report."""
    run_id, pod = cluster.workload("batch", command="sleep 3600", run=False)
    until(lambda: cluster.json("-n", "batch", "get", "pod", pod)["status"].get("phase")
          == "Running", f"{pod} Running")
    return run_id, pod


def test_the_runbooks_dry_pass_works_as_written(cluster: Cluster, orphan: tuple[str, str]):
    script = runbook_block(REPO / "docs" / "runbook.md", "### 1. A dry pass first")
    proc = cluster.sh(script)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    print(out)  # the runbook's own example output, captured on the real node
    run_id, pod = orphan
    assert re.search(rf"^{run_id}\s+orphan_pod\s+batch/{pod}\s.*reported", out, re.MULTILINE), out
    assert "pass (dry run: nothing written):" in out, out
    assert "result: " in out and '{"time"' not in out, out


def test_the_runbooks_real_pass_works_as_written(cluster: Cluster, orphan: tuple[str, str]):
    script = runbook_block(REPO / "docs" / "runbook.md", "### 2. The real pass")
    proc = cluster.sh(script, NS=NS)  # set by the dry pass's block ("where Sniffer is")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    run_id, pod = orphan
    out = proc.stdout
    print(out)
    assert re.search(rf"^{run_id}\s+orphan_pod\s+batch/{pod}\s.*reported", out, re.MULTILINE), out
    assert re.search(r"^result: ok, 1 reported for a human \(exit 0\)", out, re.MULTILINE), out
    job = re.search(r"^(sniffer-reconcile-manual-\d+)\s", out, re.MULTILINE)
    assert job, out  # `kubectl get job $JOB` printed its row
    cluster.kubectl("-n", NS, "wait", "--for=condition=complete", "--timeout=2m",
                    f"job/{job.group(1)}")


# -- rollout, failover and removal ------------------------------------------------------------

def test_a_rollout_restart_under_load_loses_no_outcome(cluster: Cluster):
    c = cluster
    until(c.two_ready, "2 Ready watchers")
    # The reconciler would repair what the watchers miss; it is held off so that every
    # outcome below is the watchers' own across the handover.
    c.kubectl("-n", NS, "patch", "cronjob/sniffer-reconcile", "--type=merge",
              "-p", '{"spec":{"suspend":true}}')
    try:
        expected: dict[str, str] = {}

        def submit(count: int) -> None:
            for i in range(count):
                code = 0 if i % 4 else 3
                run_id, _ = c.workload(WATCHED[i % 3], command=f"sleep {1 + i % 5}; exit {code}")
                expected[run_id] = "succeeded" if code == 0 else "failed"

        submit(20)
        before = {p["metadata"]["name"] for p in c.watchers()}
        c.kubectl("-n", NS, "rollout", "restart", "deployment/sniffer-watch")
        submit(20)  # created while the replicas are replaced one by one
        c.kubectl("-n", NS, "rollout", "status", "deployment/sniffer-watch", "--timeout=5m")
        after = until(c.two_ready, "2 Ready watchers after the rollout")
        assert not before & set(after), (before, after)  # both replicas really replaced
        until(lambda: all(c.run_state(r) == want for r, want in expected.items()),
              "every run's outcome on the platform")
        until(lambda: c.lease_holder() in after, "a new replica holding the Lease")
    finally:
        c.kubectl("-n", NS, "patch", "cronjob/sniffer-reconcile", "--type=merge",
                  "-p", '{"spec":{"suspend":false}}')


def test_deleting_the_leader_pod_hands_the_lease_to_another_replica(cluster: Cluster):
    c = cluster
    until(c.two_ready, "2 Ready watchers")
    leader = until(c.lease_holder, "a Lease holder")
    c.kubectl("-n", NS, "delete", "pod", leader, "--wait=false")
    # The leader releases the Lease on SIGTERM; the standby (retrying every 2 s) takes it,
    # unless the Deployment's replacement, started at the deletion, gets there first: both
    # are a handover, so the check is only that the Lease left the deleted pod.
    until(lambda: c.lease_holder() not in ("", leader)
          and c.lease_holder() in c.ready_watchers(), "another replica holding the Lease")
    # The new leader reports: a new workload's outcome reaches the platform.
    run_id, _ = c.workload("notebooks", command="exit 3")
    until(lambda: c.run_state(run_id) == "failed", f"{run_id} failed on the platform")
    # The Deployment replaces the deleted replica; it joins as a synced standby.
    until(lambda: len(c.ready_watchers()) == 2, "2 Ready watchers again")


def test_the_uninstall_procedure_leaves_no_finalizer(cluster: Cluster):
    c = cluster
    until(lambda: c.lease_holder() and c.ready_watchers(), "a leader")
    # A running workload: the watcher holds it with its finalizer.
    _, pod = c.workload("webapps", command="sleep 3600")
    until(lambda: FINALIZER in c.json("-n", "webapps", "get", "pod", pod)["metadata"]
          .get("finalizers", []), f"{pod} held by {FINALIZER}")
    deploy_md = REPO / "docs" / "deploy.md"
    heading = "## Uninstall, and remove Sniffer's finalizers"
    # docs/deploy.md writes the procedure for the dev overlay; the same commands for this
    # one differ only in the namespace, the overlay and the watched namespaces.
    steps = [runbook_block(deploy_md, heading, i) for i in range(3)]
    script = "\n".join(steps).replace("sniffer-dev", NS) \
        .replace("kustomize/overlays/dev", str(OVERLAY)) \
        .replace("SNIFFER_KUBE_NAMESPACES=jobs-dev", f"SNIFFER_KUBE_NAMESPACES={','.join(WATCHED)}")
    proc = c.sh(script)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for ns in WATCHED:
        for item in c.json("-n", ns, "get", "pods")["items"]:
            assert FINALIZER not in item["metadata"].get("finalizers", []), item["metadata"]
    # Nothing holds a workload pod any more: deleting it completes.
    c.kubectl("-n", "webapps", "delete", "pod", pod, "--timeout=2m")
    assert c.kubectl("-n", NS, "get", "deployment,cronjob", "-o", "name",
                     check=False).stdout.strip() == ""
