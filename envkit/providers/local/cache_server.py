"""A Redis server per pipeline: ``redis-server`` on the pipeline's own loopback address.

The configuration goes in through stdin (``redis-server -``), so it is neither in the command
line (visible to every local user) nor in a file; it holds no password either, only the
SHA-256 of it (an ACL ``#<hash>`` rule), as PostgreSQL gets a SCRAM verifier. The default user
is off; the one user, ``envkit``, may run everything but administration (no CONFIG, DEBUG,
MODULE, SHUTDOWN, ACL, SAVE, replication, MONITOR). No RDB snapshot is ever written and no AOF
unless ``persistence = true``, and then only in the pipeline's own directory.

The command line keeps envkit's mark (``set-proc-title no``): it names the pipeline's directory,
so ``destroy``'s stray-process scan, ``leftovers`` and ``reap`` find a server whose ``up`` was
killed before it saved anything. The entry is recorded before the server starts.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import secrets
import shutil
import subprocess
import time
from collections.abc import Callable, Mapping, MutableMapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from envkit.errors import EnvkitError, PrerequisiteError, ProvisionError
from envkit.kvwire import KvAddress
from envkit.processes import Children, cmdline, process_alive, stop, wait_gone
from envkit.providers.local.layout import Layout
from envkit.providers.local.loopback import Address, bind_error, free_port
from envkit.providers.local.osuser import RunAs
from envkit.securefs import open_dir
from envkit.spec_model import RedisSpec

if TYPE_CHECKING:
    from envkit.health import Probe
    from envkit.providers.base import ProvisionRequest
    from envkit.state import Record

log = logging.getLogger(__name__)

STANDARD_REDIS_PORT = 6379
RESOURCE_KEY = "redis"  # record.resources entry of the local provider
FOLDER = "redis"  # the server's folder in the pipeline's directory
APP_USER = "envkit"
INSTALL_HINT = "Install it ('apt-get install redis-server'), or drop [redis] / --redis."
SEARCH_DIRS = ("/usr/bin", "/usr/sbin", "/usr/local/bin")
# What the app user may not run: server administration, persistence, replication, snooping.
DENIED = (
    "-@admin",
    "-config",
    "-debug",
    "-module",
    "-shutdown",
    "-acl",
    "-save",
    "-bgsave",
    "-bgrewriteaof",
    "-replicaof",
    "-slaveof",
    "-sync",
    "-psync",
    "-failover",
    "-monitor",
    "-migrate",
    "+acl|whoami",
)

_CHILDREN: Children = {}


def binary_for(spec: RedisSpec | None) -> Path | None:
    """The ``redis-server`` to run ``spec`` with (``None`` without one); exit 2 when there is
    none, or it is another version than the spec names."""
    if spec is None:
        return None
    binary = find_redis_server()
    check_version(binary, spec.version)
    return binary


def find_redis_server() -> Path:
    """``redis-server`` on PATH, else in the usual system folders; exit 2 naming each place."""
    found = shutil.which("redis-server")
    if found:
        return Path(found)
    for folder in SEARCH_DIRS:
        candidate = Path(folder) / "redis-server"
        if os.access(candidate, os.X_OK):
            return candidate
    raise PrerequisiteError(
        "Redis was asked for, but no 'redis-server' was found on PATH nor in "
        f"{', '.join(SEARCH_DIRS)}.",
        hint=INSTALL_HINT,
    )


def describe() -> str:
    """What ``envkit doctor`` shows: the version and where it is (exit-2 error when missing)."""
    binary = find_redis_server()
    return f"{server_version(binary) or 'redis-server'} in {binary}"


def server_version(binary: Path) -> str:
    """The version ``redis-server --version`` reports (``7.0.15``)."""
    out = subprocess.run(
        [str(binary), "--version"], capture_output=True, text=True, timeout=10, check=False
    ).stdout
    for word in out.split():
        if word.startswith("v="):
            return word[2:]
    return ""


def check_version(binary: Path, wanted: str | None) -> None:
    """Exit 2 when ``[redis] version`` names another major (or major.minor) than installed."""
    if wanted is None:
        return
    have = server_version(binary)
    if have != wanted and not have.startswith(wanted + "."):
        raise PrerequisiteError(
            f"[redis] version = {wanted!r}, but {binary} is Redis {have or '(unknown)'}.",
            hint="Install that version, or change or remove 'version' in [redis].",
        )


def password_hash(password: str) -> str:
    """What the ACL stores: the SHA-256 of the password, in hex."""
    return hashlib.sha256(password.encode()).hexdigest()


@dataclass
class CacheEntry:
    """The Redis server of one environment, as recorded (before it is started)."""

    binary: str
    host: str
    port: int
    dir: str  # the server's own folder inside the pipeline's directory
    maxmemory: str = RedisSpec.maxmemory
    persistence: bool = False
    pid: int | None = None

    @property
    def pidfile(self) -> Path:
        return Path(self.dir) / "redis.pid"

    @classmethod
    def load(cls, resources: Mapping[str, Any]) -> CacheEntry | None:
        """The entry in ``record.resources``; ``None`` when absent or unreadable."""
        data = resources.get(RESOURCE_KEY)
        if not isinstance(data, Mapping):
            return None
        try:
            pid = data.get("pid")
            return cls(
                binary=str(data["binary"]),
                host=str(data["host"]),
                port=int(data["port"]),
                dir=str(data["dir"]),
                maxmemory=str(data.get("maxmemory", RedisSpec.maxmemory)),
                persistence=data.get("persistence") is True,
                pid=pid if isinstance(pid, int) and not isinstance(pid, bool) else None,
            )
        except (KeyError, TypeError, ValueError):
            return None

    def save(self, resources: MutableMapping[str, Any]) -> None:
        resources[RESOURCE_KEY] = asdict(self)

    def argv(self) -> list[str]:
        """The command line: no secret in it, and the server's folder as envkit's mark."""
        return [self.binary, "-", "--dir", self.dir, "--pidfile", str(self.pidfile)]

    def config(self, secret_hash: str) -> str:
        """The configuration fed through stdin."""
        lines = [
            f"bind {self.host}",
            f"port {self.port}",
            "protected-mode yes",
            "daemonize no",
            "set-proc-title no",
            'logfile ""',
            "loglevel warning",
            'save ""',
            f"appendonly {'yes' if self.persistence else 'no'}",
            f"maxmemory {self.maxmemory}",
            "databases 16",
            "enable-debug-command no",
            "enable-module-command no",
            "enable-protected-configs no",
            "user default off resetpass nocommands",
            f"user {APP_USER} on #{secret_hash} ~* &* +@all {' '.join(DENIED)}",
        ]
        return "\n".join(lines) + "\n"


def running_pid(entry_dir: Path) -> int | None:
    """The pid of the live ``redis-server`` of ``entry_dir``, verified against its command line
    (the pid file is the server user's to write: a pid naming another process is not taken)."""
    try:  # the server user's file: a symlink it planted is not followed
        fd = os.open(entry_dir / "redis.pid", os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        try:
            pid = int(os.read(fd, 32).decode().strip())
        finally:
            os.close(fd)
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    if pid > 0 and process_alive(pid, _CHILDREN) and str(entry_dir) in cmdline(pid):
        return pid
    return None


class PortTakenError(ProvisionError):
    """The server could not listen on its address and port."""


def spawn(
    entry: CacheEntry, password: str, run_as: RunAs, log_path: Path
) -> subprocess.Popen[bytes]:
    """Start the server of ``entry`` (its folder exists), its configuration fed through stdin;
    returns at once (:func:`wait_listening` waits)."""
    with open(log_path, "ab") as log_file:
        os.chmod(log_path, 0o600)
        proc = subprocess.Popen(
            entry.argv(),
            stdin=subprocess.PIPE,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            cwd=entry.dir,
            env={"PATH": os.environ.get("PATH", os.defpath), "LC_ALL": "C"},
            start_new_session=True,
            close_fds=True,
            **run_as.popen_kwargs(),
        )
    _CHILDREN[proc.pid] = proc
    assert proc.stdin is not None
    with proc.stdin:
        proc.stdin.write(entry.config(password_hash(password)).encode())
    return proc


def wait_listening(
    entry: CacheEntry, proc: subprocess.Popen[bytes], log_path: Path, timeout: float = 10.0
) -> int:
    """The pid of ``proc`` once it listens: Redis writes its pid file right after binding its
    socket, so the file is polled every 2 ms."""
    deadline = time.monotonic() + timeout
    while True:
        if running_pid(Path(entry.dir)) == proc.pid:
            return proc.pid
        if proc.poll() is not None:
            _CHILDREN.pop(proc.pid, None)
            tail = _tail(log_path)
            if "Address already in use" in tail or "Could not create server TCP" in tail:
                raise PortTakenError(f"redis-server could not listen on {entry.host}:{entry.port}.")
            raise ProvisionError(
                f"redis-server exited during start-up (code {proc.returncode}). "
                f"Last lines of {log_path}:\n{tail}"
            )
        if time.monotonic() >= deadline:
            stop_server(Path(entry.dir))
            raise ProvisionError(f"redis-server did not start within {timeout:.0f}s: {log_path}.")
        time.sleep(0.002)


def start(entry: CacheEntry, password: str, run_as: RunAs, log_path: Path) -> int:
    """Start the server of ``entry`` and return its pid once it listens."""
    return wait_listening(entry, spawn(entry, password, run_as, log_path), log_path)


def stop_server(entry_dir: Path, timeout: float = 5.0) -> bool:
    """Stop the server of ``entry_dir`` (SIGTERM: with no persistence it exits at once);
    whether one ran."""
    pid = running_pid(entry_dir)
    if pid is None:
        return False

    def find() -> list[int]:
        return [pid] if running_pid(entry_dir) == pid else []

    stop(find, grace=timeout, children=_CHILDREN, what=f"redis-server of {entry_dir}")
    wait_gone(pid, 1.0, _CHILDREN)
    return True


def make_dir(path: Path, run_as: RunAs) -> None:
    """The server's folder: the server user's alone (0700)."""
    os.mkdir(path, 0o700)
    with open_dir(path) as fd:
        if run_as.switch:
            os.fchown(fd, run_as.uid, run_as.gid)


@dataclass
class CacheStart:
    """One environment's server being started: :meth:`begin` records and spawns it (the
    provider then copies and starts PostgreSQL meanwhile), :meth:`finish` waits until it
    listens (on a free port when its own was taken) and returns the outputs."""

    spec: RedisSpec
    binary: Path
    address: Address
    folder: Path
    log_path: Path
    run_as: RunAs
    resources: MutableMapping[str, Any]
    save: Callable[[], None]
    password: str = field(default_factory=lambda: secrets.token_urlsafe(24), repr=False)
    entry: CacheEntry | None = None
    proc: subprocess.Popen[bytes] | None = None

    def begin(self) -> CacheStart:
        host = self.address.host
        port = STANDARD_REDIS_PORT
        if not self.address.dedicated or bind_error(host, port) is not None:
            port = free_port(host)
        make_dir(self.folder, self.run_as)
        self._spawn(port)
        return self

    def _spawn(self, port: int) -> None:
        spec = self.spec
        entry = CacheEntry(
            str(self.binary),
            self.address.host,
            port,
            str(self.folder),
            spec.maxmemory,
            spec.persistence,
        )
        entry.save(self.resources)  # recorded before it exists
        self.save()
        self.entry, self.proc = entry, spawn(entry, self.password, self.run_as, self.log_path)

    def finish(self) -> dict[str, str]:
        for attempt in range(3):
            assert self.entry is not None and self.proc is not None
            try:
                self.entry.pid = wait_listening(self.entry, self.proc, self.log_path)
            except PortTakenError:
                if attempt == 2:
                    raise
                log.info("port %s was taken; retrying on a free port", self.entry.port)
                self._spawn(free_port(self.address.host))
                continue
            self.entry.save(self.resources)
            self.save()
            return outputs(self.entry, self.password)
        raise AssertionError("unreachable")


def outputs(entry: CacheEntry, password: str) -> dict[str, str]:
    """``REDIS_URL`` (with the password: a secret), ``REDIS_HOST``, ``REDIS_PORT``."""
    return {
        "REDIS_URL": f"redis://{APP_USER}:{password}@{entry.host}:{entry.port}/0",
        "REDIS_HOST": entry.host,
        "REDIS_PORT": str(entry.port),
    }


def restart(entry: CacheEntry, url: str, run_as: RunAs, log_path: Path) -> None:
    """Start a recorded server again, with the password its ``REDIS_URL`` holds."""
    password = KvAddress.from_url(url).password
    if password is None:
        raise ProvisionError("REDIS_URL holds no password")
    folder = Path(entry.dir)
    # A killed server leaves its pid file (in the server user's folder: unlink, never follow).
    with open_dir(folder) as fd, contextlib.suppress(FileNotFoundError):
        os.unlink("redis.pid", dir_fd=fd)
    entry.pid = start(entry, password, run_as, log_path)


def _tail(path: Path, lines: int = 10) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.strip().splitlines()[-lines:]) or "(log is empty)"


# -- what the provider asks (kept here so the provider's module only calls in) -----------------


def folder_of(env_dir: Path) -> Path:
    """The server's folder inside a pipeline's directory (derived: found with no record)."""
    return env_dir / FOLDER


def probes(outputs: Mapping[str, str]) -> list[Probe]:
    """The ``redis`` probe of an environment with a ``REDIS_URL``."""
    url = outputs.get("REDIS_URL")
    if not url:
        return []
    from envkit.health.keyvalue import RedisProbe

    return [RedisProbe(url)]


def stopped(record: Record) -> bool:
    """Whether the environment has a recorded server that no longer runs."""
    return bool(gone(record.resources))


def gone(resources: Mapping[str, Any]) -> list[str]:
    """``["redis: ..."]`` when the recorded server no longer runs."""
    entry = CacheEntry.load(resources)
    if entry is None or running_pid(Path(entry.dir)) is not None:
        return []
    return [f"redis: its server ({entry.host}:{entry.port}) is not running"]


def restart_for(record: Record, run_as: RunAs, logs_dir: Path) -> bool:
    """Start the recorded server of ``record`` again when it stopped; whether it runs now (or
    none is recorded)."""
    entry = CacheEntry.load(record.resources)
    if entry is None or running_pid(Path(entry.dir)) is not None:
        return True
    url = record.outputs.get("REDIS_URL")
    try:
        if not url or not Path(entry.dir).is_dir():
            return False
        restart(entry, url, run_as, logs_dir / "redis.log")
    except (EnvkitError, OSError, ValueError) as exc:
        log.warning("could not start the redis of %s again: %s", record.pipeline_id, exc)
        return False
    entry.save(record.resources)
    return True


def begin_for(
    request: ProvisionRequest,
    binary: Path | None,
    address: Address,
    layout: Layout,
    run_as: RunAs,
    save: Callable[[], None],
) -> CacheStart | None:
    """The provider's step: spawn the request's server at the pipeline's address (its
    directory exists), when it asks for one; :func:`finish` waits for it."""
    if request.redis is None or binary is None:
        return None
    pipeline_id = request.pipeline_id
    return CacheStart(
        request.redis,
        binary,
        address,
        folder_of(layout.env_dir(pipeline_id)),
        layout.logs(pipeline_id) / "redis.log",
        run_as,
        request.record.resources,
        save,
    ).begin()


def finish(request: ProvisionRequest, cache: CacheStart | None) -> dict[str, str]:
    """Wait for the server :func:`begin_for` started; its outputs (none without one). The
    ``redis`` timing is what the wait adds to ``up``."""
    if cache is None:
        return {}
    started = time.perf_counter()
    request.progress("redis")
    found = cache.finish()
    request.timings["redis"] = time.perf_counter() - started
    return found
