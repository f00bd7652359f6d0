"""Optional OTLP export of log records (``OTEL_LOGS_EXPORTER=otlp``), beside the JSON lines.

Contract:
* `install_log_export` adds one handler to the root logger that emits each record through
  an OpenTelemetry LoggerProvider (batched): body = the formatted message, severity from
  the level, the current span's trace and span ids, and the record's ``extra`` fields as
  attributes, with the same redaction as the JSON lines (a field whose name contains token,
  secret, authorization or password is sent as ``[redacted]``).
* Records of the ``opentelemetry`` loggers are not exported (an exporter reporting its own
  failure through itself would loop).
* The handler never raises into the logging call.
"""

from __future__ import annotations

import logging
from typing import Any

from opentelemetry._logs import SeverityNumber
from opentelemetry.context import get_current
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor, ConsoleLogRecordExporter
from opentelemetry.sdk.resources import Resource

from sniffer.logs import is_sensitive

_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


def severity(levelno: int) -> SeverityNumber:
    """The OpenTelemetry severity of a `logging` level (DEBUG 5 … CRITICAL 21)."""
    for threshold, number in ((logging.CRITICAL, SeverityNumber.FATAL),
                              (logging.ERROR, SeverityNumber.ERROR),
                              (logging.WARNING, SeverityNumber.WARN),
                              (logging.INFO, SeverityNumber.INFO),
                              (logging.DEBUG, SeverityNumber.DEBUG)):
        if levelno >= threshold:
            return number
    return SeverityNumber.TRACE


def _attribute(value: Any) -> Any:
    if isinstance(value, bool | int | float | str):
        return value
    return str(value)


class OtlpLogHandler(logging.Handler):
    def __init__(self, provider: LoggerProvider) -> None:
        super().__init__()
        self._provider = provider

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.name.startswith("opentelemetry") and super().filter(record)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            attributes: dict[str, Any] = {
                "code.function.name": record.funcName, "code.line.number": record.lineno,
                "logger": record.name}
            for key, value in vars(record).items():
                if key in _STANDARD or key.startswith("_"):
                    continue
                attributes[key] = "[redacted]" if is_sensitive(key) else _attribute(value)
            if record.exc_info and record.exc_info[0] is not None:
                attributes["exception.type"] = record.exc_info[0].__name__
            self._provider.get_logger(record.name).emit(
                timestamp=int(record.created * 1e9), context=get_current(),
                severity_number=severity(record.levelno),
                severity_text={"WARNING": "WARN", "CRITICAL": "FATAL"}.get(
                    record.levelname, record.levelname),
                body=record.getMessage(), attributes=attributes)
        except Exception:  # noqa: BLE001 - logging.Handler's contract: handleError reports it
            self.handleError(record)


def install_log_export(resource: Resource, exporters: tuple[str, ...],
                       ) -> tuple[LoggerProvider, logging.Handler]:
    provider = LoggerProvider(resource=resource)
    if "otlp" in exporters:
        from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
        provider.add_log_record_processor(BatchLogRecordProcessor(OTLPLogExporter()))
    if "console" in exporters:
        provider.add_log_record_processor(BatchLogRecordProcessor(ConsoleLogRecordExporter()))
    handler = OtlpLogHandler(provider)
    logging.getLogger().addHandler(handler)
    return provider, handler
