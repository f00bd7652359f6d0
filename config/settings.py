"""The settings schema: every knob Sniffer has, grouped, typed and documented.

Contract:
* Each group is a frozen dataclass; each field has a default that is safe in production
  and a docstring (the string literal below it) that `config/default.yaml` mirrors.
* A `Settings` value is valid when `config.loader` hands it out: the loader builds it,
  collects `Settings.problems()` (each names the offending field, ``platform.url``, and
  its value) and raises `ConfigError` with all of them. Constructing one by hand checks
  nothing; call `problems()` yourself.
* Nothing here does I/O; the loader reads files and the environment.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

# Kubernetes' own name rules: namespaces are DNS-1123 labels, Lease names subdomains.
_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
_SUBDOMAIN = re.compile(
    r"(?=.{1,253}$)[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")


KINDS = ("pods", "jobs", "deployments", "statefulsets")
"""The workload kinds Sniffer knows (`KubeSettings.kinds`)."""


@dataclass(frozen=True, slots=True)
class KubeSettings:
    kubeconfig: str | None = None
    """Path of a kubeconfig; None means in-cluster when KUBERNETES_SERVICE_HOST is set,
    else $KUBECONFIG or ~/.kube/config."""
    context: str | None = None
    """Kubeconfig context to use; None means the current context."""
    namespaces: tuple[str, ...] = ()
    """Namespaces to watch; empty means all namespaces (needs cluster-wide RBAC)."""
    label_selector: str = "sniffer.io/run-id"
    """Label selector of the tracked pods; the run id is read from sniffer.io/run-id."""
    kinds: tuple[str, ...] = ("pods", "jobs")
    """Workload kinds watched and reconciled: pods (bare pods, always) and jobs (batch/v1
    Jobs: a run whose Job carries the run id takes its state from the Job, its pods are
    attempts), deployments and statefulsets (apps/v1, replicas 1: a run whose controller
    carries the run id takes its state from the controller and its live pods, so a pod a
    drain replaces is not the run's end). Without a kind its pods are judged one by one,
    as bare pods (as Sniffer did before it knew the kind): a Job's failed attempt then
    ends the run although the Job may retry it. deployments and statefulsets are off by
    default: they need RBAC on apps (kustomize/base/rbac.yaml), which a watcher upgraded
    without it would lack."""
    page_size: int = 500
    """Items per LIST page (limit/continue pagination)."""
    watch_timeout_min_s: int = 300
    """Lower bound of the server-side watch timeout, randomised per watch to spread relists."""
    watch_timeout_max_s: int = 600
    """Upper bound of the server-side watch timeout."""
    read_timeout_s: float = 120.0
    """A watch stream silent for this long is declared half-open and reopened. The API
    server sends bookmarks about once a minute, so this must comfortably exceed 60 s."""
    verify_tls: bool = True
    """Verify the API server's certificate. Turning this off is logged at every start."""
    watch_list: bool = False
    """Stream each list (WatchList: one watch with sendInitialEvents=true, the objects then
    an initial-events-end bookmark, then live events) instead of paginated LISTs. A server
    that refuses it (the WatchList feature gate off) gets paginated LISTs, logged once.
    Off by default until a quiet `make bench` measures its cold sync against paginated
    LISTs (docs/benchmarks.md)."""
    wire: str = "json"
    """Encoding of pod LISTs and watches: json or protobuf. JSON is the default because it
    measured faster for Sniffer (70 against 94 µs per pod decoded and projected, and a
    faster 50k-pod cold sync; docs/benchmarks.md) until a quiet `make bench` with the API
    server's CPU shows protobuf pays off. With protobuf, a server or proxy that refuses it
    (406, 415 or a JSON answer) gets JSON from then on, logged once."""


@dataclass(frozen=True, slots=True)
class PlatformSettings:
    url: str = ""
    """Base URL of the Platform API (required), e.g. https://platform.example.com."""
    token_file: str = "/var/run/secrets/sniffer/platform-token"
    """File holding the bearer token (a Secret mount); re-read when it changes."""
    timeout_s: float = 10.0
    """Total timeout of one platform call."""
    max_connections: int = 128
    """Connection pool size; must be at least the number of workers to keep them busy."""
    verify_tls: bool = True
    """Verify the platform's certificate. Turning this off is logged at every start."""
    ca_file: str | None = None
    """Extra CA bundle for the platform's certificate."""


@dataclass(frozen=True, slots=True)
class WorkerSettings:
    count: int = 128
    """Concurrent workers; each holds at most one platform call in flight. 128 keeps
    500 changes/s flowing to a platform that takes 200 ms per call."""
    max_retries: int = 12
    """Retries of one change before it is counted as dropped (the reconciler repairs it)."""
    base_delay_s: float = 0.005
    """First per-key retry delay; doubles per failure."""
    max_delay_s: float = 60.0
    """Cap of the per-key retry delay."""
    qps: float = 200.0
    """Overall token bucket for retries: sustained retries per second."""
    burst: int = 1000
    """Overall token bucket for retries: burst size."""
    list_aging_s: float = 30.0
    """Live changes (watch events, retries) go before changes from an initial list or
    a relist, but a list change never waits behind live ones added more than this long
    after it, so nothing starves; 0 makes each queue FIFO."""


@dataclass(frozen=True, slots=True)
class StateSettings:
    image_pull_failure_after_s: float = 300.0
    """A pod that cannot pull its image for this long is reported failed."""
    crashloop_failure_restarts: int = 5
    """A container in CrashLoopBackOff with this many restarts is reported failed."""
    crashloop_failure_after_s: float = 600.0
    """A container crash-looping for this long is reported failed."""
    pending_failure_after_s: float | None = None
    """An unschedulable pod pending this long is reported failed; None never fails it."""


@dataclass(frozen=True, slots=True)
class FinalizerSettings:
    enabled: bool = True
    """Hold Sniffer's finalizer on tracked pods until the platform acknowledged the
    terminal state, so no outcome can vanish with a deleted pod."""
    workers: int = 16
    """Concurrent finalizer patches (adds and releases), on their own queue beside the
    platform workers, so a slow API server delays finalizers, not platform updates. Each
    holds one API server connection. Failed patches retry with the workers.* backoff."""


@dataclass(frozen=True, slots=True)
class LeaderSettings:
    enabled: bool = True
    """Elect a leader on a Lease; only the leader writes."""
    lease_name: str = "sniffer-watch"
    """Name of the coordination.k8s.io Lease."""
    lease_namespace: str = "default"
    """Namespace of the Lease (the Deployment's own namespace in-cluster)."""
    identity: str | None = None
    """This replica's identity; None means $POD_NAME, else the hostname plus a random suffix."""
    lease_duration_s: float = 15.0
    """How long a lease is valid after its last renewal; a standby takes over after it."""
    renew_deadline_s: float = 10.0
    """The leader stops writing if it could not renew for this long (< lease_duration_s)."""
    retry_period_s: float = 2.0
    """Interval between acquire/renew attempts."""


@dataclass(frozen=True, slots=True)
class HealthSettings:
    host: str = "0.0.0.0"
    """Bind address of the /healthz and /readyz server."""
    port: int = 8080
    """Port of the health server; 0 disables it."""


@dataclass(frozen=True, slots=True)
class ShutdownSettings:
    drain_timeout_s: float = 20.0
    """On SIGTERM, in-flight updates get this long to finish before they are cancelled.
    The pod's terminationGracePeriodSeconds must exceed it."""


@dataclass(frozen=True, slots=True)
class ReconcileSettings:
    grace_period_s: float = 120.0
    """A non-terminal run whose pod is missing is only failed ('pod lost') once the run is
    older than this, since a fresh run may not have its pod yet. It also holds back a
    finished pod whose deletion completed (terminal phase, deletionGracePeriodSeconds 0):
    only the watcher knows whether the deletion or the workload ended it, so the pod is
    left to the watcher first and judged only once this long has passed since its
    deletionTimestamp."""
    concurrency: int = 32
    """Repairs in flight at once."""


@dataclass(frozen=True, slots=True)
class TelemetrySettings:
    log_level: str = "INFO"
    """Python log level name."""
    log_format: str = "json"
    """'json' (one object per line, with trace ids) or 'text'."""
    prometheus_port: int | None = None
    """Serve a Prometheus scrape endpoint on this port; None (default) disables it."""


@dataclass(frozen=True, slots=True)
class Settings:
    kube: KubeSettings = field(default_factory=KubeSettings)
    platform: PlatformSettings = field(default_factory=PlatformSettings)
    workers: WorkerSettings = field(default_factory=WorkerSettings)
    states: StateSettings = field(default_factory=StateSettings)
    finalizers: FinalizerSettings = field(default_factory=FinalizerSettings)
    leader: LeaderSettings = field(default_factory=LeaderSettings)
    health: HealthSettings = field(default_factory=HealthSettings)
    shutdown: ShutdownSettings = field(default_factory=ShutdownSettings)
    reconcile: ReconcileSettings = field(default_factory=ReconcileSettings)
    telemetry: TelemetrySettings = field(default_factory=TelemetrySettings)

    def problems(self, *, require_platform: bool = True) -> list[str]:
        """Every cross-field and range problem, as 'group.field: message (got value)'.

        `require_platform` is False for commands that never call the platform
        (`sniffer finalizers remove`)."""
        out: list[str] = []

        def need(ok: bool, name: str, message: str, value: object) -> None:
            if not ok:
                out.append(f"{name}: {message} (got {value!r})")

        k, p, w, le = self.kube, self.platform, self.workers, self.leader
        need(bool(p.url) or not require_platform, "platform.url", "is required", p.url)
        need(p.url.startswith(("http://", "https://")) or not p.url, "platform.url",
             "must start with http:// or https://", p.url)
        need(bool(p.token_file), "platform.token_file", "is required", p.token_file)
        need(p.timeout_s > 0, "platform.timeout_s", "must be > 0", p.timeout_s)
        need(p.max_connections >= 1, "platform.max_connections", "must be >= 1",
             p.max_connections)
        unknown = [kind for kind in k.kinds if kind not in KINDS]
        need(not unknown, "kube.kinds", f"each must be one of {', '.join(KINDS)}", k.kinds)
        need("pods" in k.kinds, "kube.kinds",
             "must include pods (a Job's attempts and an app's replicas are pods)",
             k.kinds)
        need(len(set(k.kinds)) == len(k.kinds), "kube.kinds", "must not repeat a kind",
             k.kinds)
        for ns in k.namespaces:
            need(_LABEL.fullmatch(ns) is not None, "kube.namespaces",
                 "each must be a namespace name (lowercase letters, digits, '-')", ns)
        need(_LABEL.fullmatch(le.lease_namespace) is not None, "leader.lease_namespace",
             "must be a namespace name (lowercase letters, digits, '-')", le.lease_namespace)
        need(_SUBDOMAIN.fullmatch(le.lease_name) is not None, "leader.lease_name",
             "must be a Kubernetes object name (lowercase letters, digits, '-', '.')",
             le.lease_name)
        need(1 <= k.page_size <= 10_000, "kube.page_size", "must be in 1..10000", k.page_size)
        need(0 < k.watch_timeout_min_s <= k.watch_timeout_max_s, "kube.watch_timeout_min_s",
             "must be > 0 and <= kube.watch_timeout_max_s", k.watch_timeout_min_s)
        need(k.read_timeout_s > 0, "kube.read_timeout_s", "must be > 0", k.read_timeout_s)
        need(k.wire in ("protobuf", "json"), "kube.wire", "must be protobuf or json", k.wire)
        need(w.count >= 1, "workers.count", "must be >= 1", w.count)
        need(w.max_retries >= 0, "workers.max_retries", "must be >= 0", w.max_retries)
        need(0 < w.base_delay_s <= w.max_delay_s, "workers.base_delay_s",
             "must be > 0 and <= workers.max_delay_s", w.base_delay_s)
        need(w.qps > 0, "workers.qps", "must be > 0", w.qps)
        need(w.burst >= 1, "workers.burst", "must be >= 1", w.burst)
        need(w.list_aging_s >= 0, "workers.list_aging_s", "must be >= 0", w.list_aging_s)
        need(self.finalizers.workers >= 1, "finalizers.workers", "must be >= 1",
             self.finalizers.workers)
        need(0 < le.retry_period_s < le.renew_deadline_s < le.lease_duration_s,
             "leader.renew_deadline_s",
             "must satisfy retry_period_s < renew_deadline_s < lease_duration_s",
             le.renew_deadline_s)
        need(0 <= self.health.port <= 65535, "health.port", "must be in 0..65535",
             self.health.port)
        need(self.shutdown.drain_timeout_s > 0, "shutdown.drain_timeout_s", "must be > 0",
             self.shutdown.drain_timeout_s)
        need(self.reconcile.grace_period_s >= 0, "reconcile.grace_period_s", "must be >= 0",
             self.reconcile.grace_period_s)
        need(self.reconcile.concurrency >= 1, "reconcile.concurrency", "must be >= 1",
             self.reconcile.concurrency)
        need(self.telemetry.log_format in ("json", "text"), "telemetry.log_format",
             "must be 'json' or 'text'", self.telemetry.log_format)
        need(self.telemetry.log_level.upper() in
             ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"),
             "telemetry.log_level", "must be a log level name", self.telemetry.log_level)
        return out
