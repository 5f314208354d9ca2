"""Probes from an environment spec's health-check entries (``{"http": "/health"}``, …)."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any
from urllib.parse import urlsplit

from envkit.errors import ConfigError
from envkit.health.command import CommandProbe
from envkit.health.engine import Probe
from envkit.health.network import DEFAULT_HTTP_STATUSES, HttpProbe, TcpProbe
from envkit.health.postgres import PostgresProbe

PROBE_KINDS = ("postgres", "tcp", "http", "command", "aws-rds", "aws-ecs")


def probe_from_spec(
    spec: Mapping[str, Any],
    *,
    component: str = "service",
    host: str = "127.0.0.1",
    base_url: str | None = None,
    env: Mapping[str, str] | None = None,
) -> Probe:
    """Build a probe from one health-check entry of an environment spec.

    Exactly one kind key: ``{"http": "/health"}`` (a path is joined to ``base_url``, else to
    ``http://{host}``), ``{"tcp": 5432}`` or ``{"tcp": "host:port"}``, ``{"command": "..."}``,
    ``{"postgres": URL, "query": "..."}``, ``{"aws-rds": ID}``, ``{"aws-ecs": CLUSTER,
    "services": [...]}``. Optional keys: ``name``, ``component``, ``timeout`` (per attempt),
    and for http ``status`` (int or list), ``body`` (substring), ``json`` (``{path: value}``).
    Raise ``ConfigError`` on anything else.
    """
    kinds = [k for k in PROBE_KINDS if k in spec]
    if len(kinds) != 1:
        raise ConfigError(
            f"A health check needs exactly one of {', '.join(PROBE_KINDS)}; got "
            f"{', '.join(sorted(map(str, spec))) or 'nothing'}.",
            hint='For example {"http": "/health"}, {"tcp": 5432} or {"command": "pg_isready"}.',
        )
    kind = kinds[0]
    value = spec[kind]
    comp = str(spec.get("component", component))
    timeout = spec.get("timeout")
    try:
        probe = _build(kind, value, spec, comp, host, base_url, env)
    except (TypeError, ValueError) as exc:
        raise ConfigError(
            f"The {kind} health check of {comp} is invalid: {exc}",
            hint="See the 'Health checks' section of the README for the accepted forms.",
        ) from None
    if timeout is not None and hasattr(probe, "timeout"):
        setattr(probe, "timeout", _seconds(timeout))  # noqa: B010  (not in the Protocol)
    if "name" in spec:
        probe.name = str(spec["name"])
    return probe


def _build(
    kind: str,
    value: Any,
    spec: Mapping[str, Any],
    component: str,
    host: str,
    base_url: str | None,
    env: Mapping[str, str] | None,
) -> Probe:
    if kind == "tcp":
        if isinstance(value, int) and not isinstance(value, bool):
            target_host, port = host, value
        else:
            target_host, _, port_text = str(value).rpartition(":")
            target_host, port = target_host or host, int(port_text)
        if not 0 < port < 65536:
            raise ValueError(f"port {port} is out of range")
        return TcpProbe(target_host, port, component=component, name=f"tcp {target_host}:{port}")
    if kind == "http":
        url = str(value)
        if not url.startswith(("http://", "https://")):
            url = (base_url or f"http://{host}").rstrip("/") + "/" + url.lstrip("/")
        statuses: Collection[int] = DEFAULT_HTTP_STATUSES
        if "status" in spec:
            raw = spec["status"]
            statuses = frozenset(int(s) for s in (raw if isinstance(raw, list) else [raw]))
        json_spec = spec.get("json") or {}
        if not isinstance(json_spec, Mapping) or len(json_spec) > 1:
            raise ValueError('"json" must be one {"dotted.path": expected} pair')
        json_field, json_value = next(iter(json_spec.items()), (None, None))
        body = spec.get("body")
        return HttpProbe(
            url,
            component=component,
            name=f"http {urlsplit(url).path or '/'}",
            statuses=statuses,
            body_contains=None if body is None else str(body),
            json_field=json_field,
            json_value=json_value,
        )
    if kind == "command":
        if not isinstance(value, str | list) or not value:
            raise ValueError("command must be a non-empty string or list")
        command: str | list[str] = value if isinstance(value, str) else [str(v) for v in value]
        return CommandProbe(command, component=component, env=env)
    if kind == "postgres":
        return PostgresProbe(
            str(value), component=component, require_rows=spec.get("query") or None
        )
    # The aws kinds are the aws provider's public probes: imported only when a spec names one,
    # so building local probes never loads its code.
    from envkit.providers.aws import EcsServicesProbe, RdsInstanceProbe

    if kind == "aws-rds":
        return RdsInstanceProbe(str(value), component=component, region=spec.get("region"))
    services = spec.get("services") or []
    if not isinstance(services, list):
        raise ValueError('"services" must be a list of service names')
    return EcsServicesProbe(
        str(value),
        services=[str(s) for s in services],
        component=component,
        region=spec.get("region"),
    )


def _seconds(value: Any) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
        return float(value)
    from envkit.durations import parse_duration

    return parse_duration(str(value), what="health-check timeout").total_seconds()


__all__ = ["PROBE_KINDS", "probe_from_spec"]
