"""Server-side limits on slow or large requests, for uvicorn (``robustar serve``) and gunicorn's uvicorn
workers (``docker/gunicorn.conf.py``): a deadline for a request's head, the keep-alive timeout and
the largest head. The body has its own total deadline, ``HTTP_BODY_TIMEOUT``, in ``app.json_body``.
"""

from __future__ import annotations

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from ml_backend.settings import Settings


class HeaderDeadlineH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a deadline for a request's head: a connection must deliver the request
    line and every header within ``header_timeout`` seconds of its first byte (of connecting, for a new
    connection), else it is closed. uvicorn's own ``timeout_keep_alive`` only covers the silent wait between
    requests and is cancelled by the first byte, so a client dripping a header held the connection forever."""

    header_timeout = 10.0
    _head_timer = None

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._arm_head_deadline()

    def _arm_head_deadline(self) -> None:
        if self._head_timer is None and self.header_timeout > 0:
            self._head_timer = self.loop.call_later(self.header_timeout, self._head_too_slow)

    def _disarm_head_deadline(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_too_slow(self) -> None:
        self._head_timer = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self.logger.warning("closing a connection from %s: request head not received within %g s "
                                "(HTTP_HEADER_TIMEOUT)", "%s:%d" % self.client if self.client else "?",
                                self.header_timeout)
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        if self.conn.their_state is h11.IDLE:  # a (next) request starts: its head has header_timeout
            self._arm_head_deadline()
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE:  # the head is complete
            self._disarm_head_deadline()

    def connection_lost(self, exc) -> None:
        self._disarm_head_deadline()
        super().connection_lost(exc)


def header_deadline_protocol(header_timeout: float) -> type[HeaderDeadlineH11Protocol]:
    """The protocol class with ``header_timeout`` seconds for a request's head."""
    return type("HeaderDeadlineH11Protocol", (HeaderDeadlineH11Protocol,), {"header_timeout": header_timeout})


GRACEFUL_SHUTDOWN_S = 5.0


def uvicorn_limits(settings: Settings) -> dict:
    """uvicorn ``Config`` keyword arguments for ``HTTP_HEADER_TIMEOUT``, ``HTTP_KEEP_ALIVE_TIMEOUT`` and
    ``HTTP_MAX_HEADER_BYTES``."""
    return {"http": header_deadline_protocol(settings.http_header_timeout),
            "timeout_graceful_shutdown": GRACEFUL_SHUTDOWN_S,  # SIGTERM: requests in flight get this long, then stop
            "timeout_keep_alive": settings.http_keep_alive_timeout,
            "h11_max_incomplete_event_size": settings.http_max_header_bytes}
