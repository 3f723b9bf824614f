"""The addresses an image host may be fetched from, and connections pinned to the address checked.

An ``ALLOWED_IMAGE_HOSTS`` host is resolved once when connecting; every address must be public (no
loopback, private, link-local, multicast, reserved or other non-global address) unless
``ALLOW_PRIVATE_IMAGE_HOSTS``, and the connection goes to the address checked (``pinned_adapter``), so DNS
cannot answer differently between the check and the connect (rebinding).
"""

from __future__ import annotations

import ipaddress
import socket

from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import ConnectTimeoutError, NewConnectionError
from urllib3.util import connection as urllib3_connection

from training.images import ImageError


def address_kind(address: str) -> str | None:
    """Why an IP address may not be fetched from (``loopback``, ``private``, ``link-local`` ...), or None
    for a public (globally routable) one. IPv4-mapped IPv6 addresses are judged as the IPv4 address."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return "unparseable"
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    for kind in ("loopback", "link_local", "multicast", "unspecified", "reserved", "private"):
        if getattr(ip, f"is_{kind}"):
            return kind.replace("_", "-")
    if not ip.is_global:  # e.g. 100.64.0.0/10 (carrier-grade NAT)
        return "non-global"
    return None


def checked_address(host: str, port: int, allow_private: bool) -> str:
    """``host`` resolved once, every address checked (public only unless ``allow_private``), the first
    returned: the address to connect to."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as e:
        raise ImageError(f"image host {host}: cannot resolve it ({e})") from e
    addresses = [info[4][0] for info in infos]
    for address in addresses if not allow_private else ():
        kind = address_kind(address)
        if kind:
            raise ImageError(f"image host {host}:{port} resolves to {address}, a {kind} address: refused "
                             "(set ALLOW_PRIVATE_IMAGE_HOSTS=true to fetch from private networks)")
    if not addresses:
        raise ImageError(f"image host {host}: resolves to no address")
    return addresses[0]


def pinned_adapter(resolve) -> HTTPAdapter:
    """A requests adapter whose connections go to the address ``resolve(scheme, host, port)`` returned (it
    checks it): the address checked is the address connected to, so DNS cannot answer differently between
    the check and the connect (rebinding). The Host header, TLS SNI and certificate check keep the name."""

    def new_conn(conn, scheme: str):
        address = resolve(scheme, conn.host, conn.port)
        try:
            return urllib3_connection.create_connection((address, conn.port), conn.timeout,
                                                        source_address=conn.source_address,
                                                        socket_options=conn.socket_options)
        except socket.timeout as e:
            raise ConnectTimeoutError(conn, f"Connection to {conn.host} timed out. (connect timeout={conn.timeout})") from e
        except OSError as e:
            raise NewConnectionError(conn, f"Failed to establish a new connection: {e}") from e

    class PinnedHTTPConnection(HTTPConnection):
        def _new_conn(self):
            return new_conn(self, "http")

    class PinnedHTTPSConnection(HTTPSConnection):
        def _new_conn(self):
            return new_conn(self, "https")

    class PinnedHTTPPool(HTTPConnectionPool):
        ConnectionCls = PinnedHTTPConnection

    class PinnedHTTPSPool(HTTPSConnectionPool):
        ConnectionCls = PinnedHTTPSConnection

    class PinnedAdapter(HTTPAdapter):
        def init_poolmanager(self, *args, **kwargs):
            super().init_poolmanager(*args, **kwargs)
            self.poolmanager.pool_classes_by_scheme = {"http": PinnedHTTPPool, "https": PinnedHTTPSPool}

    return PinnedAdapter()
