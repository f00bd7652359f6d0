"""The settings loader: precedence, coercion, and errors that name the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from config import ConfigError, load_settings
from config.render import render
from config.settings import Settings, WorkerSettings
from watch.workqueue import DEFAULT_AGING_S

BASE_ENV = {"SNIFFER_PLATFORM_URL": "http://platform.test"}


def test_default_yaml_is_rendered_from_the_schema() -> None:
    path = Path(__file__).parents[1] / "config" / "default.yaml"
    assert path.read_text() == render(), "run: python -m config.render > config/default.yaml"


def test_default_yaml_loads_to_the_dataclass_defaults() -> None:
    path = Path(__file__).parents[1] / "config" / "default.yaml"
    assert load_settings(path, env={}, require_platform=False) == Settings()


def test_environment_overrides_the_file(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("workers:\n  count: 8\nplatform:\n  url: http://from-file\n")
    s = load_settings(cfg, env={"SNIFFER_WORKERS_COUNT": "16"})
    assert s.workers.count == 16
    assert s.platform.url == "http://from-file"


def test_config_path_can_come_from_the_environment(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("kube:\n  namespaces: [a, b]\n")
    s = load_settings(env={**BASE_ENV, "SNIFFER_CONFIG": str(cfg)})
    assert s.kube.namespaces == ("a", "b")


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"SNIFFER_KUBE_NAMESPACES": "team-a, team-b"},
         ("kube", "namespaces", ("team-a", "team-b"))),
        ({"SNIFFER_FINALIZERS_ENABLED": "no"}, ("finalizers", "enabled", False)),
        ({"SNIFFER_KUBE_KINDS": "pods"}, ("kube", "kinds", ("pods",))),
        ({"SNIFFER_STATES_PENDING_FAILURE_AFTER_S": "900"},
         ("states", "pending_failure_after_s", 900.0)),
        ({"SNIFFER_TELEMETRY_PROMETHEUS_PORT": "null"}, ("telemetry", "prometheus_port", None)),
    ],
)
def test_environment_values_are_coerced_to_the_field_type(env, expected) -> None:
    group, name, value = expected
    s = load_settings(env={**BASE_ENV, **env})
    assert getattr(getattr(s, group), name) == value


@pytest.mark.parametrize(
    ("yaml_text", "env", "needle"),
    [
        ("workers:\n  count: many\n", {}, "workers.count: must be an integer (got 'many')"),
        ("workers:\n  count: 0\n", {}, "workers.count: must be >= 1 (got 0)"),
        ("workers:\n  list_aging_s: -1\n", {}, "workers.list_aging_s: must be >= 0 (got -1"),
        ("wrokers:\n  count: 3\n", {}, "wrokers: unknown section"),
        ("kube:\n  namespace: a\n", {}, "kube.namespace: unknown field"),
        ("finalizers:\n  enabled: maybe\n", {}, "finalizers.enabled: must be true or false"),
        ("", {"SNIFFER_PLATFORM_URL": "ftp://x"}, "platform.url: must start with http"),
        ("", {"SNIFFER_PLATFORM_TOKEN": "s3cret"}, "platform.token (from SNIFFER_PLATFORM_TOKEN)"),
        ("- a\n- b\n", {}, "must be a mapping of sections"),
        ("kube: [\n", {}, "not valid YAML"),
        ("leader:\n  renew_deadline_s: 30\n", {}, "leader.renew_deadline_s: must satisfy"),
        ("kube:\n  kinds: [pods, cronjobs]\n", {},
         "kube.kinds: each must be one of pods, jobs, deployments, statefulsets "
         "(got ('pods', 'cronjobs'))"),
        ("kube:\n  kinds: [jobs]\n", {}, "kube.kinds: must include pods"),
        ("kube:\n  kinds: [pods, jobs, pods]\n", {}, "kube.kinds: must not repeat a kind"),
        ("kube:\n  kinds: jobs\n", {}, "kube.kinds"),
    ],
)
def test_invalid_config_raises_one_error_naming_the_field(tmp_path, yaml_text, env, needle) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml_text)
    with pytest.raises(ConfigError) as info:
        load_settings(cfg, env={**BASE_ENV, **env})
    assert needle in str(info.value)


def test_a_token_value_never_appears_in_the_error() -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(env={**BASE_ENV, "SNIFFER_PLATFORM_TOKEN": "s3cret-value"})
    # The variable is named, so the operator can find it, but the value is not echoed.
    assert "s3cret-value" not in str(info.value)


def test_pods_and_jobs_are_watched_by_default() -> None:
    assert load_settings(env=BASE_ENV).kube.kinds == ("pods", "jobs")


def test_missing_platform_url_is_reported() -> None:
    with pytest.raises(ConfigError, match=r"platform.url: is required"):
        load_settings(env={})


def test_unreadable_config_file_is_reported(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_settings(tmp_path / "missing.yaml", env=BASE_ENV)


def test_the_list_aging_setting_defaults_to_the_work_queues_own() -> None:
    """config/ sits below watch/ and cannot import it: this keeps the two from drifting."""
    assert WorkerSettings().list_aging_s == DEFAULT_AGING_S
