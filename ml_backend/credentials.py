"""Credentials the service hands out or must never log: basic-auth headers, signed page URLs for what
browsers load without credentials, and redaction of secrets from every log record of the process."""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import re
import threading
from urllib.parse import quote

SECRET_HEADER = "X-Robustar-Secret"
SIGNED_KINDS = ("saliency", "influence")


def basic_auth_header(user: str, password: str) -> str:
    """The ``Authorization`` header value for HTTP basic auth."""
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def _signing_key(user: str, password: str) -> bytes:
    return hashlib.sha256(b"robustar-heatmap-url\0" + user.encode() + b"\0" + password.encode()).digest()


def task_signature(project_id: int | str, key: str, user: str, password: str) -> str:
    """HMAC of ``<project id>/<task key>`` under a key derived from the basic-auth credentials: opens a
    task's heatmap and influence page (what the browser loads without credentials)."""
    msg = f"{int(project_id)}/{key}".encode()
    return hmac.new(_signing_key(user, password), msg, hashlib.sha256).hexdigest()[:32]


def signed_page_url(backend_url: str, kind: str, project_id: int, key: str, user: str | None,
                    password: str | None) -> str:
    """``<backend>/<kind>/<pid>/<quoted key>`` (kind: saliency | influence), with ``?sig=`` when basic
    auth is configured."""
    if kind not in SIGNED_KINDS:
        raise ValueError(f"no signed URLs for {kind!r}")
    url = f"{backend_url.rstrip('/')}/{kind}/{int(project_id)}/{quote(key)}"
    if user and password:
        url += "?sig=" + task_signature(project_id, key, user, password)
    return url


_SECRETS: set[str] = set()
_SECRETS_LOCK = threading.Lock()
_AUTH_VALUE = re.compile(r"\b(Token|Bearer|Basic)(\s+)[A-Za-z0-9._~+/=-]{6,}")
_installed = False


def register_secret(value: str | None) -> None:
    """Redact ``value`` from every log line of this process from now on (values under 6 chars are ignored).

    Only configuration registers secrets (``install_log_redaction`` at start-up): a value a caller
    sends (e.g. /setup's ``access_token``) is never registered, so no caller can blank strings of
    its choice from the logs. Credentials after ``Token``/``Bearer``/``Basic`` are redacted by pattern.
    """
    if isinstance(value, str) and len(value) >= 6:
        with _SECRETS_LOCK:
            _SECRETS.add(value)


def redact(text: str) -> str:
    """``text`` with registered secrets and ``Token|Bearer|Basic <credential>`` values replaced by ``***``."""
    for secret in sorted(_SECRETS, key=len, reverse=True):
        if secret in text:
            text = text.replace(secret, "***")
    return _AUTH_VALUE.sub(r"\1\2***", text)


def _redact_arg(value):
    """One logging argument, redacted; left as it is (type included) when it holds nothing to redact,
    so ``%d`` and formatters that unpack the arguments (uvicorn's access log) keep working."""
    text = value if isinstance(value, str) else str(value) if not isinstance(value, (int, float)) else None
    if text is None:
        return value
    cleaned = redact(text)
    return value if cleaned == text else cleaned


def redact_record(record: logging.LogRecord) -> None:
    """Redact ``record`` in place, keeping it a valid record: each argument is redacted on its own
    (same number and kinds of arguments), then the message template; only when a secret still shows
    in the formatted message (e.g. split across two arguments) is the record replaced by its redacted,
    formatted text with empty arguments. Never raises: a record that cannot be formatted is left as is."""
    try:
        args = record.args
        if isinstance(args, tuple):
            record.args = tuple(_redact_arg(a) for a in args)
        elif isinstance(args, dict):
            record.args = {k: _redact_arg(v) for k, v in args.items()}
        if isinstance(record.msg, str):
            template = redact(record.msg)
            if template.count("%") == record.msg.count("%"):  # never drop a placeholder of the arguments
                record.msg = template
        if record.name not in _ARGS_FORMATTED:  # those formatters unpack the arguments: they must stay
            message = record.getMessage()
            cleaned = redact(message)
            if cleaned != message:
                record.msg, record.args = cleaned, ()
        if record.exc_info and record.exc_info[0] is not None:
            record.exc_text = redact(_formatter.formatException(record.exc_info))
    except Exception:  # a record that cannot be formatted is left to logging's own error handling
        pass


_formatter = logging.Formatter()
# loggers whose formatter unpacks ``record.args`` (uvicorn's access log: client, method, path, version,
# status): their arguments are redacted one by one and never replaced by a formatted message
_ARGS_FORMATTED = frozenset({"uvicorn.access"})


def install_log_redaction(*secrets: str | None) -> None:
    """Register ``secrets`` (from configuration) and (once per process) wrap the log-record factory so
    that every record's arguments, message and traceback text are redacted before any handler sees them."""
    global _installed
    for s in secrets:
        register_secret(s)
    with _SECRETS_LOCK:
        if _installed:
            return
        _installed = True
    previous = logging.getLogRecordFactory()

    def factory(*args, **kwargs):
        record = previous(*args, **kwargs)
        redact_record(record)
        return record

    logging.setLogRecordFactory(factory)
