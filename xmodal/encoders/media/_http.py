"""`http(s)://` URIs behind an SSRF guard: every hop's host resolved once by us and checked, the
connection pinned to the checked address, redirects followed by hand, one deadline, a byte cap."""

from __future__ import annotations

import ipaddress
import re
import socket
import ssl
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urljoin, urlsplit, urlunsplit

import httpcore

from xmodal.encoders.media._limits import check_bytes, fail, short
from xmodal.errors import MediaError

if TYPE_CHECKING:
    from xmodal.encoders.media._addresses import IPAddress
    from xmodal.encoders.media._limits import MediaLimits

__all__ = ["fetch_http"]

_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
_URL_SAFE = "/%:@!$&'()*+,;=?~"


@dataclass(frozen=True)
class _Target:
    url: str
    host: str  # the name as written in the URL: Host header, SNI, certificate check
    port: int
    host_header: str


def _http_target(url: str) -> _Target:
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as e:
        raise MediaError(f"invalid URI {short(url)!r}: {e}", code="invalid_uri") from e
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        fail("uri_scheme_forbidden", f"redirect to {scheme or '(no scheme)'!r} URI refused: only http(s) is followed")
    if parts.username is not None or parts.password is not None:
        fail("invalid_uri", "credentials in http(s) URIs are not accepted")
    host = parts.hostname
    if not host:
        fail("invalid_uri", f"http(s) URI has no host: {short(url)!r}")
    try:
        host.encode("idna")
    except UnicodeError as e:
        raise MediaError(f"invalid host name {host!r}", code="invalid_uri") from e
    default_port = 443 if scheme == "https" else 80
    # The Host header is rebuilt from the parsed host, so what we check is what the server sees.
    shown = f"[{host}]" if ":" in host else host.encode("idna").decode("ascii")
    host_header = shown if port in (None, default_port) else f"{shown}:{port}"
    # httpcore takes ASCII only: percent-encode what a producer left raw, keep existing escapes.
    path = quote(parts.path or "/", safe=_URL_SAFE)
    query = quote(parts.query, safe=_URL_SAFE)
    url = urlunsplit((scheme, host_header, path, query, ""))
    return _Target(url, host, port or default_port, host_header)


def _ip_literal(host: str) -> IPAddress | None:
    """The address a numeric host means, in every spelling libc accepts: `2130706433`, `0x7f.1`,
    `0177.0.0.1` and `127.1` are all 127.0.0.1, and must be checked as such, without DNS."""
    bare = host[:-1] if host.endswith(".") else host
    try:
        return ipaddress.ip_address(bare)
    except ValueError:
        pass
    if re.fullmatch(r"[0-9][0-9a-fA-FxX.]*", bare):
        try:
            return ipaddress.IPv4Address(socket.inet_aton(bare))
        except OSError:
            return None
    return None


def _resolve_checked(target: _Target, limits: MediaLimits) -> list[IPAddress]:
    literal = _ip_literal(target.host)
    if literal is not None:
        addresses = [literal]
    else:
        try:
            infos = socket.getaddrinfo(target.host, target.port, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError) as e:
            raise MediaError(f"cannot resolve host {target.host!r}: {e}", code="http_error") from e
        # Drop IPv6 scope ids ("fe80::1%eth0"); keep resolver order, without duplicates.
        addresses = list(dict.fromkeys(ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos))
    # Every answer must pass, not just one: a mixed answer is an attack, not a fallback list.
    for ip in addresses:
        if not limits.allow_address(ip):
            fail(
                "http_forbidden_address",
                f"host {target.host!r} resolves to {ip}, which is not a public address; "
                "only publicly routable hosts may be fetched",
            )
    if not addresses:
        fail("http_error", f"host {target.host!r} has no addresses")
    return addresses


def fetch_http(uri: str, limits: MediaLimits) -> bytes:
    deadline = time.monotonic() + limits.http_timeout_s
    url = uri
    for _hop in range(limits.max_redirects + 1):
        target = _http_target(url)
        addresses = _resolve_checked(target, limits)
        try:
            location, body = _http_get(target, addresses, limits, deadline)
        except httpcore.TimeoutException as e:
            raise MediaError(
                f"fetching {short(uri)!r} took longer than {limits.http_timeout_s:g} s", code="http_timeout"
            ) from e
        except (httpcore.NetworkError, httpcore.ProtocolError, ssl.SSLError) as e:
            raise MediaError(f"fetching {short(url)!r} failed: {e or type(e).__name__}", code="http_error") from e
        if location is None:
            return body
        url = urljoin(url, location)
    fail("too_many_redirects", f"{short(uri)!r} redirected more than {limits.max_redirects} times")


