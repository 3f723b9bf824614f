"""Payload checks for /setup, /predict and /webhook (Label Studio 1.23 shapes, see shared/ls-protocol).

Each ``validate_*`` returns the fields the endpoint needs or raises ``PayloadError`` whose message
names the field (and, for tasks, the index and id: ``tasks[3] (id 17): data.image missing``).
Unknown extra keys are accepted: Label Studio sends many we do not use.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from label_config.render import LabelConfigError, parse_config
from training.input_size import SETUP_PARAM, InputSize

MAX_PROJECT_ID = 10**12
MAX_LABEL_CONFIG_CHARS = 1_000_000


class PayloadError(ValueError):
    """The request body is not what the endpoint accepts; ``status`` is the HTTP status to answer."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def _kind(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "…"


def parse_project_id(value: Any, field: str = "project") -> int:
    """Label Studio sends the project as ``"<id>.<created_ts>"`` in /setup and /predict, an object in webhooks."""
    if isinstance(value, dict):
        field, value = f"{field}.id", value.get("id")
    if isinstance(value, bool) or value is None:
        raise PayloadError(f"{field!r} must be '<id>.<timestamp>' or an object with an id, got {_short(value)}")
    if isinstance(value, float):
        value = str(value)
    try:
        pid = int(str(value).split(".", 1)[0].strip())
    except (TypeError, ValueError):
        raise PayloadError(f"{field!r} must be '<id>.<timestamp>' or an object with an id, got {_short(value)}") from None
    if not 1 <= pid < MAX_PROJECT_ID:
        raise PayloadError(f"{field!r}: project id {pid} is out of range")
    return pid


def _optional_str(body: dict, field: str, max_len: int = 4096) -> str | None:
    value = body.get(field)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise PayloadError(f"{field!r} must be a string, got {_kind(value)}")
    if len(value) > max_len:
        raise PayloadError(f"{field!r} is longer than {max_len} characters")
    return value


def _label_config(body: dict, field: str) -> str | None:
    value = _optional_str(body, field, MAX_LABEL_CONFIG_CHARS)
    if value is not None and not value.lstrip().startswith("<"):
        raise PayloadError(f"{field!r} must be a Label Studio label config (XML), got {_short(value)}")
    return value


def _printable(text: str) -> str:
    """``text`` with what cannot be encoded as UTF-8 written as ``\\udXXX`` escapes (safe for any message)."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _field_path(parts: tuple) -> str:
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{_printable(p)}" if out else _printable(p))
    return out or "(body)"


def _not_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]|\xed[\xa0-\xbf]")


def may_hold_lone_surrogates(raw: bytes) -> bool:
    """Cheap test on a raw JSON body: False when no parsed string can hold a lone surrogate (a UTF-8 body
    can only get one from a ``\\uD800``-style escape, or from the raw bytes of one, ``ED A0 80``-``ED BF BF``,
    which ``json.loads`` decodes with ``surrogatepass``; UTF-16/32 bodies are always checked)."""
    return json.detect_encoding(raw) not in ("utf-8", "utf-8-sig") or _SURROGATE_ESCAPE.search(raw) is not None


def check_encodable(body: Any) -> None:
    """Refuse a parsed JSON body holding a string (value or key) that cannot be encoded as UTF-8.

    ``"\\ud800"`` is valid JSON but a lone UTF-16 surrogate: echoed in an answer or a log line it makes
    the encoder raise. One walk (iterative: any depth) over the whole body, before any endpoint looks at
    it; the ``PayloadError`` names the field, e.g. ``tasks[0].data.image: not valid UTF-8 (lone surrogate)``.
    """
    try:  # the C encoder first: when every string encodes, no walk is needed
        json.dumps(body, ensure_ascii=False).encode("utf-8")
        return
    except UnicodeEncodeError:
        pass
    except (ValueError, TypeError, RecursionError):
        pass  # walk anyway
    if isinstance(body, str):
        if _not_utf8(body):
            raise PayloadError("request body: not valid UTF-8 (lone surrogate)")
        return
    if not isinstance(body, (dict, list)):
        return
    stack: list[tuple[Any, tuple]] = [(body, ())]
    while stack:
        value, where = stack.pop()
        items = value.items() if isinstance(value, dict) else enumerate(value)
        for key, item in items:
            if isinstance(key, str) and _not_utf8(key):
                raise PayloadError(f"{_field_path(where + (key,))}: key is not valid UTF-8 (lone surrogate)")
            if isinstance(item, str):
                if _not_utf8(item):
                    raise PayloadError(f"{_field_path(where + (key,))}: not valid UTF-8 (lone surrogate)")
            elif isinstance(item, (dict, list)):
                stack.append((item, where + (key,)))


@dataclass
class SetupRequest:
    project_id: int
    schema: str | None
    hostname: str | None
    access_token: str | None
    measured: InputSize | None = None


def measured_input(body: dict) -> InputSize | None:
    """``extra_params.robustar_input_size`` = ``{"size": int, "reason": str}``: the input size ``robustar import``
    measured from the project's images (None when absent)."""
    extra = body.get("extra_params")
    if not isinstance(extra, dict) or extra.get(SETUP_PARAM) is None:
        return None
    rec = extra[SETUP_PARAM]
    size = rec.get("size") if isinstance(rec, dict) else None
    reason = rec.get("reason", "") if isinstance(rec, dict) else None
    if isinstance(size, bool) or not isinstance(size, int) or not 8 <= size <= 4096 or not isinstance(reason, str):
        raise PayloadError(f"extra_params.{SETUP_PARAM} must be {{\"size\": 8..4096, \"reason\": text}}, "
                           f"got {_short(rec)}")
    return InputSize(size, reason[:1000], "measured")


