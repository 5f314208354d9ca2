"""The local cluster: the spec's services as detached processes on the pipeline's address.

Each service is started in dependency order, in its own session (so one ``killpg`` stops it and
whatever it spawned), bound to the pipeline's loopback address (``HOST``/``PORT`` in its
environment), with the outputs injected, stdout and stderr in ``logs/<name>.log`` (0600), and it
must pass its health check before the next one starts. Every service process carries marks in its
environment and runs in a working directory under the pipeline's env dir, so it is found and
stopped even when no record says it exists (:mod:`envkit.providers.local.service_processes`).
Its pid and process group are recorded before and after the spawn (write-ahead) for the same
reason.

Services run as the user who runs envkit (``run_as = "invoker"``, the default): they are the
project's own code and need its interpreter, virtualenv and checkout, which a root CI job keeps in
0700 places. ``run_as = "server-user"`` runs one as PostgreSQL's unprivileged user instead.
Service environments hold secrets: they are never logged.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from envkit.errors import ProvisionError
from envkit.health import Probe, TransientError
from envkit.health.command import CommandProbe
from envkit.health.network import HttpProbe, TcpProbe
from envkit.processes import process_age
from envkit.providers.local.logs import log_tail
from envkit.providers.local.loopback import bind_error, free_port
from envkit.providers.local.osuser import RunAs
from envkit.providers.local.resources import LocalResources, ServiceEntry
from envkit.providers.local.service_processes import (
    CHILDREN,
    MARKER_HOME,
    MARKER_PIPELINE,
    MARKER_SERVICE,
    pid_alive,
)
from envkit.redact import scrub, secret_values
from envkit.spec import EnvSpec, HealthCheck, ServiceSpec, render

if TYPE_CHECKING:
    from envkit.providers.base import ProvisionRequest
    from envkit.providers.local.pgserver import PgServer
    from envkit.providers.local.provider import LocalProvider

log = logging.getLogger(__name__)

RUNNING_SETTLE = 0.5  # a "running" health check passes once the process lived this long
_PASSED_ENV = ("PATH", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR")


@dataclass(frozen=True)
class ClusterPlace:
    """Where one pipeline's services live and who they run as."""

    pipeline_id: str
    home_key: str
    env_dir: Path
    logs_dir: Path
    host: str
    dedicated: bool
    server_user: RunAs

    def workdir(self, name: str) -> Path:
        return self.env_dir / "services" / name

    def log_path(self, name: str) -> Path:
        return self.logs_dir / f"{name}.log"

    def run_as(self, service: ServiceSpec) -> RunAs:
        if service.run_as == "invoker" or not self.server_user.switch:
            return _invoker()
        return self.server_user


# -- ports and templating -----------------------------------------------------------------------


def assign_ports(spec: EnvSpec, host: str, dedicated: bool) -> dict[str, int]:
    """A port per service that has one: its own on a dedicated address when free, else a free
    port (on the shared fallback address a fixed port would collide between pipelines)."""
    ports: dict[str, int] = {}
    for service in spec.services:
        if service.port is None:
            continue
        wanted = service.port
        if wanted and dedicated and bind_error(host, wanted) is None:
            ports[service.name] = wanted
            continue
        if wanted:
            log.info("port %s:%s is not available for %s: using a free one", host, wanted,
                     service.name)
        port = free_port(host)
        while port in ports.values():
            port = free_port(host)
        ports[service.name] = port
    return ports


def service_urls(spec: EnvSpec, host: str, ports: Mapping[str, int]) -> dict[str, str]:
    """``SERVICE_<NAME>_URL`` of every service with a port."""
    return {
        s.url_output: f"http://{host}:{ports[s.name]}" for s in spec.services if s.name in ports
    }


def template_values(
    spec: EnvSpec,
    service: ServiceSpec,
    outputs: Mapping[str, str],
    host: str,
    port: int | None,
) -> dict[str, str]:
    """What ``{NAME}`` placeholders of ``service`` expand to."""
    values = dict(outputs)
    values.update(
        {
            "HOST": host,
            "PORT": "" if port is None else str(port),
            "PROJECT_DIR": str(spec.project_dir),
            "PYTHON": sys.executable,
            "SERVICE_NAME": service.name,
        }
    )
    return values


def _base_env(run_as: RunAs, workdir: Path) -> dict[str, str]:
    # Not the whole environment of envkit: CI jobs keep tokens there that services must not see.
    env = {k: os.environ[k] for k in _PASSED_ENV if k in os.environ}
    env.setdefault("PATH", os.defpath)
    env["HOME"] = str(workdir) if run_as.switch else os.environ.get("HOME", str(workdir))
    env["PYTHONUNBUFFERED"] = "1"  # Python services' output reaches the log as it happens
    return env


