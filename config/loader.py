"""Builds a validated `Settings` from defaults, a YAML file and the environment.

Contract:
* Precedence, lowest first: the dataclass defaults, the YAML file (``--config`` or
  ``$SNIFFER_CONFIG``), then environment variables ``SNIFFER_<GROUP>_<FIELD>``
  (``SNIFFER_PLATFORM_URL``, ``SNIFFER_WORKERS_COUNT``, ``SNIFFER_KUBE_NAMESPACES=a,b``).
* Any problem raises one `ConfigError` listing every problem found, each naming the field
  (``workers.count``) and the offending value, before anything starts. Unknown keys are
  errors too: a typo must not silently fall back to a default.
* Values are coerced from their YAML or string form to the field's declared type:
  bool accepts true/false/1/0/yes/no; ``null``/empty means None for optional fields;
  tuples accept a YAML list or a comma-separated string.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import yaml

from config.settings import Settings

ENV_PREFIX = "SNIFFER_"
_BOOL_WORDS = {"true": True, "1": True, "yes": True, "on": True,
               "false": False, "0": False, "no": False, "off": False}


class ConfigError(ValueError):
    """The configuration is invalid; `problems` names each field and value."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("invalid configuration:\n  " + "\n  ".join(problems))


def load_settings(path: str | Path | None = None, *, env: Mapping[str, str] | None = None,
                  require_platform: bool = True) -> Settings:
    """Load, coerce and validate; raises `ConfigError` naming every bad field."""
    env = os.environ if env is None else env
    problems: list[str] = []
    raw: dict[str, Any] = {}
    path = path or env.get(ENV_PREFIX + "CONFIG") or None
    if path:
        raw = _read_yaml(Path(path), problems)
    groups = _groups()
    values: dict[str, dict[str, Any]] = {g: {} for g in groups}
    _from_file(raw, groups, values, problems)
    _from_env(env, groups, values, problems)  # after the file: the environment wins
    settings = Settings()
    if not problems:
        built = {g: dataclasses.replace(getattr(settings, g), **v) for g, v in values.items()}
        settings = Settings(**built)
        problems.extend(settings.problems(require_platform=require_platform))
    if problems:
        raise ConfigError(problems)
    return settings


def _from_file(raw: dict[str, Any], groups: dict[str, type],
               values: dict[str, dict[str, Any]], problems: list[str]) -> None:
    for group, content in raw.items():
        if group not in groups:
            problems.append(f"{group}: unknown section (known: {', '.join(sorted(groups))})")
            continue
        if content is None:
            continue
        if not isinstance(content, dict):
            problems.append(f"{group}: must be a mapping (got {content!r})")
            continue
        for name, value in content.items():
            _set(groups[group], group, str(name), value, values, problems)


def _from_env(env: Mapping[str, str], groups: dict[str, type],
              values: dict[str, dict[str, Any]], problems: list[str]) -> None:
    for key, value in env.items():
        if not key.startswith(ENV_PREFIX) or key == ENV_PREFIX + "CONFIG":
            continue
        rest = key[len(ENV_PREFIX):].lower()
        group, _, name = rest.partition("_")
        if group in groups and name:
            _set(groups[group], group, name, value, values, problems, source=key)


def _read_yaml(path: Path, problems: list[str]) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        problems.append(f"config file {path}: cannot read ({exc.strerror})")
        return {}
    except yaml.YAMLError as exc:
        problems.append(f"config file {path}: not valid YAML ({exc})")
        return {}
    if data is None:
        return {}
    if not isinstance(data, dict):
        problems.append(f"config file {path}: must be a mapping of sections (got {data!r})")
        return {}
    return data


def _groups() -> dict[str, type]:
    hints = typing.get_type_hints(Settings)
    return {f.name: hints[f.name] for f in dataclasses.fields(Settings)}


def _set(cls: type, group: str, name: str, value: object, values: dict[str, dict[str, Any]],
         problems: list[str], *, source: str | None = None) -> None:
    label = f"{group}.{name}" + (f" (from {source})" if source else "")
    hints = typing.get_type_hints(cls)
    if name not in hints:
        known = ", ".join(f.name for f in dataclasses.fields(cls))
        problems.append(f"{label}: unknown field (known: {known})")
        return
    try:
        values[group][name] = _coerce(hints[name], value)
    except (TypeError, ValueError) as exc:
        problems.append(f"{label}: {exc} (got {value!r})")


def _coerce(tp: Any, value: object) -> object:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.strip().lower() in ("", "null")):
            return None
        return _coerce(args[0], value)
    if origin is tuple:
        if isinstance(value, str):
            items: list[object] = [s.strip() for s in value.split(",") if s.strip()]
        elif isinstance(value, list):
            items = value
        else:
            raise TypeError("must be a list or a comma-separated string")
        inner = typing.get_args(tp)[0]
        return tuple(_coerce(inner, item) for item in items)
    if value is None:
        raise TypeError("must not be null")
    scalar = _SCALARS.get(tp)
    if scalar is None:
        raise TypeError(f"unsupported type {tp}")
    return scalar(value)


def _to_bool(value: object) -> bool:
    if isinstance(value, bool):
        return value
    word = str(value).strip().lower()
    if word not in _BOOL_WORDS:
        raise ValueError("must be true or false")
    return _BOOL_WORDS[word]


def _to_int(value: object) -> int:
    if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
        raise TypeError("must be an integer")
    try:
        return int(str(value).strip()) if isinstance(value, str) else int(value)  # type: ignore[call-overload]
    except ValueError:
        raise ValueError("must be an integer") from None


def _to_float(value: object) -> float:
    if isinstance(value, bool):
        raise TypeError("must be a number")
    try:
        return float(value)  # type: ignore[arg-type]
    except ValueError:
        raise ValueError("must be a number") from None


def _to_str(value: object) -> str:
    if isinstance(value, (dict, list)):
        raise TypeError("must be a string")
    return str(value)


_SCALARS: dict[object, Callable[[object], object]] = {
    bool: _to_bool, int: _to_int, float: _to_float, str: _to_str}
