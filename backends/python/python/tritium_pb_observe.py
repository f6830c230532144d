"""`triton_python_backend_utils`' logging and custom metrics: `Logger`, `MetricFamily` and `Metric`, all sent to
the server through the stub."""

from __future__ import annotations

import enum
import sys
import weakref

import tritium_pb_state as _state
from tritium_pb_types import TritonModelException

class LogLevel(enum.IntEnum):
    INFO = 0
    WARNING = 1
    ERROR = 2
    VERBOSE = 3


class Logger:
    """Log lines from model code, written to the server's log with the model's name. The levels are
    `Logger.INFO` ... (also `Logger.LogLevel.INFO`); a plain int is not one."""

    LogLevel = LogLevel
    INFO = LogLevel.INFO
    WARNING = LogLevel.WARNING
    ERROR = LogLevel.ERROR
    VERBOSE = LogLevel.VERBOSE

    @staticmethod
    def log(message, level=LogLevel.INFO):
        if not isinstance(level, LogLevel):
            raise TypeError(f"log(): the level must be a Logger.LogLevel (Logger.INFO, ...), not {type(level).__name__}")
        frame = sys._getframe(1)
        while frame is not None and frame.f_code.co_filename == __file__:
            frame = frame.f_back
        where = (frame.f_code.co_filename, frame.f_lineno) if frame is not None else ("", 0)
        if _state.runtime is not None:
            _state.runtime.log(int(level), str(message), where[0], where[1])
        else:
            print(str(message), file=sys.stderr)

    @staticmethod
    def log_info(message):
        Logger.log(message, LogLevel.INFO)

    @staticmethod
    def log_warn(message):
        Logger.log(message, LogLevel.WARNING)

    @staticmethod
    def log_error(message):
        Logger.log(message, LogLevel.ERROR)

    @staticmethod
    def log_verbose(message):
        Logger.log(message, LogLevel.VERBOSE)


class MetricKind(enum.IntEnum):
    COUNTER = 0
    GAUGE = 1
    HISTOGRAM = 2


_FAMILY_GONE = ("Invalid metric operation as the corresponding 'MetricFamily' has been deleted. The 'MetricFamily' "
                "object should be deleted AFTER its corresponding 'Metric' objects have been deleted.")  # fmt: skip


class MetricFamily:
    """A family of custom metrics, shown on the server's metrics page: `MetricFamily(name, description, kind)` with
    kind `MetricFamily.COUNTER`, `GAUGE` or `HISTOGRAM`; its metrics (one per label set) from `Metric(...)`."""

    COUNTER = MetricKind.COUNTER
    GAUGE = MetricKind.GAUGE
    HISTOGRAM = MetricKind.HISTOGRAM

    def __init__(self, name, description, kind):
        if not isinstance(name, str) or not isinstance(description, str) or not isinstance(kind, MetricKind):
            raise TypeError("MetricFamily(): takes name: str, description: str, kind: MetricFamily.COUNTER, GAUGE or "
                            "HISTOGRAM")  # fmt: skip
        self._name = name
        self._kind = kind
        _state.runtime.metric("Error when creating MetricFamily", "family", name, description=description, kind=int(kind))

    def Metric(self, labels=None, buckets=None):  # noqa: N802 - Triton's name
        """The metric of this family with `labels` (a dict of str; the same labels: the same metric, its value
        kept); a histogram's needs `buckets`, its upper bounds."""
        if self._kind == MetricKind.HISTOGRAM and buckets is None:
            raise TritonModelException("Failed to create metric. Missing required buckets.")
        if self._kind != MetricKind.HISTOGRAM and buckets is not None:
            raise TritonModelException("Failed to create metric. Unexpected buckets found.")
        labels = dict(labels or {})
        if buckets is not None:
            buckets = [float(b) for b in buckets]
        _state.runtime.metric("Error when creating Metric", "metric", self._name, labels=labels, buckets=buckets)
        return Metric(self, labels)


class Metric:
    """One metric of a MetricFamily (made by `MetricFamily.Metric`). It does not keep its family alive: delete the
    family after its metrics."""

    def __init__(self, family, labels):
        self._family = weakref.ref(family)
        self._name = family._name
        self._labels = labels

    def _call(self, words, action, value=None):
        if self._family() is None:
            raise TritonModelException(f"{words}: {_FAMILY_GONE}")
        return _state.runtime.metric(words, action, self._name, labels=self._labels, value=value)

    def increment(self, value):
        self._call("Failed to increment metric value", "increment", float(value))

    def set(self, value):
        self._call("Failed to set metric value", "set", float(value))

    def observe(self, value):
        self._call("Failed to observe metric value", "observe", float(value))

    def value(self):
        return float(self._call("Failed to get metric value", "value"))