def service_env(
    place: ClusterPlace,
    service: ServiceSpec,
    values: Mapping[str, str],
    outputs: Mapping[str, str],
    run_as: RunAs,
) -> dict[str, str]:
    """The environment of a service: outputs, its templated ``env``, HOST/PORT and the marker."""
    env = _base_env(run_as, place.workdir(service.name))
    env.update(outputs)
    env.update({k: render(v, values) for k, v in service.env.items()})
    env["HOST"] = values["HOST"]
    if values["PORT"]:
        env["PORT"] = values["PORT"]
    env[MARKER_HOME] = place.home_key
    env[MARKER_PIPELINE] = place.pipeline_id
    env[MARKER_SERVICE] = service.name
    return env


# -- probes ---------------------------------------------------------------------------------------


class ServiceExitedError(Exception):
    """The service process is gone: waiting longer would not help."""


@dataclass
class ServiceProbe:
    """The service process is alive, then its own check passes (a dead service is fatal)."""

    service: str
    pid: int
    inner: Probe | None  # None: "running" (alive for a moment is enough)
    log_path: Path | None  # None: a hand-edited record lost it
    component: str = "service"
    name: str = ""

    def __post_init__(self) -> None:
        self.name = self.name or self.service

    def check(self) -> None:
        if not pid_alive(self.pid):
            where = f" (log: {self.log_path})" if self.log_path is not None else ""
            raise ServiceExitedError(f"service {self.service} exited{where}")
        if self.inner is None:
            age = process_age(self.pid)
            if age is not None and age < RUNNING_SETTLE:
                raise TransientError(f"service {self.service} started {age:.2f}s ago")
            return
        self.inner.check()


def _inner_probe(
    health: HealthCheck,
    host: str,
    port: int | None,
    workdir: Path,
    env: Mapping[str, str],
    name: str,
) -> Probe | None:
    if health.kind == "http" and port is not None:
        return HttpProbe(f"http://{host}:{port}{health.path}", name=name)
    if health.kind == "tcp" and port is not None:
        return TcpProbe(host, port, component="service", name=name)
    if health.kind == "command":
        return CommandProbe(list(health.command), name=name, env=env, cwd=workdir)
    return None


def probe_env(entry: ServiceEntry, outputs: Mapping[str, str]) -> dict[str, str]:
    """What a health command gets on top of envkit's environment: the outputs and HOST/PORT (no
    marker: it is not the service, and must not be mistaken for one by the sweep)."""
    env = dict(outputs)
    env["HOST"] = entry.host
    if entry.port:
        env["PORT"] = str(entry.port)
    return env


def probes_for(resources: LocalResources, outputs: Mapping[str, str]) -> list[Probe]:
    """Health probes of the recorded services of an environment (one whose health check a
    hand-edited record lost is checked for being alive only)."""
    found: list[Probe] = []
    for name, entry in resources.services.items():
        if not entry.pid:
            continue
        inner = None
        if entry.health is not None and entry.workdir is not None:
            inner = _inner_probe(
                entry.health,
                entry.host,
                entry.port,
                entry.workdir,
                probe_env(entry, outputs),
                name,
            )
        found.append(ServiceProbe(name, entry.pid, inner, entry.log))
    return found


def services_alive(resources: LocalResources) -> bool:
    """Whether every recorded service process still runs."""
    return not stopped_services(resources)


def stopped_services(resources: LocalResources) -> list[str]:
    """Names of the recorded services whose process no longer runs."""
    return [
        name
        for name, entry in resources.services.items()
        if not (entry.pid and pid_alive(entry.pid))
    ]


def _invoker() -> RunAs:
    import pwd

    entry = pwd.getpwuid(os.geteuid())
    return RunAs(entry.pw_name, entry.pw_uid, entry.pw_gid, switch=False)


# -- start ----------------------------------------------------------------------------------------


