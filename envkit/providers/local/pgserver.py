"""PostgreSQL servers: finding the binaries, a cache of pre-initialised data directories, and an
executor that starts ``postgres`` directly and polls its pid file every 2 ms.

Why not ``pg_ctl -w``: it polls every 100 ms, which is most of a fresh server's start-up time here.
Why a template: ``initdb`` costs ~0.4 s; copying an initialised data directory costs ~40 ms. The
template is initialised once per (binary, settings, owner) and already holds the admin role, an
application role and its database, so a new server needs only renames and a password.
"""

from __future__ import annotations

import hashlib
import logging
import os
import signal
import stat
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from envkit.errors import ProvisionError, TeardownError
from envkit.pgbin import PgInstall
from envkit.processes import cmdline, kill_group, process_alive, process_owner, wait_gone
from envkit.providers.local.osuser import RunAs
from envkit.securefs import open_dir, private_dir
from envkit.wire import scram_verifier

log = logging.getLogger(__name__)

ADMIN_USER = "envkit"  # superuser; reachable only over the server's private unix socket
APP_PLACEHOLDER = "envkit_app"  # role and database in the template, renamed per pipeline

# Throw-away test servers: durability off, small memory, dynamic shared memory in the data
# directory (mmap) so a server killed with SIGKILL leaves nothing in /dev/shm.
SERVER_SETTINGS: dict[str, str] = {
    "fsync": "off",
    # A commit waits for its WAL to reach the kernel (a write, no fsync: fsync is off), so a
    # killed server restarts with every committed row: a preserved environment keeps its data.
    "synchronous_commit": "on",
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


# -- processes --------------------------------------------------------------------------------

_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}  # servers this process spawned, to reap


def _alive(pid: int) -> bool:
    return process_alive(pid, _CHILDREN)


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
    if not wait_gone(pid, timeout, _CHILDREN):
        log.warning(
            "postgres %s did not stop within %.0fs: killing its process group", pid, timeout
        )
        kill_group(pid, signal.SIGKILL)
        if not wait_gone(pid, 5.0, _CHILDREN):
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


SCRAM_ITERATIONS = 128
"""PBKDF2 rounds in the verifiers envkit writes. PostgreSQL's default, 4096, stretches weak
human passwords; envkit's are 192 random bits (``secrets.token_urlsafe(24)``), which no number
of rounds makes stronger, and every client login pays the rounds: 4096 cost ~2.5 ms of client
CPU per connection here, 128 ~0.1 ms (PostgreSQL 16 made this tunable, ``scram_iterations``,
for the same reason)."""


def configure_app(server: PgServer, *, role: str, database: str, password: str) -> None:
    """Turn the template's placeholder role and database into this server's own."""
    verifier = scram_verifier(password, SCRAM_ITERATIONS)
    admin_sql(
        server.admin_conninfo("template1"),
        [
            f'ALTER ROLE {APP_PLACEHOLDER} RENAME TO "{role}"',
            f"ALTER ROLE \"{role}\" PASSWORD '{verifier}'",
            f'ALTER DATABASE {APP_PLACEHOLDER} RENAME TO "{database}"',
        ],
    )
