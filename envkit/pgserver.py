"""PostgreSQL servers: finding the binaries, a cache of pre-initialised data directories, and an
executor that starts ``postgres`` directly and polls its pid file every 2 ms.

Why not ``pg_ctl -w``: it polls every 100 ms, which is most of a fresh server's start-up time here.
Why a template: ``initdb`` costs ~0.4 s; copying an initialised data directory costs ~40 ms. The
template is initialised once per (binary, settings, owner) and already holds the admin role, an
application role and its database, so a new server needs only renames and a password.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import logging
import os
import shutil
import signal
import stat
import subprocess
import time
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from envkit.errors import PrerequisiteError, ProvisionError, TeardownError
from envkit.locking import FileLock
from envkit.osuser import RunAs
from envkit.securefs import open_dir, private_dir, remove_tree_quietly, write_in
from envkit.state import write_atomic

log = logging.getLogger(__name__)

ADMIN_USER = "envkit"  # superuser; reachable only over the server's private unix socket
APP_PLACEHOLDER = "envkit_app"  # role and database in the template, renamed per pipeline
TEMPLATE_FORMAT = 5  # bump when what the template contains changes

# Throw-away test servers: durability off, small memory, dynamic shared memory in the data
# directory (mmap) so a server killed with SIGKILL leaves nothing in /dev/shm.
SERVER_SETTINGS: dict[str, str] = {
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "shared_buffers": "16MB",
    "max_connections": "50",
    "max_wal_size": "256MB",
    "min_wal_size": "2MB",  # keep 2 recycled 1 MB segments, not 5: less to copy per server
    "dynamic_shared_memory_type": "mmap",
    "password_encryption": "scram-sha-256",
    "log_min_messages": "warning",
    "log_statement": "none",
    "log_line_prefix": "'%m [%p] '",
    "timezone": "UTC",
    "listen_addresses": "''",
}

_BINARIES = ("postgres", "initdb")


@dataclass(frozen=True)
class PgInstall:
    """A directory holding ``postgres`` and ``initdb``."""

    bindir: Path

    def binary(self, name: str) -> Path:
        return self.bindir / name

    def identity(self) -> str:
        """What distinguishes this install for caching: the binary's real path, size, mtime."""
        real = self.binary("postgres").resolve()
        st = real.stat()
        return f"{real}:{st.st_size}:{st.st_mtime_ns}"

    def version(self) -> str:
        """``postgres --version`` (spawns a process; not on the hot path)."""
        out = subprocess.run(
            [str(self.binary("postgres")), "--version"], capture_output=True, text=True, check=False
        )
        return out.stdout.strip()


def find_install(
    configured: Path | None, env: dict[str, str] | None = None, *, cache_dir: Path | None = None
) -> PgInstall:
    """Locate the server binaries: ENVKIT_PG_BINDIR, ``pg_config --bindir``, PATH, then
    ``/usr/lib/postgresql/*/bin`` (newest). Raise ``PrerequisiteError`` listing every place."""
    environ = os.environ if env is None else env
    tried: list[str] = []

    def usable(folder: Path, label: str) -> PgInstall | None:
        tried.append(f"{folder} ({label})")
        if all(os.access(folder / b, os.X_OK) for b in _BINARIES):
            return PgInstall(folder)
        return None

    if configured is not None:
        found = usable(configured, "ENVKIT_PG_BINDIR")
        if found:
            return found
        raise PrerequisiteError(
            f"ENVKIT_PG_BINDIR is {configured}, but it has no executable "
            f"{' and '.join(_BINARIES)}.",
            hint="Point it at the bin directory of a PostgreSQL server installation.",
        )
    search_path = environ.get("PATH", os.defpath)
    pg_config = shutil.which("pg_config", path=search_path)
    if pg_config:
        bindir = pg_config_bindir(pg_config, cache_dir)
        if bindir:
            found = usable(Path(bindir), "pg_config --bindir")
            if found:
                return found
    on_path = shutil.which("postgres", path=search_path)
    if on_path:
        found = usable(Path(on_path).parent, "PATH")
        if found:
            return found
    else:
        tried.append("postgres on PATH (not found)")
    versions = sorted(
        glob.glob("/usr/lib/postgresql/*/bin"),
        key=lambda p: _version_key(Path(p).parent.name),
        reverse=True,
    )
    for folder in versions:
        found = usable(Path(folder), "Debian/Ubuntu layout")
        if found:
            return found
    if not versions:
        tried.append("/usr/lib/postgresql/*/bin (none)")
    raise PrerequisiteError(
        "PostgreSQL server binaries (postgres, initdb) were not found. Tried: "
        + "; ".join(tried)
        + ".",
        hint="Install them (Debian/Ubuntu: 'apt-get install postgresql'; Fedora: "
        "'dnf install postgresql-server'; macOS: 'brew install postgresql') or set "
        "ENVKIT_PG_BINDIR to their bin directory.",
    )