@dataclass
class Cluster:
    """Starts the services of one spec for one pipeline, recording each before it starts."""

    place: ClusterPlace
    spec: EnvSpec
    resources: LocalResources
    save: Callable[[], None]  # writes ``resources`` into the record and saves the record
    health_timeout: float = 120.0
    progress: Callable[[str], None] = field(default=lambda step: None)

    def start(self, outputs: Mapping[str, str]) -> dict[str, str]:
        """Start every service in dependency order; return the ``SERVICE_*_URL`` outputs.

        Raises ``ProvisionError`` (with the service's last log lines) when one exits or never
        becomes healthy; what was started stays recorded, for ``destroy`` to stop.
        """
        place = self.place
        ports = assign_ports(self.spec, place.host, place.dedicated)
        urls = service_urls(self.spec, place.host, ports)
        everything = {**outputs, **urls}
        (place.env_dir / "services").mkdir(mode=0o711, exist_ok=True)
        for service in self.spec.services:
            self.progress(f"service {service.name}")
            self._start_one(service, ports.get(service.name), everything)
        return urls

    def _start_one(
        self, service: ServiceSpec, port: int | None, outputs: Mapping[str, str]
    ) -> None:
        from envkit.health import HealthCheckFailedError, wait_until_healthy

        place = self.place
        assert service.command is not None  # checked by LocalProvider.check_spec
        run_as = place.run_as(service)
        values = template_values(self.spec, service, outputs, place.host, port)
        argv = [render(arg, values) for arg in service.command]
        env = service_env(place, service, values, outputs, run_as)
        health_argv = [render(arg, values) for arg in service.health.command]
        health = HealthCheck(service.health.kind, service.health.path, tuple(health_argv))
        workdir = place.workdir(service.name)
        workdir.mkdir(mode=0o700, exist_ok=True)
        run_as.chown(workdir)
        log_path = place.log_path(service.name)
        entry = ServiceEntry(
            host=place.host,
            port=port,
            log=log_path,
            workdir=workdir,
            health=health,
            grace=service.stop_grace,
            run_as=run_as,
        )
        self.resources.services[service.name] = entry
        self.save()  # write-ahead: a crash from here on leaves a record naming the service
        fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            proc = subprocess.Popen(
                argv,
                cwd=workdir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=fd,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                close_fds=True,
                **run_as.popen_kwargs(),
            )
        except OSError as exc:
            raise ProvisionError(
                f"Service {service.name!r} could not be started: {argv[0]}: "
                f"{exc.strerror or exc}.",
                hint=f"Check services.{service.name}.command in {self.spec.source}"
                + (f" (it runs as the user {run_as.name!r})" if run_as.switch else "")
                + ".",
            ) from None
        finally:
            os.close(fd)
        CHILDREN[proc.pid] = proc
        entry.pid = proc.pid
        entry.pgid = proc.pid  # start_new_session: it leads its own group
        self.save()
        inner = _inner_probe(
            health, place.host, port, workdir, probe_env(entry, outputs), service.name
        )
        probe = ServiceProbe(service.name, proc.pid, inner, log_path)
        try:
            wait_until_healthy([probe], timeout=self.health_timeout,
                               secrets=secret_values(outputs))
        except HealthCheckFailedError as exc:
            secrets = secret_values(outputs)
            tail = scrub(log_tail(log_path), secrets)
            code = proc.poll()
            if code is not None:
                raise ProvisionError(
                    f"Service {service.name!r} exited at start (exit code {code}). "
                    f"Last lines of {log_path}:\n{tail}",
                    hint=f"Fix the service or services.{service.name}.command in "
                    f"{self.spec.source}; 'envkit logs ID {service.name}' shows its log.",
                ) from None
            results = exc.report.failing
            detail = results[0].error if results else "unknown"
            raise ProvisionError(
                f"Service {service.name!r} did not become healthy within "
                f"{self.health_timeout:.0f}s ({detail}). Last lines of {log_path}:\n{tail}",
                hint=f"Check services.{service.name}.health in {self.spec.source}, or raise "
                "ENVKIT_HEALTH_TIMEOUT.",
            ) from None


def provision_spec(
    provider: LocalProvider,
    request: ProvisionRequest,
    resources: LocalResources,
    server: PgServer | None,
    outputs: Mapping[str, str],
) -> dict[str, str]:
    """The spec's part of a local environment: extra databases and settings on ``server``
    (``None``: a shared server, where envkit.shared_server made them), then services
    (recorded in ``resources``, which already name the address). Returns the outputs it adds
    (``DATABASE_<NAME>_URL``, ``SERVICE_<NAME>_URL``)."""
    from urllib.parse import urlsplit, urlunsplit

    from envkit.outputs import complete
    from envkit.providers.local.databases import database_statements
    from envkit.providers.local.pgserver import admin_sql

    spec = request.spec
    if spec is None:
        return {}
    added: dict[str, str] = {}
    statements = database_statements(
        spec, owner=outputs["DATABASE_USER"], default_database=outputs["DATABASE_NAME"]
    )
    if statements and server is not None:
        try:
            admin_sql(server.admin_conninfo(), statements)
        except Exception as exc:
            raise ProvisionError(
                f"Creating the databases of {spec.source} failed: "
                f"{scrub(str(exc), secret_values(outputs))}",
                hint="Check the databases.*.settings names and values in the spec.",
            ) from None
        url = urlsplit(outputs["DATABASE_URL"])
        for database in spec.databases[1:]:
            added[database.url_output] = urlunsplit(url._replace(path=f"/{database.name}"))
    if not spec.services:
        return added
    started = time.monotonic()
    layout = provider.layout
    pipeline_id = request.pipeline_id
    assert resources.host is not None  # recorded by LocalProvider.provision before the server
    place = ClusterPlace(
        pipeline_id,
        layout.home_key,
        layout.env_dir(pipeline_id),
        layout.logs(pipeline_id),
        resources.host,
        bool(resources.dedicated_address),
        provider.run_as(),
    )

    def save() -> None:
        resources.save(request.record)
        request.save()

    cluster = Cluster(
        place,
        spec,
        resources,
        save,
        provider.settings.health_timeout,
        request.progress,
    )
    added.update(
        cluster.start(complete({**outputs, **added}, pipeline_id=pipeline_id, provider="local"))
    )
    request.timings["services"] = time.monotonic() - started
    return added
