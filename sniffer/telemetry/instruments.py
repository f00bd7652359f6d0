"""Cheap instruments for hot paths, built on the OpenTelemetry metrics API.

An SDK ``Counter.add`` validates and hashes its attributes on every call (tens of µs on a
loaded 2-core machine); a watcher under load makes several metric calls per event. So:

* `Counts` keeps cumulative counts in a plain dict keyed by the attribute *values* and
  reports them through one ObservableCounter: a hot-path increment is a dict update
  (~0.1 µs). Attribute dicts are built once per distinct key.
* `Histogram` buffers samples per pre-bound attribute set in a deque (``append`` is
  atomic and ~0.1 µs) and hands them to the SDK histogram in batches: whenever a buffer
  reaches `DRAIN_AT` samples, and before every collection (the registry's observable
  callback drains first, and the SDK collects synchronous instruments only after all
  callbacks ran), so no sample is lost or late, at shutdown either. This moves the SDK's
  per-sample cost off the event loop, not out of the process.
* `Value` is a float set by the owner and observed by an ObservableGauge.

Contract:
* Hot-path methods (`Counts.inc`, `Histogram.record`, `Value.set`) are called from one
  thread (the event loop); collection runs on the metric reader's thread and only reads
  (``dict.copy()`` is atomic under the GIL) or pops from deques (thread-safe).
* Distinct attribute values per instrument are capped at `MAX_SERIES`; further values are
  reported as ``"other"``, so a bug or a hostile input cannot explode cardinality.
* Instruments are created only for names in the catalogue (`instrument` raises otherwise),
  with the catalogue's kind, unit, description and bucket boundaries.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Hashable, Iterable, Sequence
from typing import Any

from opentelemetry.metrics import CallbackOptions, Meter, Observation

from sniffer.telemetry.catalogue import BY_NAME, Metric

MAX_SERIES = 64
DRAIN_AT = 65536
"""Samples one series buffers before the hot path hands them to the SDK itself (~2 MiB):
above ~1000 samples/s per series with the default 60 s export interval."""
OTHER = "other"

Attrs = dict[str, Any]


def spec(name: str, kind: str) -> Metric:
    """The catalogue entry for `name`; raises if it is absent or of another kind."""
    metric = BY_NAME.get(name)
    if metric is None:
        raise KeyError(f"{name} is not in sniffer.telemetry.catalogue.METRICS")
    if metric.kind != kind:
        raise ValueError(f"{name} is a {metric.kind} in the catalogue, not a {kind}")
    return metric


class Registry:
    """Creates one component's instruments on a meter and drains its histograms before
    each collection."""

    def __init__(self, meter: Meter) -> None:
        self.meter = meter
        self._histograms: list[Histogram] = []
        self._drain_hooked = False

    def _callbacks(self, observe: Callable[[], Iterable[Observation]],
                   ) -> list[Callable[[CallbackOptions], Iterable[Observation]]]:
        def callback(_options: CallbackOptions) -> Iterable[Observation]:
            return list(observe())

        if self._drain_hooked:
            return [callback]
        # The first observable instrument's first callback drains every histogram.
        self._drain_hooked = True

        def drain(_options: CallbackOptions) -> Iterable[Observation]:
            self.drain()
            return ()

        return [drain, callback]

    def drain(self) -> None:
        for histogram in self._histograms:
            histogram.drain()

    def counts(self, name: str, *, keys: Sequence[str] = ()) -> Counts:
        metric = spec(name, "counter")
        _check_keys(metric, keys)
        counts = Counts(keys)
        self.meter.create_observable_counter(
            metric.name, callbacks=self._callbacks(counts.observe), unit=metric.unit,
            description=metric.meaning)
        return counts

    def value(self, name: str, *, initial: float | None = 0.0) -> Value:
        metric = spec(name, "gauge")
        value = Value(initial)
        self.meter.create_observable_gauge(
            metric.name, callbacks=self._callbacks(value.observe), unit=metric.unit,
            description=metric.meaning)
        return value

    def gauge(self, name: str, observe: Callable[[], Iterable[Observation]]) -> None:
        """An observable gauge whose values come from `observe` (called on the reader's
        thread)."""
        metric = spec(name, "gauge")
        self.meter.create_observable_gauge(
            metric.name, callbacks=self._callbacks(observe), unit=metric.unit,
            description=metric.meaning)

    def histogram(self, name: str, *, keys: Sequence[str] = ()) -> Histogram:
        metric = spec(name, "histogram")
        _check_keys(metric, keys)
        sdk = self.meter.create_histogram(
            metric.name, unit=metric.unit, description=metric.meaning,
            explicit_bucket_boundaries_advisory=list(metric.buckets or ()))
        histogram = Histogram(sdk.record, keys)
        self._histograms.append(histogram)
        return histogram


def _check_keys(metric: Metric, keys: Sequence[str]) -> None:
    unknown = set(keys) - set(metric.attributes)
    if unknown:
        raise ValueError(f"{metric.name}: attributes {sorted(unknown)} are not in the catalogue")


class Counts:
    """Cumulative counts per attribute-value key, observed as one ObservableCounter.

    Invariant: a key is in `_counts` iff it is in `_attrs` (the attrs entry is written
    first, so a concurrent reader never misses one)."""

    __slots__ = ("_attrs", "_counts", "_keys")

    def __init__(self, keys: Sequence[str]) -> None:
        self._keys = tuple(keys)
        self._counts: dict[Hashable, int] = {}
        self._attrs: dict[Hashable, Attrs] = {}
        if not self._keys:
            self._attrs[()] = {}
            self._counts[()] = 0

    def inc(self, key: Hashable = (), n: int = 1) -> None:
        """Add `n` for the attribute values `key`: a value for one attribute key, a tuple
        of values for several, ``()`` for none."""
        try:
            self._counts[key] += n
        except KeyError:
            self._add_series(key, n)

    def _add_series(self, key: Hashable, n: int) -> None:
        if len(self._counts) >= MAX_SERIES:
            key = OTHER if len(self._keys) == 1 else (OTHER,) * len(self._keys)
            if key in self._counts:
                self._counts[key] += n
                return
        values = key if isinstance(key, tuple) else (key,)
        self._attrs[key] = {k: v for k, v in zip(self._keys, values, strict=True)
                            if v is not None}
        self._counts[key] = n

    def get(self, key: Hashable = ()) -> int:
        return self._counts.get(key, 0)

    def observe(self) -> Iterable[Observation]:
        attrs = self._attrs
        return [Observation(n, attrs[key]) for key, n in self._counts.copy().items()]


class Histogram:
    """Samples per attribute-value key, handed to an SDK histogram in batches."""

    __slots__ = ("_buffers", "_keys", "_record")

    def __init__(self, record: Callable[..., None], keys: Sequence[str]) -> None:
        self._record = record
        self._keys = tuple(keys)
        self._buffers: dict[Hashable, tuple[deque[float], Attrs]] = {}

    def record(self, value: float, key: Hashable = ()) -> None:
        try:
            buffer = self._buffers[key][0]
        except KeyError:
            buffer = self._add_series(key)
        buffer.append(value)
        if len(buffer) >= DRAIN_AT:
            self.drain()

    def _add_series(self, key: Hashable) -> deque[float]:
        if len(self._buffers) >= MAX_SERIES:
            key = OTHER if len(self._keys) == 1 else (OTHER,) * len(self._keys)
            if key in self._buffers:
                return self._buffers[key][0]
        values = key if isinstance(key, tuple) else (key,)
        attrs = {k: v for k, v in zip(self._keys, values, strict=True) if v is not None}
        entry: tuple[deque[float], Attrs] = (deque(), attrs)
        self._buffers[key] = entry
        return entry[0]

    def drain(self) -> None:
        """Hand every buffered sample to the SDK (any thread)."""
        record = self._record
        for buffer, attrs in list(self._buffers.copy().values()):
            pop = buffer.popleft
            while True:
                try:
                    value = pop()
                except IndexError:
                    break
                record(value, attrs)


class Value:
    """One number, set by its owner, observed as a gauge (nothing while it is None)."""

    __slots__ = ("current",)

    def __init__(self, initial: float | None = 0.0) -> None:
        self.current = initial

    def set(self, value: float | None) -> None:
        self.current = value

    def observe(self) -> Iterable[Observation]:
        current = self.current
        return () if current is None else (Observation(current),)