def pg_config_bindir(pg_config: str, cache_dir: Path | None) -> str | None:
    """``pg_config --bindir``, remembered per pg_config binary (spawning it costs ~13 ms)."""
    st = os.stat(pg_config)
    key = f"{os.path.realpath(pg_config)}:{st.st_size}:{st.st_mtime_ns}"
    cache = cache_dir / "pg_config.json" if cache_dir is not None else None
    if cache is not None:
        try:
            known = json.loads(cache.read_text())
            if known.get("key") == key:
                return str(known["bindir"])
        except (OSError, ValueError, KeyError, AttributeError):
            pass
    out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=False)
    bindir = out.stdout.strip() if out.returncode == 0 else ""
    if cache is not None and bindir:
        cache.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_atomic(cache, json.dumps({"key": key, "bindir": bindir}).encode())
    return bindir or None


def _version_key(name: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in name.split("."))
    except ValueError:
        return (0,)


# -- processes --------------------------------------------------------------------------------

_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}  # servers this process spawned, to reap


def _alive(pid: int) -> bool:
    return process_alive(pid, _CHILDREN)


def process_alive(pid: int, children: dict[int, subprocess.Popen[bytes]]) -> bool:
    """Whether ``pid`` runs (zombies count as dead); ``children`` are processes this process
    spawned, which are reaped here so they do not linger as zombies."""
    child = children.get(pid)
    if child is not None:
        if child.poll() is None:
            return True
        children.pop(pid, None)
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie waiting for its (other) parent to reap it is as good as dead
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            return fh.read().rsplit(")", 1)[-1].split()[0] != "Z"
    except OSError:
        return False


def cmdline(pid: int) -> list[str]:
    """The argv of a process ('' parts dropped), or [] when it is gone or unreadable."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return [p.decode(errors="replace") for p in fh.read().split(b"\0") if p]
    except OSError:
        return []


def process_owner(pid: int) -> int | None:
    """The (effective) uid a process runs as, or ``None`` when it is gone."""
    try:
        return os.stat(f"/proc/{pid}").st_uid
    except OSError:
        return None


def processes_naming(prefix: str, owners: Collection[int]) -> Iterator[tuple[int, str]]:
    """(pid, argument) of every other process run by one of ``owners`` with an argument under
    ``prefix`` (a directory path ending in the separator): envkit's marker on what it starts.
    Other users' command lines are theirs to write, so they never count."""
    me = os.getpid()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        pid = int(entry)
        uid = process_owner(pid)
        if uid not in owners:
            continue
        args = cmdline(pid)
        if process_owner(pid) != uid:  # exited, and its pid reused, while we read
            continue
        for arg in args:
            if arg.startswith(prefix):
                yield pid, arg
                break


def postmaster_pid(datadir: Path) -> int | None:
    """The pid of the live postmaster serving ``datadir``, verified against its command line."""
    try:
        first = (datadir / "postmaster.pid").read_text().split("\n", 1)[0]
        pid = int(first)
    except (OSError, ValueError):
        return None
    if pid > 0 and _alive(pid) and str(datadir) in cmdline(pid) and _may_be_postmaster(pid):
        return pid
    return None


def _may_be_postmaster(pid: int) -> bool:
    """Whether ``pid`` runs as a user a postmaster of envkit's can run as: the pid file is the
    server user's to write, so a pid in it naming one of root's processes is a lie (PostgreSQL
    refuses to run as root); without root, servers run as the invoking user."""
    owner = process_owner(pid)
    return owner is not None and (owner != 0 if os.geteuid() == 0 else owner == os.geteuid())


def wait_gone(pid: int, timeout: float) -> bool:
    """Poll every 2 ms until ``pid`` has exited; whether it did within ``timeout``."""
    deadline = time.monotonic() + timeout
    while _alive(pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.002)
    return True


