"""The deployment is part of the product: the image recipe and the Kustomize overlays.

What these tests show:
* The Dockerfile lints clean (hadolint), pins its base by digest, runs as a numeric
  non-root user with an exec-form entry point; the lock file pins every runtime
  dependency with hashes; and what the image runs works: the build is replayed in a
  fresh venv (lock file with --require-hashes, then the wheel with --no-deps) and
  `sniffer --help` runs from it.
* Every overlay builds with the testbed's kubectl, validates against the v1.36 schemas
  (kubernetes-validate, strict), and the testbed's API server accepts it in a
  server-side dry run. Its settings load and validate; its timing, network and
  telemetry wiring hold together (grace periods, deadlines, egress ports, OTEL_*).
* Its pods meet the "restricted" Pod Security Standard: the real admission plugin of
  the testbed judges them in a namespace that enforces it.
* RBAC is sufficient and minimal: applied for real, `sniffer watch` runs with a
  TokenRequest token of its own ServiceAccount and moves a run from running to
  succeeded (finalizer and Lease included), `sniffer reconcile` repairs a missed outcome
  as its own, and what neither program may do is refused: by RBAC, and for pod patches
  beyond Sniffer's finalizer by the base's ValidatingAdmissionPolicy.
"""

from __future__ import annotations

import asyncio
import copy
import fcntl
import functools
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tomllib
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from config import load_settings
from sniffer.kube import KubeClient
from sniffer.kubedecode import KubeError
from testbed.apiserver import ApiServer
from testbed.build import ensure_binaries
from testbed.platform.launcher import PlatformServer
from tests.fixtures.kube import _purge_namespace
from tests.fixtures.kubehttp import MERGE_PATCH, request_sync
from tests.fixtures.watcher import Pods, eventually

REPO = Path(__file__).resolve().parents[1]
KUSTOMIZE = REPO / "kustomize"
OVERLAYS = ("dev", "staging", "prod", "testbed")
K8S_SCHEMA_VERSION = "1.36.0"  # the testbed's Kubernetes minor
LEASE_RELEASE_BUDGET_S = 5  # watch.app's bound on the lease release at shutdown
POD_LABEL = "app.kubernetes.io/name"

Obj = dict[str, Any]


# -- rendering ---------------------------------------------------------------------------

@functools.cache
def kubectl_path() -> Path:
    return ensure_binaries().kubectl