def is_json_media_type(content_type: str | None) -> bool:
    """``application/json`` or ``application/<x>+json``, parameters (``; charset=utf-8``) allowed."""
    media = (content_type or "").split(";", 1)[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


def setup_classes(schema: str | None, project_id: int) -> list[str] | None:
    """The classes of a /setup ``schema`` (None without one); a bad config is a 400 naming ``schema``."""
    if not schema:
        return None
    try:
        return parse_config(schema).classes
    except LabelConfigError as e:
        raise PayloadError(f"'schema' (project {project_id}): {e}") from e


def validate_setup(body: dict) -> SetupRequest:
    if "project" not in body:
        raise PayloadError("'project' is missing")
    pid = parse_project_id(body.get("project"))
    hostname = _optional_str(body, "hostname", 2048)
    if hostname is not None and not hostname.lower().startswith(("http://", "https://")):
        raise PayloadError(f"'hostname' must be an http(s) URL, got {_short(hostname)}")
    return SetupRequest(pid, _label_config(body, "schema"), hostname, _optional_str(body, "access_token", 1024),
                        measured_input(body))


def task_label(index: int, task: Any) -> str:
    """``tasks[3] (id 17)`` -- how messages name a task."""
    tid = task.get("id") if isinstance(task, dict) else None
    return f"tasks[{index}] (id {_short(tid, 40)})" if tid is not None else f"tasks[{index}] (no id)"


@dataclass
class PredictRequest:
    project_id: int
    label_config: str | None
    tasks: list[dict]
    context: dict | None


def validate_predict(body: dict, max_tasks: int) -> PredictRequest:
    """Shape of a /predict body; the per-task image field is checked by ``validate_task_images``."""
    if "tasks" not in body:
        raise PayloadError("'tasks' is missing")
    tasks = body["tasks"]
    if not isinstance(tasks, list):
        raise PayloadError(f"'tasks' must be a list of task objects, got {_kind(tasks)}")
    if len(tasks) > max_tasks:
        raise PayloadError(f"'tasks': {len(tasks)} tasks in one request, at most {max_tasks} (MAX_PREDICT_TASKS)", 413)
    for i, task in enumerate(tasks):
        if not isinstance(task, dict):
            raise PayloadError(f"tasks[{i}] must be a task object, got {_kind(task)}")
        tid = task.get("id")
        if tid is not None and (isinstance(tid, bool) or not isinstance(tid, (int, str))):
            raise PayloadError(f"{task_label(i, task)}: 'id' must be an integer, got {_kind(tid)}")
        if not isinstance(task.get("data"), dict):
            what = "missing" if task.get("data") is None else f"must be an object, got {_kind(task.get('data'))}"
            raise PayloadError(f"{task_label(i, task)}: data {what}")
    if "project" not in body:
        raise PayloadError("'project' is missing")
    pid = parse_project_id(body.get("project"))
    params = body.get("params")
    if params is not None and not isinstance(params, dict):
        raise PayloadError(f"'params' must be an object, got {_kind(params)}")
    context = (params or {}).get("context")
    if context is not None and not isinstance(context, dict):
        raise PayloadError(f"'params.context' must be an object or null, got {_kind(context)}")
    return PredictRequest(pid, _label_config(body, "label_config"), tasks, context)


def validate_task_images(tasks: list[dict], image_key: str) -> None:
    """Every task has a non-empty string under ``data.<image_key>`` (the label config's ``$image``)."""
    for i, task in enumerate(tasks):
        value = task["data"].get(image_key)
        if value is None or value == "":
            raise PayloadError(f"{task_label(i, task)}: data.{image_key} missing")
        if not isinstance(value, str):
            raise PayloadError(f"{task_label(i, task)}: data.{image_key} must be an image URL string, got {_kind(value)}")


@dataclass
class WebhookRequest:
    action: str
    project_id: int | None


def validate_webhook(body: dict, handled_actions: set[str] | frozenset[str]) -> WebhookRequest:
    """``action`` is required; ``project`` only for the actions we act on (others are ignored)."""
    if "action" not in body:
        raise PayloadError("webhook body has no 'action'")
    action = body["action"]
    if not isinstance(action, str) or not action.strip() or len(action) > 200:
        raise PayloadError(f"'action' must be a non-empty string, got {_short(action)}")
    if action not in handled_actions:
        return WebhookRequest(action, None)
    if "project" not in body:
        raise PayloadError(f"{action}: 'project' is missing")
    return WebhookRequest(action, parse_project_id(body.get("project")))