def kill_group(pid: int, sig: signal.Signals) -> None:
    """Signal the process group led by ``pid`` (servers are started in their own session)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def stop_server(datadir: Path, *, fast: bool = True, timeout: float = 10.0) -> bool:
    """Stop the postmaster of ``datadir`` and every process of its group; whether one ran.

    ``fast`` sends SIGINT (fast shutdown: clean, checkpointed); otherwise SIGQUIT (immediate:
    ~5 ms, for data about to be deleted). SIGKILL to the whole group after ``timeout``.
    """
    pid = postmaster_pid(datadir)
    if pid is None:
        return False
    try:
        os.kill(pid, signal.SIGINT if fast else signal.SIGQUIT)
    except ProcessLookupError:
        return False
    if not wait_gone(pid, timeout):
        log.warning(
            "postgres %s did not stop within %.0fs: killing its process group", pid, timeout
        )
        kill_group(pid, signal.SIGKILL)
        if not wait_gone(pid, 5.0):
            raise TeardownError(
                f"Could not stop the PostgreSQL server (pid {pid}) of {datadir}.",
                hint="Check it with 'ps' and kill it by hand.",
            )
    kill_group(pid, signal.SIGKILL)  # any backend still winding down
    return True


class PortInUseError(ProvisionError):
    """The server could not bind its address and port."""


@dataclass
class PgServer:
    """One ``postgres`` process over one data directory (the mirakuru shape: start, poll, stop)."""

    install: PgInstall
    datadir: Path
    socket_dir: Path
    log_path: Path
    run_as: RunAs
    host: str | None = None
    port: int = 5432
    marker: str = "envkit"
    pid: int | None = None

    def argv(self) -> list[str]:
        args = [
            str(self.install.binary("postgres")),
            "-D",
            str(self.datadir),
            "-p",
            str(self.port),
            "-c",
            f"unix_socket_directories={self.socket_dir}",
            "-c",
            f"cluster_name={self.marker}",
        ]
        args += ["-c", f"listen_addresses={self.host or ''}"]
        return args

    def start(self, timeout: float = 30.0) -> PgServer:
        """Spawn ``postgres`` in its own session and return once it accepts connections."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        env = {
            "PATH": os.environ.get("PATH", os.defpath),
            "LC_ALL": "C",
            "TZ": "UTC",
            "ENVKIT_MARKER": self.marker,
        }
        with open(self.log_path, "ab") as log_file:
            os.chmod(self.log_path, 0o600)
            proc = subprocess.Popen(
                self.argv(),
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                cwd=self.datadir,
                env=env,
                start_new_session=True,
                close_fds=True,
                **self.run_as.popen_kwargs(),
            )
        _CHILDREN[proc.pid] = proc
        self.pid = proc.pid
        self.wait_ready(proc, timeout)
        return self

    def wait_ready(self, proc: subprocess.Popen[bytes], timeout: float) -> None:
        """Poll ``postmaster.pid`` every 2 ms until its status line says ``ready``."""
        pidfile = self.datadir / "postmaster.pid"
        deadline = time.monotonic() + timeout
        while True:
            try:
                lines = pidfile.read_text().split("\n")
            except (FileNotFoundError, PermissionError):
                lines = []
            if len(lines) > 7 and lines[7].strip() == "ready" and lines[0] == str(proc.pid):
                return
            if proc.poll() is not None:
                _CHILDREN.pop(proc.pid, None)
                tail = self.log_tail()
                if "could not bind" in tail or "could not create any TCP/IP" in tail:
                    raise PortInUseError(f"PostgreSQL could not listen on {self.host}:{self.port}.")
                raise ProvisionError(
                    f"PostgreSQL exited during start-up (code {proc.returncode}). "
                    f"Last lines of {self.log_path}:\n{tail}",
                )
            if time.monotonic() >= deadline:
                self.stop(fast=False)
                raise ProvisionError(
                    f"PostgreSQL did not become ready within {timeout:.0f}s. Last lines of "
                    f"{self.log_path}:\n{self.log_tail()}"
                )
            time.sleep(0.002)

    def stop(self, *, fast: bool = True, timeout: float = 10.0) -> None:
        """Stop the server (see :func:`stop_server`)."""
        stop_server(self.datadir, fast=fast, timeout=timeout)
        if self.pid is not None:
            child = _CHILDREN.pop(self.pid, None)
            if child is not None:
                child.wait(timeout=timeout)

    def admin_conninfo(self, dbname: str = "postgres") -> dict[str, Any]:
        """Connection arguments for the superuser over the private unix socket."""
        return {
            "host": str(self.socket_dir),
            "port": self.port,
            "user": ADMIN_USER,
            "dbname": dbname,
        }

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.strip().splitlines()[-lines:]) or "(log is empty)"


