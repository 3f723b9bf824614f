"""Prometheus-format counters for /metrics (requests, prediction latency, webhook events, versions).

Requests are labelled by route template (``/predict``, ``/saliency/{project_id}/{key:path}``, else
``other``; see ``ml_backend.api.app.route_template``), never by the raw path, so the label set is bounded
whatever clients send; every label value is escaped as the text format requires.
"""

from __future__ import annotations

import threading
from collections import Counter

MAX_LABEL_CHARS = 200


def label_value(value: object) -> str:
    """A Prometheus label value: backslash, double quote and newline escaped (text format 0.0.4),
    cut at ``MAX_LABEL_CHARS`` and with anything not encodable as UTF-8 escaped too."""
    text = str(value)[:MAX_LABEL_CHARS].encode("utf-8", "backslashreplace").decode("utf-8")
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class Metrics:
    """Thread-safe in-process counters rendered in the Prometheus text format."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: Counter = Counter()
        self.latency_sum: Counter = Counter()
        self.events: Counter = Counter()
        self.predicted_tasks = 0
        self.predict_seconds = 0.0

    def observe(self, path: str, status: int, seconds: float) -> None:
        with self._lock:
            self.requests[(path, status)] += 1
            self.latency_sum[path] += seconds

    def observe_predict(self, n_tasks: int, seconds: float) -> None:
        with self._lock:
            self.predicted_tasks += n_tasks
            self.predict_seconds += seconds

    def count_event(self, action: str, status: str) -> None:
        with self._lock:
            self.events[(action, status)] += 1

    def render(self, versions: dict[int, str]) -> str:
        with self._lock:
            lines = ["# TYPE robustar_requests_total counter"]
            lines += [f'robustar_requests_total{{path="{label_value(p)}",status="{label_value(s)}"}} {n}'
                      for (p, s), n in sorted(self.requests.items())]
            lines.append("# TYPE robustar_request_seconds_sum counter")
            lines += [f'robustar_request_seconds_sum{{path="{label_value(p)}"}} {v:.6f}' for p, v in sorted(self.latency_sum.items())]
            lines.append("# TYPE robustar_predicted_tasks_total counter")
            lines.append(f"robustar_predicted_tasks_total {self.predicted_tasks}")
            lines.append(f"robustar_predict_seconds_sum {self.predict_seconds:.6f}")
            lines.append("# TYPE robustar_webhook_events_total counter")
            lines += [f'robustar_webhook_events_total{{action="{label_value(a)}",status="{label_value(s)}"}} {n}'
                      for (a, s), n in sorted(self.events.items())]
            lines.append("# TYPE robustar_served_version gauge")
            lines += [f'robustar_served_version{{project="{label_value(p)}",version="{label_value(v)}"}} 1'
                      for p, v in sorted(versions.items())]
        return "\n".join(lines) + "\n"