def run(argv: Sequence[str | Path], *, input: str | None = None, check: bool = True,
        env: dict[str, str] | None = None, cwd: Path | None = None,
        timeout: float = 300) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([str(a) for a in argv], input=input, capture_output=True,
                          text=True, env=env, cwd=cwd, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{argv} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


@functools.cache
def rendered_text(overlay: str) -> str:
    return run([kubectl_path(), "kustomize", KUSTOMIZE / "overlays" / overlay]).stdout


def rendered(overlay: str) -> list[Obj]:
    return [d for d in yaml.safe_load_all(rendered_text(overlay)) if d]


def one(objs: list[Obj], kind: str, name: str | None = None) -> Obj:
    found = [o for o in objs if o["kind"] == kind
             and (name is None or o["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def pod_template(workload: Obj) -> Obj:
    if workload["kind"] == "CronJob":
        return workload["spec"]["jobTemplate"]["spec"]["template"]
    return workload["spec"]["template"]


def workloads(objs: list[Obj]) -> list[Obj]:
    return [o for o in objs if o["kind"] in ("Deployment", "CronJob")]


def home_namespace(objs: list[Obj]) -> str:
    return one(objs, "Deployment", "sniffer-watch")["metadata"]["namespace"]


def env_config(objs: list[Obj]) -> dict[str, str]:
    return dict(next(o for o in objs if o["kind"] == "ConfigMap"
                     and o["metadata"]["name"].startswith("sniffer-env-"))["data"])


def container_env(objs: list[Obj], workload: Obj, tmp: Path) -> tuple[dict[str, str], Path]:
    """The environment a workload's container gets (Downward API values made up), and
    the config file it mounts, written to `tmp`."""
    spec = pod_template(workload)["spec"]
    (container,) = spec["containers"]
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        name = source["configMapRef"]["name"]
        env.update(one(objs, "ConfigMap", name)["data"])
    fields = {"metadata.name": "pod-0", "metadata.namespace": workload["metadata"]["namespace"],
              "metadata.uid": "uid-0", "spec.nodeName": "node-0"}
    for var in container.get("env", []):
        if "value" in var:  # $(NAME) expands to an earlier variable, as the kubelet does
            env[var["name"]] = re.sub(r"\$\((\w+)\)",
                                      lambda m: env.get(m.group(1), m.group(0)), var["value"])
        else:
            env[var["name"]] = fields.get(var["valueFrom"]["fieldRef"]["fieldPath"], "x")
    (volume,) = [v for v in spec["volumes"] if "configMap" in v]
    config = tmp / f"{workload['metadata']['name']}-config.yaml"
    config.write_text(one(objs, "ConfigMap", volume["configMap"]["name"])["data"]["config.yaml"])
    return env, config


def settings_of(objs: list[Obj], workload: Obj, tmp: Path):
    env, config = container_env(objs, workload, tmp)
    return load_settings(config, env=env), env


# -- the overlays as files ---------------------------------------------------------------

@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_builds_with_the_testbeds_kubectl(overlay: str):
    objs = rendered(overlay)
    kinds = {o["kind"] for o in objs}
    assert {"ServiceAccount", "ClusterRole", "Role", "RoleBinding", "ConfigMap", "Deployment",
            "PodDisruptionBudget", "CronJob", "NetworkPolicy"} <= kinds
    assert {o["metadata"]["name"] for o in objs if o["kind"] == "ServiceAccount"} == {
        "sniffer-watch", "sniffer-reconcile"}
    for obj in objs:
        if obj["kind"] not in ("ClusterRole", "ClusterRoleBinding"):
            assert obj["metadata"].get("namespace"), f"{obj['kind']} without a namespace"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_passes_strict_schema_validation(overlay: str):
    for obj in rendered(overlay):
        kubernetes_validate.validate(obj, K8S_SCHEMA_VERSION, strict=True)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_settings_load_and_name_the_lease_and_the_namespaces_rbac_allows(
        overlay: str, tmp_path: Path):
    objs = rendered(overlay)
    home = home_namespace(objs)
    watch = one(objs, "Deployment", "sniffer-watch")
    settings, env = settings_of(objs, watch, tmp_path)
    assert settings.leader.enabled and settings.leader.lease_namespace == home
    assert env["POD_NAME"] == "pod-0"  # the leader identity comes from the Downward API
    leader_role = one(objs, "Role", "sniffer-watch-leader")
    named = [r for r in leader_role["rules"] if r.get("resourceNames")]
    assert named and all(r["resourceNames"] == [settings.leader.lease_name] for r in named)
    reconcile_settings, _ = settings_of(objs, one(objs, "CronJob"), tmp_path)
    assert reconcile_settings.kube.namespaces == settings.kube.namespaces
    pod_bindings = {(o["kind"], o["metadata"].get("namespace"))
                    for o in objs if o["kind"] in ("RoleBinding", "ClusterRoleBinding")
                    and o["roleRef"]["name"] in ("sniffer-watch-pods", "sniffer-reconcile-pods")}
    if settings.kube.namespaces:  # namespaced mode: a binding pair in each watched namespace
        assert pod_bindings == {("RoleBinding", ns) for ns in settings.kube.namespaces}
        assert sum(o["kind"] == "RoleBinding" and o["metadata"]["namespace"] != home
                   for o in objs) == 2 * len(settings.kube.namespaces)
    else:
        assert pod_bindings == {("ClusterRoleBinding", None)}
    for binding in (o for o in objs if o["kind"] in ("RoleBinding", "ClusterRoleBinding")):
        assert all(s["namespace"] == home for s in binding["subjects"])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_grace_periods_and_deadlines_leave_room_for_shutdown(overlay: str, tmp_path: Path):
    objs = rendered(overlay)
    watch = one(objs, "Deployment", "sniffer-watch")
    cron = one(objs, "CronJob", "sniffer-reconcile")
    settings, env = settings_of(objs, watch, tmp_path)
    flush_s = (int(env["OTEL_BSP_EXPORT_TIMEOUT"]) + int(env["OTEL_METRIC_EXPORT_TIMEOUT"])) / 1000
    watch_grace = pod_template(watch)["spec"]["terminationGracePeriodSeconds"]
    assert watch_grace > settings.shutdown.drain_timeout_s + LEASE_RELEASE_BUDGET_S + flush_s
    assert pod_template(cron)["spec"]["terminationGracePeriodSeconds"] > flush_s
    match = re.fullmatch(r"\*/(\d+) \* \* \* \*", cron["spec"]["schedule"])
    assert match, f"schedule {cron['spec']['schedule']!r}: use the */N minutes form"
    job = cron["spec"]["jobTemplate"]["spec"]
    assert job["activeDeadlineSeconds"] < int(match.group(1)) * 60
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    assert cron["spec"]["startingDeadlineSeconds"] < int(match.group(1)) * 60
    assert pod_template(cron)["spec"]["restartPolicy"] == "Never"
    assert job["backoffLimit"] >= 0
    assert {"successfulJobsHistoryLimit", "failedJobsHistoryLimit"} <= cron["spec"].keys()


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_watcher_replicas_probes_budget_and_spread(overlay: str, tmp_path: Path):
    objs = rendered(overlay)
    watch = one(objs, "Deployment", "sniffer-watch")
    assert watch["spec"]["replicas"] == {"dev": 1, "staging": 2, "prod": 2, "testbed": 2}[overlay]
    settings, _ = settings_of(objs, watch, tmp_path)
    spec = pod_template(watch)["spec"]
    (container,) = spec["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
        assert container[probe]["httpGet"]["path"] == path
        assert ports[container[probe]["httpGet"]["port"]] == settings.health.port
    assert {"cpu", "memory"} <= container["resources"]["requests"].keys()
    assert {"cpu", "memory"} <= container["resources"]["limits"].keys()
    labels = pod_template(watch)["metadata"]["labels"]
    pdb = one(objs, "PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    keys = {c["topologyKey"] for c in spec["topologySpreadConstraints"]}
    assert "kubernetes.io/hostname" in keys


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_otel_resource_attributes_come_from_the_downward_api(overlay: str):
    objs = rendered(overlay)
    from_config = env_config(objs)
    for workload in workloads(objs):
        (container,) = pod_template(workload)["spec"]["containers"]
        defined = set(from_config)
        values: dict[str, str] = {}
        for var in container["env"]:
            for ref in re.findall(r"\$\((\w+)\)", var.get("value", "")):
                assert ref in defined, f"{var['name']} uses $({ref}) before it is defined"
            defined.add(var["name"])
            values[var["name"]] = var.get("value") or var["valueFrom"]["fieldRef"]["fieldPath"]
        assert values["POD_NAME"] == "metadata.name"
        assert values["POD_NAMESPACE"] == "metadata.namespace"
        assert values["NODE_NAME"] == "spec.nodeName"
        attributes = dict(kv.split("=", 1) for kv in values["OTEL_RESOURCE_ATTRIBUTES"].split(","))
        assert attributes["k8s.pod.name"] == "$(POD_NAME)"
        assert attributes["k8s.namespace.name"] == "$(POD_NAMESPACE)"
        assert attributes["k8s.node.name"] == "$(NODE_NAME)"
        assert values["OTEL_SERVICE_NAME"] == workload["metadata"]["name"]
        assert from_config["DEPLOYMENT_ENVIRONMENT"] == overlay
        assert from_config["OTEL_EXPORTER_OTLP_ENDPOINT"].startswith(("http://", "https://"))


def _url_port(url: str) -> int:
    parts = urllib.parse.urlsplit(url)
    return parts.port or (443 if parts.scheme == "https" else 80)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_egress_is_allowed_only_to_dns_the_api_server_the_platform_and_the_collector(
        overlay: str):
    objs = rendered(overlay)
    policies = {o["metadata"]["name"]: o for o in objs if o["kind"] == "NetworkPolicy"}
    assert set(policies) == {"sniffer-egress-dns", "sniffer-egress-apiserver",
                             "sniffer-egress-platform", "sniffer-egress-otlp"}
    for workload in workloads(objs):
        labels = pod_template(workload)["metadata"]["labels"]
        for policy in policies.values():
            assert policy["spec"]["podSelector"]["matchLabels"].items() <= labels.items()
    for policy in policies.values():
        assert policy["spec"]["policyTypes"] == ["Egress"]
        for rule in policy["spec"]["egress"]:
            assert rule.get("to") and rule.get("ports"), "a rule without peers or ports allows all"
            for peer in rule["to"]:
                assert peer.get("ipBlock", {}).get("cidr") not in ("0.0.0.0/0", "::/0")
                assert not peer.get("ipBlock", {}).get("cidr", "").startswith("192.0.2."), \
                    "the base's placeholder address is still there"

    def ports(name: str) -> set[int]:
        return {p["port"] for r in policies[name]["spec"]["egress"] for p in r["ports"]}

    config = env_config(objs)
    assert _url_port(config["SNIFFER_PLATFORM_URL"]) in ports("sniffer-egress-platform")
    assert _url_port(config["OTEL_EXPORTER_OTLP_ENDPOINT"]) in ports("sniffer-egress-otlp")
    assert ports("sniffer-egress-dns") == {53}


# -- the API server's verdict --------------------------------------------------------------

def ensure_namespace(apiserver: ApiServer, name: str) -> None:
    reply = request_sync(apiserver, "POST", "/api/v1/namespaces",
                         {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    assert reply.status in (201, 409), reply.body


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_is_accepted_by_a_server_side_dry_run(overlay: str, apiserver: ApiServer):
    objs = rendered(overlay)
    for ns in sorted({o["metadata"]["namespace"] for o in objs if "namespace" in o["metadata"]}):
        ensure_namespace(apiserver, ns)
    proc = run(apiserver.kubectl_command("apply", "--dry-run=server", "-f", "-"),
               input=rendered_text(overlay))
    assert proc.stdout.count("(server dry run)") == len(objs)
    assert "Warning" not in proc.stderr, proc.stderr


@pytest.fixture
def restricted_namespace(apiserver: ApiServer, namespace: str) -> str:
    labels = {f"pod-security.kubernetes.io/{mode}": "restricted"
              for mode in ("enforce", "warn", "audit")}
    labels["pod-security.kubernetes.io/enforce-version"] = "latest"
    reply = request_sync(apiserver, "PATCH", f"/api/v1/namespaces/{namespace}",
                         {"metadata": {"labels": labels}}, content_type=MERGE_PATCH)
    assert reply.ok, reply.body
    return namespace


def as_pod(template: Obj, name: str, namespace: str) -> Obj:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": namespace,
                         "labels": template["metadata"].get("labels", {})},
            "spec": copy.deepcopy(template["spec"])}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pods_meet_the_restricted_pod_security_standard(
        overlay: str, apiserver: ApiServer, restricted_namespace: str):
    ns = restricted_namespace
    objs = rendered(overlay)
    for workload in workloads(objs):
        pod = as_pod(pod_template(workload), f"psa-{workload['kind'].lower()}", ns)
        proc = run(apiserver.kubectl_command("create", "--dry-run=server", "-f", "-"),
                   input=json.dumps(pod))
        assert "Warning" not in proc.stderr, proc.stderr
        # The workload object itself: admission warns about a template that would violate.
        placed = copy.deepcopy(workload)
        placed["metadata"]["namespace"] = ns
        proc = run(apiserver.kubectl_command("apply", "--dry-run=server", "-f", "-"),
                   input=json.dumps(placed))
        assert "PodSecurity" not in proc.stderr, proc.stderr
    # The admission plugin is live: the same pod with privilege escalation is refused.
    pod = as_pod(pod_template(one(objs, "Deployment")), "psa-negative-control", ns)
    pod["spec"]["containers"][0]["securityContext"]["allowPrivilegeEscalation"] = True
    proc = run(apiserver.kubectl_command("create", "--dry-run=server", "-f", "-"),
               input=json.dumps(pod), check=False)
    assert proc.returncode != 0 and 'violates PodSecurity "restricted' in proc.stderr, proc.stderr


# -- the image -----------------------------------------------------------------------------

def test_dockerfile_lints_clean_with_hadolint():
    hadolint = Path(sys.executable).with_name("hadolint")
    proc = run([hadolint, "--no-color", "--failure-threshold", "style", REPO / "Dockerfile"],
               check=False)
    assert proc.returncode == 0 and not proc.stdout.strip(), proc.stdout + proc.stderr


def test_dockerfile_pins_its_base_by_digest_and_runs_non_root_with_an_exec_entrypoint():
    lines = [ln.strip() for ln in (REPO / "Dockerfile").read_text().splitlines()]
    stages: set[str] = set()
    # A base given as a build argument (BASE, for machines with no registry) is pinned by
    # its default: the value every build that does not override it uses.
    args = dict(ln.removeprefix("ARG ").partition("=")[::2] for ln in lines
                if ln.startswith("ARG ") and "=" in ln)
    for line in (ln for ln in lines if ln.startswith("FROM ")):
        words = line.split()
        image = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], words[1])
        assert image in stages or re.fullmatch(
            r"python:3\.11[\w.-]*-slim[\w.-]*@sha256:[0-9a-f]{64}", image), line
        if len(words) == 4 and words[2].upper() == "AS":
            stages.add(words[3])
    users = [ln.split()[1] for ln in lines if ln.startswith("USER ")]
    assert users, "no USER"
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit() and int(uid) > 0 and (not gid or gid.isdigit())
    assert 'ENTRYPOINT ["sniffer"]' in lines
    assert any("--require-hashes -r requirements.lock" in ln for ln in lines)


def _requirements(lock: Path) -> dict[str, tuple[str, int]]:
    """name → (version, number of hashes) from a pip-compile style lock file."""
    text = lock.read_text().replace("\\\n", " ")
    out: dict[str, tuple[str, int]] = {}
    for line in text.splitlines():
        match = re.match(r"([A-Za-z0-9_.-]+)==(\S+)\s+(.*)", line)
        if match:
            name = re.sub(r"[-_.]+", "-", match.group(1)).lower()
            out[name] = (match.group(2), match.group(3).count("--hash=sha256:"))
    return out


def test_lock_files_pin_every_dependency_with_hashes():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    for lock, wanted in (("requirements.lock", project["project"]["dependencies"]),
                         ("requirements-build.lock", project["build-system"]["requires"])):
        pins = _requirements(REPO / lock)
        assert pins and all(count > 0 for _, count in pins.values()), f"{lock}: unhashed pins"
        for requirement in wanted:
            name, _, version = requirement.partition("==")
            name = re.sub(r"[-_.]+", "-", name).lower()
            assert pins.get(name, ("missing",))[0] == version, \
                f"{lock}: {name} is not pinned at {version}: run `make lock`"


def _cache_dir() -> Path:
    base = os.environ.get("SNIFFER_CACHE") or os.environ.get("XDG_CACHE_HOME")
    return (Path(base) if base else Path.home() / ".cache") / "sniffer" / "image-venv"


def _pip(python: Path, *args: str | Path) -> None:
    run([python, "-m", "pip", "--disable-pip-version-check", *args], timeout=900)


@pytest.fixture(scope="module")
def image_venv() -> Iterator[Path]:
    """The Dockerfile's two venvs, built from the lock files exactly as its RUN lines do,
    cached under the hash of the lock files (and of this interpreter). Held under a lock
    file while in use: tests install the project into it."""
    locks = [REPO / "requirements.lock", REPO / "requirements-build.lock"]
    digest = hashlib.sha256(sys.version.encode())
    for lock in locks:
        digest.update(lock.read_bytes())
    root = _cache_dir() / digest.hexdigest()[:16]
    root.parent.mkdir(parents=True, exist_ok=True)
    with open(root.with_suffix(".lock"), "w") as guard:
        fcntl.flock(guard, fcntl.LOCK_EX)
        if not (root / ".complete").exists():
            shutil.rmtree(root, ignore_errors=True)
            base = getattr(sys, "_base_executable", sys.executable)
            for venv, lock in ((root / "build", locks[1]), (root / "sniffer", locks[0])):
                run([base, "-m", "venv", venv])
                _pip(venv / "bin" / "python", "install", "--no-cache-dir", "--no-deps",
                     "--require-hashes", "-r", lock)
            (root / ".complete").touch()
        yield root


def docker_context(dest: Path) -> Path:
    """Copy what .dockerignore admits (its "!" lines, after a leading "*") to `dest`."""
    lines = [ln.strip() for ln in (REPO / ".dockerignore").read_text().splitlines()
             if ln.strip() and not ln.startswith("#")]
    assert lines[0] == "*", ".dockerignore must be an allow-list"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    dest.mkdir(parents=True)
    for entry in (ln[1:].rstrip("/") for ln in lines if ln.startswith("!")):
        source = REPO / entry
        if source.is_dir():
            shutil.copytree(source, dest / entry, ignore=ignore)
        elif source.exists():
            shutil.copy2(source, dest / entry)
    return dest


def test_the_image_venv_from_the_lock_file_runs_sniffer(image_venv: Path, tmp_path: Path):
    context = docker_context(tmp_path / "context")
    wheels = tmp_path / "wheels"
    _pip(image_venv / "build" / "bin" / "python", "wheel", "--no-cache-dir", "--no-deps",
         "--no-build-isolation", "--wheel-dir", wheels, context)
    (wheel,) = wheels.glob("sniffer-*.whl")
    # --force-reinstall: the cached venv may hold the wheel of an earlier run.
    _pip(image_venv / "sniffer" / "bin" / "python", "install", "--no-cache-dir", "--no-deps",
         "--force-reinstall", wheel)
    env = {"PATH": f"{image_venv / 'sniffer' / 'bin'}:/usr/bin:/bin", "HOME": str(tmp_path),
           "PYTHONDONTWRITEBYTECODE": "1"}
    proc = run(["sniffer", "--help"], env=env, cwd=tmp_path)
    assert "watch" in proc.stdout and "reconcile" in proc.stdout
    assert "testbed" not in proc.stdout, "the test bed is not part of the production command"
    # Every module the image ships imports with only the locked dependencies.
    script = (
        "import importlib, pkgutil\n"
        "for top in ('cli', 'config', 'sniffer', 'watch', 'reconcile'):\n"
        "    try:\n"
        "        pkg = importlib.import_module(top)\n"
        "    except ModuleNotFoundError:\n"
        "        continue\n"
        "    for info in pkgutil.walk_packages(pkg.__path__, top + '.'):\n"
        "        importlib.import_module(info.name)\n"
        "        print(info.name)\n")
    proc = run(["python", "-c", script], env=env, cwd=tmp_path)
    assert "cli.main" in proc.stdout and "watch.app" in proc.stdout
    proc = run(["python", "-c", "import testbed"], env=env, cwd=tmp_path, check=False)
    assert proc.returncode != 0, "the test bed stays out of the production wheel"
    # A configuration error is reported by name, exit 2, before anything starts.
    proc = run(["sniffer", "watch"], env=env, cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "platform.url" in proc.stderr


# -- RBAC: sufficient and minimal ------------------------------------------------------------

RBAC_KINDS = ("ServiceAccount", "Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding",
              "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class InstalledRbac:
    """An overlay's ServiceAccounts and RBAC, applied for real, with every namespace the
    overlay names mapped to a fresh one (`ns[...]`)."""

    def __init__(self, overlay: str, apiserver: ApiServer, home: str) -> None:
        self.overlay = overlay
        self.apiserver = apiserver
        self.objs = rendered(overlay)
        self.ns = {home_namespace(self.objs): home}
        for obj in self.objs:
            original = obj["metadata"].get("namespace")
            if original and original not in self.ns:
                self.ns[original] = f"t-{original}-{uuid.uuid4().hex[:6]}"
        self.extra = [n for n in self.ns.values() if n != home]
        self.applied = [self._moved(o) for o in self.objs if o["kind"] in RBAC_KINDS]

    def _moved(self, obj: Obj) -> Obj:
        obj = copy.deepcopy(obj)
        if "namespace" in obj["metadata"]:
            obj["metadata"]["namespace"] = self.ns[obj["metadata"]["namespace"]]
        for subject in obj.get("subjects", []):
            subject["namespace"] = self.ns[subject["namespace"]]
        return obj

    def apply(self) -> None:
        for name in self.extra:
            ensure_namespace(self.apiserver, name)
        run(self.apiserver.kubectl_command("apply", "-f", "-"),
            input=json.dumps({"apiVersion": "v1", "kind": "List", "items": self.applied}))

    def remove(self) -> None:
        cluster = [o for o in self.applied if "namespace" not in o["metadata"]]
        run(self.apiserver.kubectl_command("delete", "--ignore-not-found", "-f", "-"),
            input=json.dumps({"apiVersion": "v1", "kind": "List", "items": cluster}))
        for name in self.extra:
            _purge_namespace(self.apiserver, name)

    def kubeconfig(self, service_account: str, path: Path) -> Path:
        """A kubeconfig with a TokenRequest token of one of the overlay's ServiceAccounts."""
        home = self.ns[home_namespace(self.objs)]
        token = run(self.apiserver.kubectl_command(
            "create", "token", service_account, "-n", home, "--duration=1h")).stdout.strip()
        cluster: dict[str, Any] = {"server": self.apiserver.url}
        if self.apiserver.ca_file:
            cluster["certificate-authority"] = str(self.apiserver.ca_file)
        cluster["insecure-skip-tls-verify"] = self.apiserver.insecure or None
        path.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "sa",
            "clusters": [{"name": "testbed",
                          "cluster": {k: v for k, v in cluster.items() if v is not None}}],
            "users": [{"name": service_account, "user": {"token": token}}],
            "contexts": [{"name": "sa", "context": {"cluster": "testbed",
                                                    "user": service_account}}]}))
        return path


@pytest.fixture(params=OVERLAYS)
def rbac(request: pytest.FixtureRequest, apiserver: ApiServer, namespace: str
         ) -> Iterator[InstalledRbac]:
    installed = InstalledRbac(request.param, apiserver, namespace)
    installed.apply()
    try:
        yield installed
    finally:
        installed.remove()


def can_i(kubeconfig: Path, verb: str, resource: str, *, namespace: str | None = None,
          subresource: str | None = None) -> bool:
    argv: list[str | Path] = [kubectl_path(), f"--kubeconfig={kubeconfig}", "auth", "can-i",
                              verb, resource]
    argv += ["--all-namespaces"] if namespace is None else ["-n", namespace]
    if subresource:
        argv.append(f"--subresource={subresource}")
    proc = run(argv, check=False)
    assert proc.stdout.strip() in ("yes", "no"), proc.stdout + proc.stderr
    return proc.stdout.strip() == "yes"


def watched_namespaces(rbac: InstalledRbac, tmp: Path) -> list[str]:
    settings, _ = settings_of(rbac.objs, one(rbac.objs, "Deployment"), tmp)
    return [rbac.ns[n] for n in settings.kube.namespaces]


def test_each_service_account_gets_what_it_needs_and_nothing_more(
        rbac: InstalledRbac, tmp_path: Path):
    home = rbac.ns[home_namespace(rbac.objs)]
    watched = watched_namespaces(rbac, tmp_path)
    some_ns = watched[0] if watched else "default"
    unwatched = "kube-system"
    for sa in ("sniffer-watch", "sniffer-reconcile"):
        kc = rbac.kubeconfig(sa, tmp_path / f"{sa}.kubeconfig")
        allowed: list[tuple[str, str, str | None]] = [
            ("get", "pods", some_ns), ("list", "pods", some_ns), ("patch", "pods", some_ns),
            ("list", "jobs.batch", some_ns), ("patch", "jobs.batch", some_ns),
            ("list", "deployments.apps", some_ns), ("patch", "deployments.apps", some_ns),
            ("list", "statefulsets.apps", some_ns), ("patch", "statefulsets.apps", some_ns)]
        if not watched:  # cluster-wide: the reflector lists and watches across namespaces
            allowed += [("list", "pods", None), ("list", "jobs.batch", None)]
        denied: list[tuple[str, str, str | None]] = [
            ("create", "pods", some_ns), ("update", "pods", some_ns),
            ("delete", "pods", some_ns), ("deletecollection", "pods", some_ns),
            ("create", "jobs.batch", some_ns), ("update", "jobs.batch", some_ns),
            ("delete", "jobs.batch", some_ns), ("list", "cronjobs.batch", some_ns),
            ("get", "deployments.apps", some_ns), ("create", "deployments.apps", some_ns),
            ("update", "deployments.apps", some_ns), ("delete", "deployments.apps", some_ns),
            ("delete", "statefulsets.apps", some_ns), ("list", "replicasets.apps", some_ns),
            ("get", "secrets", home), ("list", "secrets", None),
            ("list", "configmaps", home), ("list", "nodes", None),
            ("create", "serviceaccounts", home), ("delete", "leases", home),
            ("create", "leases", some_ns if watched else "default"),
            ("create", "rolebindings", home), ("escalate", "clusterroles", None)]
        if watched:  # namespaced: nothing outside the watched namespaces
            denied += [("list", "pods", None), ("list", "pods", unwatched),
                       ("patch", "pods", unwatched), ("list", "jobs.batch", None),
                       ("list", "jobs.batch", unwatched)]
        subresources_denied = [("patch", "status"), ("get", "log"), ("create", "exec"),
                               ("create", "eviction")]
        if sa == "sniffer-watch":
            allowed += [("watch", "pods", some_ns), ("watch", "jobs.batch", some_ns),
                        ("get", "jobs.batch", some_ns), ("watch", "deployments.apps", some_ns),
                        ("watch", "statefulsets.apps", some_ns)]
            allowed += [] if watched else [("watch", "pods", None),
                                           ("watch", "jobs.batch", None)]
            allowed += [("create", "leases", home), ("get", "leases/sniffer-watch", home),
                        ("update", "leases/sniffer-watch", home)]
            denied += [("get", "leases/another-lease", home),
                       ("update", "leases/another-lease", home), ("list", "leases", home)]
        else:  # the reconciler lists and re-reads, and takes no part in leader election
            denied += [("watch", "pods", some_ns), ("watch", "pods", None),
                       ("watch", "jobs.batch", some_ns), ("get", "jobs.batch", some_ns),
                       ("watch", "deployments.apps", some_ns),
                       ("create", "leases", home), ("get", "leases/sniffer-watch", home),
                       ("update", "leases/sniffer-watch", home)]
        for verb, resource, ns in allowed:
            assert can_i(kc, verb, resource, namespace=ns), f"{sa} can't {verb} {resource} @{ns}"
        for verb, resource, ns in denied:
            assert not can_i(kc, verb, resource, namespace=ns), f"{sa} may {verb} {resource} @{ns}"
        for verb, sub in subresources_denied:
            assert not can_i(kc, verb, "pods", namespace=some_ns, subresource=sub), \
                f"{sa} may {verb} pods/{sub}"
        assert not can_i(kc, "patch", "jobs.batch", namespace=some_ns, subresource="status"), \
            f"{sa} may patch jobs/status"
        for sub in ("status", "scale"):
            assert not can_i(kc, "patch", "deployments.apps", namespace=some_ns,
                             subresource=sub), f"{sa} may patch deployments/{sub}"


def _get_text(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return str(resp.read().decode())


def _get_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def run_as(rbac: InstalledRbac, workload: Obj, kubeconfig: Path, platform: PlatformServer,
           tmp: Path) -> dict[str, str]:
    """The workload's own environment (the overlay's config file and env), pointed at the
    testbed as the workload's ServiceAccount and at the reference platform."""
    env, config = container_env(rbac.objs, workload, tmp)
    home = rbac.ns[home_namespace(rbac.objs)]
    settings = load_settings(config, env=env)
    env.update({
        "SNIFFER_CONFIG": str(config),
        "SNIFFER_KUBE_KUBECONFIG": str(kubeconfig),
        "SNIFFER_KUBE_NAMESPACES": ",".join(rbac.ns[n] for n in settings.kube.namespaces),
        "SNIFFER_PLATFORM_URL": platform.url,
        "SNIFFER_PLATFORM_TOKEN_FILE": str(platform.token_file),
        "POD_NAME": f"{workload['metadata']['name']}-{uuid.uuid4().hex[:5]}",
        "POD_NAMESPACE": home,
        # Telemetry stays on (a Prometheus endpoint where the overlay has one); nothing
        # is exported over OTLP, as the testbed has no collector.
        "OTEL_TRACES_EXPORTER": "none", "OTEL_METRICS_EXPORTER": "none",
        "OTEL_LOGS_EXPORTER": "none",
    })
    if "SNIFFER_LEADER_LEASE_NAMESPACE" in env:
        env["SNIFFER_LEADER_LEASE_NAMESPACE"] = home
    if "SNIFFER_TELEMETRY_PROMETHEUS_PORT" in env:
        env["SNIFFER_TELEMETRY_PROMETHEUS_PORT"] = str(free_port())
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp), **env}


def spawn(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:
        return subprocess.Popen([sys.executable, "-m", "cli", *args], env=env,
                                stdout=out, stderr=out, cwd=log.parent)


def lease_holder(apiserver: ApiServer, namespace: str) -> str | None:
    reply = request_sync(apiserver, "GET",
                         f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases/sniffer-watch")
    return (reply.body or {}).get("spec", {}).get("holderIdentity") if reply.ok else None


async def test_the_watcher_does_its_job_as_its_own_service_account(
        rbac: InstalledRbac, apiserver: ApiServer, platform: PlatformServer, tmp_path: Path):
    watch = one(rbac.objs, "Deployment", "sniffer-watch")
    kubeconfig = rbac.kubeconfig("sniffer-watch", tmp_path / "watch.kubeconfig")
    env = run_as(rbac, watch, kubeconfig, platform, tmp_path)
    port = free_port()
    env["SNIFFER_HEALTH_PORT"] = str(port)
    settings = load_settings(env=env)
    home = rbac.ns[home_namespace(rbac.objs)]
    jobs = watched_namespaces(rbac, tmp_path)[:1] or rbac.extra[:1]
    if not jobs:  # cluster-wide: pods in a namespace the overlay never names
        jobs = [f"t-jobs-{uuid.uuid4().hex[:6]}"]
        ensure_namespace(apiserver, jobs[0])
        rbac.extra.append(jobs[0])
    log = tmp_path / "watch.log"
    proc = spawn(["watch"], env, log)
    admin = await KubeClient.connect(kubeconfig=str(apiserver.kubeconfig))
    try:
        pods = Pods(admin, jobs[0])
        await eventually(lambda: proc.poll() is not None
                         or _get_ok(f"http://127.0.0.1:{port}/readyz"))
        assert proc.poll() is None, log.read_text()
        await eventually(lambda: lease_holder(apiserver, home) == env["POD_NAME"])
        run_id = f"deploy-{uuid.uuid4().hex[:10]}"
        platform.create_run(run_id, pod_namespace=jobs[0], pod_name="job-1")
        await pods.create("job-1", run_id)
        await pods.running("job-1")
        await eventually(lambda: (platform.get_run(run_id) or {}).get("state") == "running")
        if settings.finalizers.enabled:
            await eventually(lambda: _has_finalizer(pods, "job-1"))
        await pods.succeeded("job-1")
        await eventually(lambda: (platform.get_run(run_id) or {}).get("state") == "succeeded")
        await eventually(lambda: _has_finalizer(pods, "job-1", present=False))
        if "SNIFFER_TELEMETRY_PROMETHEUS_PORT" in env:  # components/prometheus
            url = f"http://127.0.0.1:{env['SNIFFER_TELEMETRY_PROMETHEUS_PORT']}/metrics"
            scraped = await asyncio.to_thread(_get_text, url)
            (tmp_path / "metrics.txt").write_text(scraped)
            assert re.search(r"^sniffer_changes_acknowledged\w*\{[^}]*\} [1-9]", scraped, re.M), \
                scraped
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.wait, 90) == 0, log.read_text()
        assert lease_holder(apiserver, home) is None  # released on the way out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        await admin.close()
    assert_no_refusal(log.read_text())


async def test_the_service_accounts_may_patch_nothing_but_their_finalizer(
        rbac: InstalledRbac, apiserver: ApiServer, tmp_path: Path):
    jobs = watched_namespaces(rbac, tmp_path)[:1] or [f"t-jobs-{uuid.uuid4().hex[:6]}"]
    if jobs[0] not in rbac.extra:
        ensure_namespace(apiserver, jobs[0])
        rbac.extra.append(jobs[0])
    admin = await KubeClient.connect(kubeconfig=str(apiserver.kubeconfig))
    try:
        await Pods(admin, jobs[0]).create("victim", "run-1")
        await admin.request_json("POST", KubeClient.jobs_path(jobs[0]), body={
            "apiVersion": "batch/v1", "kind": "Job",
            "metadata": {"name": "victim", "labels": {"sniffer.io/run-id": "run-2"}},
            "spec": {"suspend": True, "template": {"spec": {
                "restartPolicy": "Never",
                "containers": [{"name": "main", "image": "registry.example/job:1"}]}}}})
    finally:
        await admin.close()

    def patch(kubeconfig: Path, body: Obj) -> subprocess.CompletedProcess[str]:
        return run([kubectl_path(), f"--kubeconfig={kubeconfig}", "patch", "pod", "victim",
                    "-n", jobs[0], "--type=merge", "-p", json.dumps(body)], check=False)

    async def patch_job(kubeconfig: Path, body: Obj) -> str | None:
        """The refusal of a merge patch of Job "victim", None if it landed. (Straight to
        the API: `kubectl patch` GETs first, which the reconciler may not.)"""
        client = await KubeClient.connect(kubeconfig=str(kubeconfig))
        try:
            await client.patch_job(jobs[0], "victim", body, content_type=MERGE_PATCH)
        except KubeError as refused:
            return f"{refused.status} {refused}"
        finally:
            await client.close()
        return None

    for sa in ("sniffer-watch", "sniffer-reconcile"):
        kc = rbac.kubeconfig(sa, tmp_path / f"{sa}.kubeconfig")
        # The policy takes effect once the API server has loaded it: wait for the refusal.
        # Each attempt must change something: a no-op patch is rightly allowed.
        def relabel(kc: Path = kc) -> subprocess.CompletedProcess[str] | None:
            body = {"metadata": {"labels": {"sniffer.io/run-id": uuid.uuid4().hex}}}
            proc = patch(kc, body)
            return proc if proc.returncode != 0 and "Forbidden" in proc.stderr else None

        refusal = await eventually(relabel)
        assert "only add or remove its own finalizer" in refusal.stderr
        for body in ({"metadata": {"annotations": {"x": "y"}}},
                     {"metadata": {"finalizers": ["example.com/other"]}},
                     {"spec": {"activeDeadlineSeconds": 1}}):
            proc = patch(kc, body)
            assert proc.returncode != 0 and "Forbidden" in proc.stderr, (body, proc.stdout)
        added = patch(kc, {"metadata": {"finalizers": ["sniffer.io/outcome"]}})
        assert added.returncode == 0, added.stderr
        removed = patch(kc, {"metadata": {"finalizers": None}})
        assert removed.returncode == 0, removed.stderr
        # The same policy holds for Jobs: unsuspending, relabelling or re-owning a Job is
        # refused; its own finalizer comes and goes.
        job_changes: list[Obj] = [{"spec": {"suspend": False}},
                                  {"metadata": {"labels": {"sniffer.io/run-id": "run-9"}}},
                                  {"metadata": {"finalizers": ["example.com/other"]}}]
        for change in job_changes:
            refusal = await patch_job(kc, change)
            assert refusal is not None and refusal.startswith("403"), (change, refusal)
            assert "only add or remove its own finalizer" in refusal
        assert await patch_job(kc, {"metadata": {"finalizers": ["sniffer.io/outcome"]}}) is None
        assert await patch_job(kc, {"metadata": {"finalizers": None}}) is None


def assert_no_refusal(output: str) -> None:
    """No request was refused: no 403 status, no "forbidden" (ids may contain "403")."""
    assert not re.search(r"\b403\b|forbidden", output, re.I), output


async def _has_finalizer(pods: Pods, name: str, *, present: bool = True) -> bool:
    return ("sniffer.io/outcome" in (await pods.finalizers(name) or [])) == present


async def test_the_reconciler_does_its_job_as_its_own_service_account(
        rbac: InstalledRbac, apiserver: ApiServer, platform: PlatformServer, tmp_path: Path):
    cron = one(rbac.objs, "CronJob", "sniffer-reconcile")
    kubeconfig = rbac.kubeconfig("sniffer-reconcile", tmp_path / "reconcile.kubeconfig")
    env = run_as(rbac, cron, kubeconfig, platform, tmp_path)
    jobs = watched_namespaces(rbac, tmp_path)[:1] or [f"t-jobs-{uuid.uuid4().hex[:6]}"]
    if jobs[0] not in rbac.extra:
        ensure_namespace(apiserver, jobs[0])
        rbac.extra.append(jobs[0])
    # A pod that succeeded while nobody watched, still holding Sniffer's finalizer.
    run_id = f"deploy-{uuid.uuid4().hex[:10]}"
    platform.create_run(run_id, pod_namespace=jobs[0], pod_name="missed")
    admin = await KubeClient.connect(kubeconfig=str(apiserver.kubeconfig))
    try:
        pods = Pods(admin, jobs[0])
        await pods.create("missed", run_id)
        await admin.patch_pod(jobs[0], "missed",
                              {"metadata": {"finalizers": ["sniffer.io/outcome"]}})
        await pods.running("missed")
        await pods.succeeded("missed")
        dry = await asyncio.to_thread(
            run, [sys.executable, "-m", "cli", "reconcile", "--dry-run"], env=env,
            cwd=tmp_path, check=False, timeout=120)
        assert dry.returncode == 0, dry.stdout + dry.stderr
        assert run_id in dry.stdout
        assert (platform.get_run(run_id) or {}).get("state") == "queued"
        assert await _has_finalizer(pods, "missed")
        real = await asyncio.to_thread(
            run, [sys.executable, "-m", "cli", "reconcile", "--only", run_id,
                  "--output", "json"], env=env, cwd=tmp_path, check=False, timeout=120)
        assert real.returncode == 0, real.stdout + real.stderr
        assert (platform.get_run(run_id) or {}).get("state") == "succeeded"
        assert await _has_finalizer(pods, "missed", present=False)  # patch was allowed
    finally:
        await admin.close()
    for output in (dry.stdout + dry.stderr, real.stdout + real.stderr):
        assert_no_refusal(output)


# -- the deploy guide ------------------------------------------------------------------------

def test_the_deploy_guide_commands_work_as_written(apiserver: ApiServer, tmp_path: Path):
    """docs/deploy.md's `sh testbed` blocks, in order, with the dev overlay: prepare,
    deploy, start an ad-hoc reconcile, then uninstall, which must release the finalizer
    of a tracked pod and delete everything the overlay created."""
    blocks = re.findall(r"```sh testbed\n(.*?)```", (REPO / "docs" / "deploy.md").read_text(),
                        re.S)
    assert len(blocks) >= 5
    token = tmp_path / "platform-token"
    token.write_text("not-a-real-token\n")
    env = {"PATH": f"{kubectl_path().parent}:{Path(sys.executable).parent}:"
                   f"{os.environ.get('PATH', '/usr/bin:/bin')}",
           "KUBECONFIG": str(apiserver.kubeconfig), "HOME": str(tmp_path),
           "TOKEN_FILE": str(token)}
    pod_path = "/api/v1/namespaces/jobs-dev/pods"
    try:
        for block in blocks[:-1]:
            run(["bash", "-euo", "pipefail", "-c", block], env=env, cwd=REPO)
        created = request_sync(apiserver, "POST", pod_path, {
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "guide-pod", "labels": {"sniffer.io/run-id": "guide-run"},
                         "finalizers": ["sniffer.io/outcome"]},
            "spec": {"containers": [{"name": "main", "image": "registry.local/work:1"}]}})
        assert created.status == 201, created.body
        jobs = request_sync(apiserver, "GET", "/apis/batch/v1/namespaces/sniffer-dev/jobs")
        assert any(j["metadata"]["name"].startswith("sniffer-reconcile-manual-")
                   for j in jobs.body["items"])
        scaled = request_sync(apiserver, "GET",
                              "/apis/apps/v1/namespaces/sniffer-dev/deployments/sniffer-watch")
        assert scaled.body["spec"]["replicas"] == 0
        out = run(["bash", "-euo", "pipefail", "-c", blocks[-1]], env=env, cwd=REPO).stdout
        assert "removed 1 finalizers" in out, out
        pod = request_sync(apiserver, "GET", f"{pod_path}/guide-pod").body
        assert not pod["metadata"].get("finalizers")
        for path in ("/apis/apps/v1/namespaces/sniffer-dev/deployments/sniffer-watch",
                     "/apis/rbac.authorization.k8s.io/v1/clusterroles/sniffer-watch-pods",
                     "/api/v1/namespaces/sniffer-dev/secrets/sniffer-platform-token"):
            assert request_sync(apiserver, "GET", path).status == 404, path
    finally:
        run(apiserver.kubectl_command("delete", "-k", str(KUSTOMIZE / "overlays" / "dev"),
                                      "--ignore-not-found"), check=False)
        request_sync(apiserver, "PATCH", f"{pod_path}/guide-pod",
                     {"metadata": {"finalizers": None}}, content_type=MERGE_PATCH)
        request_sync(apiserver, "DELETE", pod_path, params={"gracePeriodSeconds": 0})