# -- templates --------------------------------------------------------------------------------


def copy_tree(source: Path, target: Path) -> None:
    """Copy a data directory keeping owner and modes (``cp`` is ~30 % faster than copytree)."""
    result = subprocess.run(
        [*COPY_COMMAND, str(source), str(target)], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise ProvisionError(f"Copying {source} to {target} failed: {result.stderr.strip()}")


def admin_sql(conninfo: dict[str, Any], statements: list[str]) -> None:
    """Run admin statements as the superuser over the server's private unix socket (trust),
    with envkit's in-process client: no ~11 ms ``psql`` spawn, no ~0.1 s ``import psycopg``."""
    from envkit.wire import WireError, connect

    try:
        with connect(
            str(conninfo["host"]),
            int(conninfo["port"]),
            str(conninfo["user"]),
            str(conninfo["dbname"]),
            timeout=10.0,
        ) as session:
            for statement in statements:  # one at a time: CREATE DATABASE refuses a block
                session.query(statement)
    except (WireError, OSError) as exc:
        raise ProvisionError(f"SQL on the new server failed: {exc}") from None


# sun_path holds 108 bytes; the socket file name ".s.PGSQL.NNNNN" and a NUL need 15 of them.
MAX_SOCKET_DIR = 92


def socket_dir(data_root: Path, key: str) -> Path:
    """A directory for a server's unix socket: ``<data_root>/s/<key>`` when that is short enough
    for a socket path, else a per-user directory in the system temp dir."""
    preferred = data_root / "s" / key
    if len(os.fsencode(preferred)) <= MAX_SOCKET_DIR:
        return preferred
    import tempfile

    digest = hashlib.sha256(os.fsencode(preferred)).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / f"envkit-s-{os.geteuid()}" / digest


def make_socket_dir(path: Path, run_as: RunAs) -> None:
    """Create a socket directory private to the server (0700: the superuser's socket trusts
    whoever reaches it). Its parent is envkit's own (created, or proved unwritable by anyone
    else); an existing one, left by an earlier run, is proved envkit's and made private again."""
    private_dir(path.parent, 0o711, check_above=True)
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        st = os.lstat(path)
        if not stat.S_ISDIR(st.st_mode) or st.st_uid not in (os.geteuid(), run_as.uid):
            raise ProvisionError(
                f"The socket directory {path} exists and is not envkit's.",
                hint=f"Remove it ('rm -rf {path}') and run again.",
            ) from None
    with open_dir(path) as fd:
        if run_as.switch:
            os.fchown(fd, run_as.uid, run_as.gid)
        os.fchmod(fd, 0o700)


def trim(datadir: Path, install: PgInstall) -> None:
    """Drop what a stopped template does not need and every copy (one per server) would pay for.

    - Free-space-map forks: hint data PostgreSQL treats a missing fork as "no known free space"
      for and VACUUM rebuilds (it is not even WAL-logged). A quarter of a template's files and
      3.7 of its 36 MB: 55 -> 40 ms per copy here, measured.
    - WAL segments other than the one holding the shutdown checkpoint: after a clean stop the
      others are old or recycled for reuse, and the server creates segments as it needs them.
      4 of a template's 31 MB.
    """
    # Walked through descriptors, never following a symlink: the data directory belongs to
    # the server user, and this runs as the invoking user (root, often).
    with open_dir(datadir) as top:
        with open_dir(Path("base"), dir_fd=top) as base:
            for name in os.listdir(base):
                with contextlib.suppress(OSError), open_dir(
                    Path(name), dir_fd=base
                ) as database:
                    _unlink_files(database, lambda n: n.endswith("_fsm"))
        with open_dir(Path("global"), dir_fd=top) as shared:
            _unlink_files(shared, lambda n: n.endswith("_fsm"))
        keep = checkpoint_segments(datadir, install)
        if keep:
            with open_dir(Path("pg_wal"), dir_fd=top) as wal:
                _unlink_files(wal, lambda n: len(n) == 24 and n not in keep)


def _unlink_files(dir_fd: int, doomed: Callable[[str], bool]) -> None:
    """Unlink the regular files of a directory whose names ``doomed`` picks."""
    with os.scandir(dir_fd) as entries:
        for entry in entries:
            if entry.is_file(follow_symlinks=False) and doomed(entry.name):
                os.unlink(entry.name, dir_fd=dir_fd)


def checkpoint_segments(datadir: Path, install: PgInstall) -> set[str]:
    """The WAL segments a cleanly stopped server restarts from: the one holding its shutdown
    checkpoint record, and the next one too when that record starts in the last WAL page of its
    segment (it may end in the next). Empty when that cannot be told for sure (no
    ``pg_controldata``, not shut down cleanly): then nothing is trimmed."""
    tool = install.binary("pg_controldata")
    if not os.access(tool, os.X_OK):
        return set()
    out = subprocess.run(
        [str(tool), str(datadir)],
        capture_output=True,
        text=True,
        check=False,
        env={"LC_ALL": "C", "PATH": os.environ.get("PATH", os.defpath)},
    )
    fields = dict(
        (key.strip(), value.strip())
        for key, sep, value in (line.partition(":") for line in out.stdout.splitlines())
        if sep
    )
    segment = fields.get("Latest checkpoint's REDO WAL file", "")
    if out.returncode != 0 or fields.get("Database cluster state") != "shut down":
        return set()
    if len(segment) != 24 or not (datadir / "pg_wal" / segment).is_file():
        return set()
    try:
        size = int(fields["Bytes per WAL segment"])
        high, low = fields["Latest checkpoint location"].split("/")
        location = (int(high, 16) << 32) | int(low, 16)
        timeline, number = int(segment[:8], 16), location // size
    except (KeyError, ValueError, ZeroDivisionError):
        return set()
    per_id = 0x100000000 // size
    if f"{timeline:08X}{number // per_id:08X}{number % per_id:08X}" != segment:
        return set()  # not a shutdown checkpoint's layout: keep everything
    keep = {segment}
    if size - location % size < 8192:
        keep.add(f"{timeline:08X}{(number + 1) // per_id:08X}{(number + 1) % per_id:08X}")
    return keep


class TemplateCache:
    """Pre-initialised data directories under ``root``, built once and copied per server."""

    def __init__(self, root: Path, install: PgInstall, run_as: RunAs) -> None:
        self.root = root
        self.install = install
        self.run_as = run_as

    def base_key(self) -> str:
        text = json.dumps(
            [TEMPLATE_FORMAT, self.install.identity(), SERVER_SETTINGS, self.run_as.uid],
            sort_keys=True,
        )
        return "pg-" + hashlib.sha256(text.encode()).hexdigest()[:16]

    def base(self) -> Path:
        """The base template: initdb'd, tuned, with the admin and placeholder app roles."""
        return self._get(self.base_key(), self._build_base)

    def derived(self, name: str, prepare: Callable[[PgServer], None]) -> Path:
        """A template built from the base by ``prepare(server)`` (e.g. a seeded database),
        cached under ``name`` (which must change whenever what ``prepare`` does changes)."""
        base = self.base()

        def build(target: Path, scratch: Path) -> None:
            copy_tree(base, target)
            server = self._scratch_server(target, scratch)
            server.start()
            try:
                prepare(server)
            finally:
                server.stop(fast=True)

        return self._get(f"{self.base_key()}-{name}", build)

    def _get(self, key: str, build: Callable[[Path, Path], None]) -> Path:
        path = self.root / key
        if (path / "PG_VERSION").is_file():
            return path
        # Ours alone (0711: the server user traverses it to its data, never writes in it).
        private_dir(self.root, 0o711)
        lock = FileLock(self.root / f"{key}.lock", what=f"Template {key}")
        lock.acquire(timeout=300)
        try:
            if (path / "PG_VERSION").is_file():
                return path  # another process built it while we waited
            scratch = self.root / f".build-{key}-{os.getpid()}"
            remove_tree_quietly(scratch, self.root)
            private_dir(scratch, 0o711)
            target = scratch / "pgdata"
            started = time.perf_counter()
            try:
                build(target, scratch)
                for leftover in ("postmaster.opts", "postmaster.pid"):
                    (target / leftover).unlink(missing_ok=True)
                trim(target, self.install)
                os.rename(target, path)
            finally:
                remove_tree_quietly(scratch, self.root)
                sock = self._scratch_socket(scratch)
                remove_tree_quietly(sock, sock.parent)
            log.info("built template %s in %.2fs", key, time.perf_counter() - started)
            return path
        finally:
            lock.release()

    def _scratch_server(self, datadir: Path, scratch: Path) -> PgServer:
        sock = self._scratch_socket(scratch)
        make_socket_dir(sock, self.run_as)
        return PgServer(
            self.install,
            datadir,
            sock,
            scratch / "build.log",
            self.run_as,
            host=None,
            port=5432,
            marker="envkit-template-build",
        )

    def _scratch_socket(self, scratch: Path) -> Path:
        return socket_dir(
            self.root.parent, "b" + hashlib.sha256(os.fsencode(scratch)).hexdigest()[:11]
        )

    def _build_base(self, target: Path, scratch: Path) -> None:
        target.mkdir(mode=0o700)
        self.run_as.chown(target)
        initdb = [
            str(self.install.binary("initdb")),
            "-D",
            str(target),
            "-U",
            ADMIN_USER,
            "-E",
            "UTF8",
            "--locale=C",
            "-N",
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            "--wal-segsize=1",
        ]
        result = subprocess.run(
            initdb,
            capture_output=True,
            text=True,
            check=False,
            cwd=scratch,
            **self.run_as.popen_kwargs(),
        )
        if result.returncode != 0:
            raise PrerequisiteError(
                f"initdb failed (as user {self.run_as.name}): "
                f"{(result.stderr or result.stdout).strip()[-800:]}",
                hint="Check that the PostgreSQL installation works: "
                f"{self.install.binary('initdb')} --version",
            )
        conf = "\n".join(f"{k} = {v}" for k, v in SERVER_SETTINGS.items())
        # Password auth on TCP for everyone; trust only on the private 0700 socket directory.
        hba = (
            "local all all trust\n"
            "host all all 0.0.0.0/0 scram-sha-256\n"
            "host all all ::/0 scram-sha-256\n"
        )
        with open_dir(target) as fd:  # the server user's: write no symlink it planted
            write_in(fd, "postgresql.conf", f"\n# envkit: throw-away settings\n{conf}\n".encode(),
                     append=True)
            write_in(fd, "pg_hba.conf", hba.encode())
        server = self._scratch_server(target, scratch)
        server.start()
        try:
            admin_sql(
                server.admin_conninfo(),
                [
                    f"CREATE ROLE {APP_PLACEHOLDER} LOGIN",
                    f"CREATE DATABASE {APP_PLACEHOLDER} OWNER {APP_PLACEHOLDER}",
                ],
            )
        finally:
            server.stop(fast=True)


COPY_COMMAND = ("cp", "-R", "-P", "--preserve=mode,ownership")
"""How a data directory is copied: owner and modes kept, no timestamps or xattrs (PostgreSQL
needs neither; skipping them is ~20 % fewer system calls than ``cp -a``)."""


SCRAM_ITERATIONS = 128
"""PBKDF2 rounds in the verifiers envkit writes. PostgreSQL's default, 4096, stretches weak
human passwords; envkit's are 192 random bits (``secrets.token_urlsafe(24)``), which no number
of rounds makes stronger, and every client login pays the rounds: 4096 cost ~2.5 ms of client
CPU per connection here, 128 ~0.1 ms (PostgreSQL 16 made this tunable, ``scram_iterations``,
for the same reason)."""


def scram_verifier(password: str, iterations: int = SCRAM_ITERATIONS) -> str:
    """A SCRAM-SHA-256 verifier for ``password``, so the plain password never reaches the
    server (nor its logs): PostgreSQL stores verifiers it is given as they are."""
    import base64
    import hmac

    salt = os.urandom(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()
    b64 = base64.b64encode
    return (
        f"SCRAM-SHA-256${iterations}:{b64(salt).decode()}"
        f"${b64(stored_key).decode()}:{b64(server_key).decode()}"
    )


def configure_app(server: PgServer, *, role: str, database: str, password: str) -> None:
    """Turn the template's placeholder role and database into this server's own."""
    verifier = scram_verifier(password)
    admin_sql(
        server.admin_conninfo("template1"),
        [
            f'ALTER ROLE {APP_PLACEHOLDER} RENAME TO "{role}"',
            f"ALTER ROLE \"{role}\" PASSWORD '{verifier}'",
            f'ALTER DATABASE {APP_PLACEHOLDER} RENAME TO "{database}"',
        ],
    )