def _http_get(
    target: _Target, addresses: Sequence[IPAddress], limits: MediaLimits, deadline: float
) -> tuple[str | None, bytes]:
    """One GET: (redirect location, b"") for a redirect, (None, body) for a 200."""
    backend = _PinnedBackend(addresses, deadline)
    timeout = max(deadline - time.monotonic(), 0.001)
    # httpcore, not httpx: no proxy variables from the environment, no automatic redirects.
    with httpcore.ConnectionPool(network_backend=backend, retries=0, max_connections=1) as pool:
        with pool.stream(
            "GET",
            target.url,
            headers=[("Host", target.host_header), ("Accept-Encoding", "identity"), ("User-Agent", "xmodal")],
            extensions={"timeout": dict.fromkeys(("connect", "read", "write", "pool"), timeout)},
        ) as response:
            status = response.status
            if status in _REDIRECT_STATUSES:
                location = _header(response.headers, b"location")
                if location is None:
                    fail("http_error", f"HTTP {status} redirect without a Location header")
                return location, b""
            if status != 200:
                fail("http_error", f"HTTP {status} from {short(target.url)!r}")
            length = _header(response.headers, b"content-length")
            if length is not None and length.isdigit():
                check_bytes(int(length), limits, "HTTP response")
            chunks, total = [], 0
            for chunk in response.iter_stream():
                total += len(chunk)
                if total > limits.max_bytes:
                    fail(
                        "media_too_large",
                        f"HTTP response is over the limit of {limits.max_bytes} bytes (XMODAL_MAX_MEDIA_BYTES)",
                    )
                chunks.append(chunk)
    body = b"".join(chunks)
    check_bytes(len(body), limits, "HTTP response")
    return None, body


def _header(headers: Sequence[tuple[bytes, bytes]], name: bytes) -> str | None:
    return next((v.decode("latin-1").strip() for k, v in headers if k.lower() == name), None)


def _budget(deadline: float, timeout: float | None, exc: type[httpcore.TimeoutException]) -> float:
    """Per-operation timeout clamped to what is left of the whole fetch, so a server dripping one
    byte just inside every read timeout still cannot hold a worker past `http_timeout_s`."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise exc("total time for the fetch is spent")
    return left if timeout is None else min(timeout, left)


class _PinnedBackend(httpcore.NetworkBackend):
    """Connects to the addresses the guard checked, whatever name the URL carries.

    httpcore still puts the name in the Host header, SNI and certificate check, so TLS works as
    usual, but DNS is asked once, by us: a rebinding answer cannot swap the address after the check.
    """

    def __init__(self, addresses: Sequence[IPAddress], deadline: float) -> None:
        self._addresses = addresses
        self._deadline = deadline
        self._inner = httpcore.SyncBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        error: httpcore.ConnectError | None = None
        for ip in self._addresses:
            try:
                stream = self._inner.connect_tcp(
                    str(ip),
                    port,
                    timeout=_budget(self._deadline, timeout, httpcore.ConnectTimeout),
                    local_address=local_address,
                    socket_options=socket_options,
                )
                return _DeadlineStream(stream, self._deadline)
            except httpcore.ConnectError as e:
                error = e
        raise error or httpcore.ConnectError("no address to connect to")

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.NetworkStream:
        raise httpcore.ConnectError("unix sockets are never used for media")


class _DeadlineStream(httpcore.NetworkStream):
    def __init__(self, inner: httpcore.NetworkStream, deadline: float) -> None:
        self._inner = inner
        self._deadline = deadline

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max_bytes, _budget(self._deadline, timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, _budget(self._deadline, timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._inner.close()

    def start_tls(
        self, ssl_context: ssl.SSLContext, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.NetworkStream:
        budget = _budget(self._deadline, timeout, httpcore.ConnectTimeout)
        return _DeadlineStream(self._inner.start_tls(ssl_context, server_hostname, budget), self._deadline)

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)
