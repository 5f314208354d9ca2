"""The network probes: a TCP port accepts connections; an HTTP endpoint answers healthy.

Also the name lookup with a timeout that every probe connecting to a host name uses.
"""

from __future__ import annotations

import base64
import json
import socket
import threading
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

from envkit.health.engine import ProbeError, TransientError, describe
from envkit.redact import redact_url


def tcp_refusal(host: str, port: int, timeout: float) -> str | None:
    """Why ``host:port`` does not accept TCP connections, or ``None`` when it does (~50 µs).

    ``timeout`` bounds the name lookup too: ``getaddrinfo`` has no timeout of its own and can
    block for seconds when no resolver answers (a private RDS name, an offline runner).
    """
    try:
        address = resolve_address(host, port, timeout)
        with socket.create_connection(address, timeout=timeout):
            return None
    except OSError as exc:
        return f"{host}:{port}: {exc.strerror or exc}"


def resolve_address(host: str, port: int, timeout: float) -> tuple[str, int]:
    try:
        socket.inet_pton(socket.AF_INET6 if ":" in host else socket.AF_INET, host)
        return host, port  # an address already: nothing to look up
    except OSError:
        pass
    found: list[tuple[str, int]] = []
    failure: list[OSError] = []

    def lookup() -> None:
        try:
            info = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            found.append((str(info[0][4][0]), port))
        except OSError as exc:
            failure.append(exc)

    worker = threading.Thread(target=lookup, daemon=True, name=f"resolve-{host}")
    worker.start()
    worker.join(timeout)
    if found:
        return found[0]
    if failure:
        raise failure[0]
    raise TimeoutError(f"no DNS answer for {host} within {timeout:g}s")


@dataclass
class TcpProbe:
    """tcp: the port accepts a TCP connection."""

    host: str
    port: int
    component: str = "network"
    name: str = "tcp"
    timeout: float = 1.0
    max_delay: float = 0.005

    def check(self) -> None:
        """Connect and close."""
        refused = tcp_refusal(self.host, self.port, self.timeout)
        if refused is not None:
            raise TransientError(refused)


DEFAULT_HTTP_STATUSES: frozenset[int] = frozenset(range(200, 400))
"""Success as Kubernetes' httpGet probes define it: 200 <= status < 400."""
_FATAL_HTTP_STATUSES = frozenset({401, 403, 407})  # credentials: waiting would not help
MAX_BODY = 1 << 20


@dataclass
class HttpProbe:
    """http: GET ``url``; status in ``statuses``, and optionally a body substring or JSON field.

    ``json_field`` is a dotted path (``status``, ``checks.db.0``); with ``json_value`` the field
    must equal it, without it the field must be present and truthy. Redirects are not followed
    (3xx counts as success by default). Connection errors, timeouts, DNS errors and unexpected
    statuses retry; 401/403/407 and TLS verification errors fail at once. Response bodies never
    appear in the report (they may hold secrets).
    """

    url: str
    component: str = "service"
    name: str = "http"
    statuses: Collection[int] = DEFAULT_HTTP_STATUSES
    body_contains: str | None = None
    json_field: str | None = None
    json_value: Any = None
    timeout: float = 2.0
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)
    max_delay: float = 0.02

    def __repr__(self) -> str:
        return f"HttpProbe(url={redact_url(self.url)!r}, component={self.component!r})"

    def check(self) -> None:
        """One GET, judged by :func:`judge_http`."""
        import http.client
        import ssl

        safe_url = redact_url(self.url)
        try:
            parts = urlsplit(self.url)
            port = parts.port
        except ValueError:
            raise ProbeError(f"not a valid URL: {safe_url}") from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ProbeError(f"not an http(s) URL: {safe_url}")
        headers = {"User-Agent": "envkit-health", "Connection": "close", **self.headers}
        if parts.username is not None:
            token = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
            headers["Authorization"] = "Basic " + base64.b64encode(token).decode()
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        connection: http.client.HTTPConnection
        if parts.scheme == "https":
            connection = http.client.HTTPSConnection(parts.hostname, port, timeout=self.timeout)
        else:
            connection = http.client.HTTPConnection(parts.hostname, port, timeout=self.timeout)
        try:
            connection.request("GET", path, headers=headers)
            response = connection.getresponse()
            status, body = response.status, response.read(MAX_BODY)
        except ssl.SSLCertVerificationError as exc:
            raise ProbeError(f"{safe_url}: TLS verification failed: {exc.verify_message}") from None
        except (OSError, http.client.HTTPException) as exc:
            reason = getattr(exc, "strerror", None) or describe(exc)
            raise TransientError(f"{safe_url}: {reason}") from None
        finally:
            connection.close()
        judge_http(
            safe_url,
            status,
            body,
            statuses=self.statuses,
            body_contains=self.body_contains,
            json_field=self.json_field,
            json_value=self.json_value,
        )


_MISSING = object()


def judge_http(
    url: str,
    status: int,
    body: bytes,
    *,
    statuses: Collection[int] = DEFAULT_HTTP_STATUSES,
    body_contains: str | None = None,
    json_field: str | None = None,
    json_value: Any = None,
) -> None:
    """Return when a response is healthy; raise ``TransientError`` or ``ProbeError`` if not."""
    if status not in statuses:
        if status in _FATAL_HTTP_STATUSES:
            raise ProbeError(f"{url}: HTTP {status} (credentials are missing or refused)")
        raise TransientError(f"{url}: HTTP {status}")
    if body_contains is not None and body_contains.encode() not in body:
        raise TransientError(f"{url}: HTTP {status}, body does not contain {body_contains!r}")
    if json_field is not None:
        try:
            document = json.loads(body)
        except ValueError:
            raise TransientError(f"{url}: HTTP {status}, body is not JSON") from None
        actual = json_path(document, json_field)
        if actual is _MISSING:
            raise TransientError(f"{url}: JSON field {json_field!r} is missing")
        if json_value is None:
            if not actual:
                raise TransientError(f"{url}: JSON field {json_field!r} is {actual!r}")
        elif actual != json_value:
            raise TransientError(
                f"{url}: JSON field {json_field!r} is {actual!r}, expected {json_value!r}"
            )


def json_path(document: Any, path: str) -> Any:
    """The value at dotted ``path`` (keys, or list indexes as digits), or a sentinel if absent."""
    current = document
    for part in path.split("."):
        if isinstance(current, dict) and part in current:
            current = current[part]
        elif isinstance(current, list) and part.isdigit() and int(part) < len(current):
            current = current[int(part)]
        else:
            return _MISSING
    return current


__all__ = [
    "DEFAULT_HTTP_STATUSES",
    "MAX_BODY",
    "HttpProbe",
    "TcpProbe",
    "json_path",
    "judge_http",
    "resolve_address",
    "tcp_refusal",
]
