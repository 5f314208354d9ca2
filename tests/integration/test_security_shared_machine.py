"""A second local user (and the server user) against root's envkit: issue 14's findings 1-3.

Runs as root with a throw-away unprivileged account made by ``useradd`` (removed afterwards);
skipped, with the reason, where either is impossible. Every data root here sits in a
world-writable sticky directory this module makes under /dev/shm, as /dev/shm itself is, so
the other account can reach it the way it reaches the real default root.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import secrets
import shutil
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from conftest import kill_processes_under, tear_down_home

from envkit.naming import short_hash
from envkit.providers.local.layout import Layout
from envkit.providers.local.osuser import DEFAULT_USER
from envkit.settings import Settings

pytestmark = pytest.mark.integration

if os.geteuid() != 0:
    pytest.skip("runs as root: it checks what root's envkit does beside other users",
                allow_module_level=True)
if shutil.which("useradd") is None or shutil.which("userdel") is None:
    pytest.skip("needs useradd/userdel to make a throw-away account", allow_module_level=True)


@pytest.fixture(scope="module")
def intruder() -> Iterator[pwd.struct_passwd]:
    """A throw-away unprivileged local account, deleted (with its processes) afterwards."""
    name = f"ekx{secrets.token_hex(4)}"
    made = subprocess.run(["useradd", "--system", "--no-create-home", "--home-dir",
                           "/nonexistent", "--shell", "/bin/sh", name],
                          capture_output=True, text=True, check=False)
    if made.returncode != 0:
        pytest.skip(f"useradd failed: {made.stderr.strip()}")
    entry = pwd.getpwnam(name)
    try:
        yield entry
    finally:
        subprocess.run(["pkill", "-KILL", "-u", name], check=False)
        subprocess.run(["userdel", name], capture_output=True, check=False)


@pytest.fixture
def shared_tmp() -> Iterator[Path]:
    """A world-writable sticky directory like /dev/shm or /tmp, removed afterwards with every
    process still running under it."""
    base = Path("/dev/shm") if os.access("/dev/shm", os.W_OK) else Path("/var/tmp")
    path = base / f"envkit-sec-{secrets.token_hex(4)}"
    path.mkdir()
    os.chmod(path, 0o1777)
    yield path
    kill_processes_under(str(path) + os.sep)
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def cli_env(envkit_home: Path, shared_tmp: Path) -> Iterator[dict[str, str]]:
    """The environment root's CLI runs with: its own home, its data root in ``shared_tmp``."""
    env = {**os.environ, "ENVKIT_HOME": str(envkit_home),
           "ENVKIT_DATA_DIR": str(shared_tmp / f"envkit-{os.geteuid()}")}
    yield env
    tear_down_home(envkit_home)


def envkit(env: dict[str, str], *args: str, timeout: float = 120
           ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "envkit", *args], capture_output=True,
                          text=True, timeout=timeout, env=env, check=False)


def as_user(user: pwd.struct_passwd, *argv: str, env: dict[str, str] | None = None
            ) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), user=user.pw_uid, group=user.pw_gid, extra_groups=[],
                          capture_output=True, text=True, timeout=60, check=False, cwd="/",
                          env={"PATH": os.defpath, "LC_ALL": "C", **(env or {})})


def spawn_as(user: pwd.struct_passwd, *argv: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(list(argv), user=user.pw_uid, group=user.pw_gid, extra_groups=[],
                            cwd="/", start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


def settings_of(env: dict[str, str]) -> Settings:
    return Settings.resolve({"home": Path(env["ENVKIT_HOME"]),
                             "data_dir": Path(env["ENVKIT_DATA_DIR"])})


def server_user() -> pwd.struct_passwd:
    return pwd.getpwnam(os.environ.get("ENVKIT_PG_USER") or DEFAULT_USER)


def outputs(env: dict[str, str], pipeline_id: str) -> dict[str, str]:
    done = envkit(env, "outputs", pipeline_id, "--format", "json", "--show-secrets")
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout))


def snapshot(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


# -- finding 1: a planted command line never steers root's reap -----------------------------------

def test_a_planted_dotdot_process_does_not_make_reap_delete_the_data_root(
        cli_env: dict[str, str], intruder: pwd.struct_passwd) -> None:
    env = cli_env
    assert envkit(env, "up", "kept-one", "--ttl", "4h").returncode == 0
    done = envkit(env, "up", "preserved-one")
    assert done.returncode == 0, done.stderr
    assert envkit(env, "down", "preserved-one", "--preserve", "--ttl", "4h").returncode == 0
    layout = Layout.for_settings(settings_of(env))
    before = snapshot(layout.data_root)
    assert any(name.startswith("templates/") for name in before)

    envs = str(layout.envs_root)
    def plant(user: pwd.struct_passwd, path: str) -> subprocess.Popen[bytes]:
        return spawn_as(user, "sh", "-c", "sleep 120; :", "marker", path)

    planted = [plant(intruder, f"{envs}/.."), plant(intruder, f"{envs}/../templates"),
               plant(intruder, f"{envs}/victim/pgdata"), plant(server_user(), f"{envs}/../addr")]
    try:
        time.sleep(0.2)
        dry = envkit(env, "reap", "--dry-run", "--json")
        assert dry.returncode == 0, dry.stderr
        report = json.loads(dry.stdout)
        named = {e.get("pipeline_id") for key in ("reaped", "kept", "errors")
                 for e in report[key]}
        assert not named & {"..", "victim", "../templates", "../addr"}, report
        assert report["reaped"] == [], report

        real = envkit(env, "reap", "--json")
        assert real.returncode == 0, real.stderr
        assert json.loads(real.stdout)["reaped"] == []
        assert snapshot(layout.data_root) >= before  # nothing of envkit's deleted
        for pipeline_id in ("kept-one", "preserved-one"):
            with psycopg.connect(outputs(env, pipeline_id)["DATABASE_URL"],
                                 connect_timeout=5) as conn:
                assert conn.execute("select 1").fetchone() == (1,)
        # Not envkit's: another user's processes are never killed as leftovers either.
        assert all(proc.poll() is None for proc in planted)
    finally:
        for proc in planted:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


# -- finding 2: pre-created roots are refused; no socket lets anyone in ---------------------------

def test_a_data_root_pre_created_by_another_user_is_refused(
        cli_env: dict[str, str], intruder: pwd.struct_passwd) -> None:
    env = cli_env
    root = Path(env["ENVKIT_DATA_DIR"])
    key = short_hash(f"{Layout.for_settings(settings_of(env)).home_key}/grab", 12)
    made = as_user(intruder, "mkdir", "-m", "777", str(root), f"{root}/s", f"{root}/s/{key}")
    assert made.returncode == 0, made.stderr

    done = envkit(env, "up", "grab")
    assert done.returncode == 2, done.stderr
    assert str(root) in done.stderr and "belongs to" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (Path(env["ENVKIT_HOME"]) / "envs" / "grab.json").exists()
    assert os.listdir(f"{root}/s/{key}") == []  # no server ever put a socket there
    assert not any(p.name.startswith("h-") for p in root.iterdir())


def test_a_world_writable_root_of_ours_is_refused_too(cli_env: dict[str, str]) -> None:
    root = Path(cli_env["ENVKIT_DATA_DIR"])
    root.mkdir()
    os.chmod(root, 0o777)
    done = envkit(cli_env, "up", "loose")
    assert done.returncode == 2
    assert "other users can write to it" in done.stderr
    assert os.listdir(root) == []


def test_a_socket_fallback_pre_created_in_tmp_is_refused(
        cli_env: dict[str, str], shared_tmp: Path, intruder: pwd.struct_passwd) -> None:
    # A data root too deep for a unix socket path makes envkit use $TMPDIR/envkit-s-<uid>.
    deep = shared_tmp / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True, mode=0o755)
    env = {**cli_env, "ENVKIT_DATA_DIR": str(deep / "data"), "TMPDIR": str(shared_tmp)}
    fallback = shared_tmp / f"envkit-s-{os.geteuid()}"
    assert as_user(intruder, "mkdir", "-m", "777", str(fallback)).returncode == 0

    done = envkit(env, "up", "deep")
    assert done.returncode == 2, done.stderr
    assert str(fallback) in done.stderr
    assert os.listdir(fallback) == []
    assert not (Path(env["ENVKIT_HOME"]) / "envs" / "deep.json").exists()


def test_no_socket_or_port_lets_another_user_in_without_a_password(
        cli_env: dict[str, str], intruder: pwd.struct_passwd) -> None:
    env = cli_env
    done = envkit(env, "up", "locked-in")
    assert done.returncode == 0, done.stderr
    out = outputs(env, "locked-in")
    layout = Layout.for_settings(settings_of(env))
    sockets = layout.socket_dir("locked-in")
    st = os.lstat(sockets)
    assert stat.S_IMODE(st.st_mode) == 0o700 and st.st_uid == server_user().pw_uid
    for folder in (layout.data_root, layout.envs_root, layout.data_root / "s", layout.templates):
        st = os.lstat(folder)
        assert st.st_uid == os.geteuid() and not st.st_mode & 0o022, folder

    psql = shutil.which("psql") or "/usr/bin/psql"
    for role in ("envkit", out["DATABASE_USER"], "postgres"):
        for target in (f"host={sockets} port={out['DATABASE_PORT']}",
                       f"host={out['DATABASE_HOST']} port={out['DATABASE_PORT']}"):
            tried = as_user(intruder, psql, "-w", "-X", "-At", "-c", "select 1",
                            f"{target} user={role} dbname=postgres connect_timeout=5")
            assert tried.returncode != 0, (role, target, tried.stdout)
            assert tried.stdout.strip() != "1"
    listed = as_user(intruder, "ls", str(layout.data_root))
    assert listed.returncode != 0  # traverse only: nothing to list


# -- finding 3: what the server user can write never steers root ----------------------------------

def test_the_server_user_cannot_swap_a_spare_pool_and_planted_links_are_not_followed(
        cli_env: dict[str, str], tmp_path: Path) -> None:
    env = cli_env
    done = envkit(env, "up", "links")
    assert done.returncode == 0, done.stderr
    layout = Layout.for_settings(settings_of(env))
    pools = sorted(layout.templates.glob("*.spares"))
    assert pools
    victim = tmp_path / "victim"
    (victim / "base" / "1").mkdir(parents=True)
    for name in ("keep.txt", "base/1/1234_fsm", "PG_VERSION"):
        (victim / name).write_text("precious")
    os.chmod(tmp_path, 0o755)

    server = server_user()
    # The pool's folder and templates/ are root's: the server user can neither replace nor
    # rename anything there.
    swap = as_user(server, "sh", "-c", f'mv "{pools[0]}" "{pools[0]}.x"; '
                                       f'ln -s "{victim}" "{pools[0]}"')
    assert swap.returncode != 0
    assert pools[0].is_dir() and not pools[0].is_symlink()

    # Its own directories (data directory, socket directory) may hold links: down deletes the
    # links, never what they point at.
    pgdata = layout.pgdata("links")
    sockets = layout.socket_dir("links")
    planted = as_user(server, "sh", "-c",
                      f'ln -s "{victim}" "{pgdata}/evil" && '
                      f'ln -s "{victim}/base/1" "{pgdata}/base/99999" && '
                      f'ln -s "{victim}" "{sockets}/evil"')
    assert planted.returncode == 0, planted.stderr
    assert envkit(env, "down", "links").returncode == 0
    assert not os.path.lexists(layout.env_dir("links"))
    for name in ("keep.txt", "base/1/1234_fsm", "PG_VERSION"):
        assert (victim / name).read_text() == "precious"

    # Reap trims pools and sweeps stale copies: a link where a stale copy would be is only
    # unlinked.
    pool = pools[0]
    stale = pool / ".tmp-evil"
    os.symlink(victim, stale)
    assert envkit(env, "reap", "--json").returncode == 0
    assert (victim / "keep.txt").read_text() == "precious"


def test_templates_left_by_an_older_envkit_to_the_server_user_are_rebuilt_as_ours(
        cli_env: dict[str, str]) -> None:
    env = cli_env
    assert envkit(env, "up", "first").returncode == 0
    layout = Layout.for_settings(settings_of(env))
    server = server_user()
    os.chown(layout.templates, server.pw_uid, server.pw_gid)  # as envkit <= 0.1 left it
    done = envkit(env, "up", "second")
    assert done.returncode == 0, done.stderr
    st = os.lstat(layout.templates)
    assert st.st_uid == os.geteuid() and stat.S_IMODE(st.st_mode) == 0o711


# -- finding 8: a dry run changes nothing --------------------------------------------------------

def listing(*roots: Path) -> dict[str, tuple[int, ...] | tuple[int, int, int, int, str]]:
    """Every path under ``roots`` (no symlink followed) with its mode, owner, size, mtime and,
    for files, content; live servers' own files (data directories, logs) left out."""
    import hashlib

    found: dict[str, Any] = {}
    for root in roots:
        for folder, dirs, files in os.walk(root):
            dirs[:] = [d for d in dirs if d not in ("pgdata", "logs")]
            for name in [*dirs, *files]:
                path = os.path.join(folder, name)
                st = os.lstat(path)
                digest = ""
                if stat.S_ISREG(st.st_mode):
                    with open(path, "rb") as fh:
                        digest = hashlib.sha256(fh.read()).hexdigest()
                found[path] = (st.st_mode, st.st_uid, st.st_size, st.st_mtime_ns, digest)
    return found


def test_reap_dry_run_changes_no_file(cli_env: dict[str, str], tmp_path: Path) -> None:
    from envkit.locking import is_locked

    env = cli_env
    assert envkit(env, "up", "live", "--ttl", "4h").returncode == 0
    assert envkit(env, "up", "old", "--ttl", "2s").returncode == 0
    gone_home = tmp_path / "gone-home"
    other = {**env, "ENVKIT_HOME": str(gone_home)}
    try:
        assert envkit(other, "up", "elsewhere").returncode == 0
        shutil.rmtree(gone_home)  # a CI workspace wiped with its environment running
        layout = Layout.for_settings(settings_of(env))
        (layout.envs_root / "orphan-x").mkdir()
        locks = Path(env["ENVKIT_HOME"]) / "locks"
        (locks / "never-saved.lock").write_text("")
        pool = sorted(layout.templates.glob("*.spares"))[0]
        deadline = time.monotonic() + 60
        while is_locked(pool / ".refill.lock") and time.monotonic() < deadline:
            time.sleep(0.05)  # the pool's refill, started by the ups, finishes first
        (pool / ".tmp-0-0").mkdir()
        (layout.templates / ".build-pg-0000000000000000-999999").mkdir()
        time.sleep(2.2)  # 'old' expires
        before = listing(Path(env["ENVKIT_HOME"]), layout.data_root)

        done = envkit(env, "reap", "--dry-run", "--json")
        assert done.returncode == 0, done.stderr
        report = json.loads(done.stdout)
        would = {(e["kind"], e.get("pipeline_id")) for e in report["reaped"]}
        assert {("environment", "old"), ("leftover", "orphan-x"),
                ("orphaned-home", "elsewhere"), ("spare copy", None),
                ("template build", None)} <= would, report
        assert ("environment", "live") not in would
        assert listing(Path(env["ENVKIT_HOME"]), layout.data_root) == before

        real = json.loads(envkit(env, "reap", "--json").stdout)
        assert {(e["kind"], e.get("pipeline_id")) for e in real["reaped"]} >= would
    finally:
        tear_down_home(gone_home)


def cli_as(user: pwd.struct_passwd, argv: list[str], env: dict[str, str]) -> tuple[int, str]:
    """``envkit ARGV`` run in a forked child that dropped to ``user`` (this interpreter lives
    under root's home, which other users cannot execute); its exit code and output."""
    import tempfile

    from envkit.cli import main
    from envkit.cli.render import error_console

    # The child cannot read this interpreter's files (a venv under a private directory), so
    # every module the command imports lazily is loaded here first: the same command, run
    # once on a scratch home, and the error renderer.
    with tempfile.TemporaryDirectory() as scratch:
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update({k: os.path.join(scratch, k.lower()) for k in env})
        try:
            main(argv)
        except SystemExit:
            pass
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
    error_console().print("[bold red]Error:[/] (loading the renderer)", highlight=False)

    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 70
        try:
            os.close(read)
            os.dup2(write, 1)
            os.dup2(write, 2)
            sys.stdout = sys.stderr = open(write, "w", closefd=False)  # noqa: SIM115
            os.chdir("/")  # not the checkout: the child may not read its pyproject.toml
            os.setgroups([])
            os.setgid(user.pw_gid)
            os.setuid(user.pw_uid)
            os.environ.update(env)
            try:
                main(argv)
                code = 0
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 1
        except BaseException:
            import traceback

            traceback.print_exc()
        finally:
            sys.stdout.flush()
            os._exit(code)
    os.close(write)
    with os.fdopen(read, "rb") as fh:
        output = fh.read().decode(errors="replace")
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), output


def test_reap_on_a_home_that_cannot_be_read_is_an_error(
        intruder: pwd.struct_passwd, shared_tmp: Path, tmp_path: Path) -> None:
    home = shared_tmp / "root-only-home"
    (home / "envs").mkdir(parents=True, mode=0o700)
    os.chmod(home, 0o700)
    code, output = cli_as(intruder, ["reap", "--json"],
                          {"ENVKIT_HOME": str(home),
                           "ENVKIT_DATA_DIR": str(shared_tmp / "intruder-data")})
    assert code == 2, output
    assert f"ENVKIT_HOME {home}" in output and "cannot read" in output.lower(), output
    assert "reaped" not in output

    under_a_file = tmp_path / "a-file"
    under_a_file.write_text("")
    for bad in (under_a_file, under_a_file / "home"):
        done = subprocess.run([sys.executable, "-m", "envkit", "reap", "--json"],
                              capture_output=True, text=True, check=False,
                              env={**os.environ, "ENVKIT_HOME": str(bad)})
        assert done.returncode == 2, done.stdout + done.stderr
        assert "ENVKIT_HOME" in done.stderr and "Traceback" not in done.stderr


def test_a_pid_file_naming_one_of_roots_processes_is_not_a_postmaster(tmp_path: Path) -> None:
    """The server user writes postmaster.pid: a pid in it naming a root process whose command
    line mentions the data directory must not make root signal (or killpg) that process."""
    from envkit.providers.local.pgserver import postmaster_pid, stop_server

    datadir = tmp_path / "pgdata"
    datadir.mkdir()
    decoy = subprocess.Popen(["sh", "-c", "sleep 60; :", "decoy", str(datadir)],
                             start_new_session=True)
    try:
        (datadir / "postmaster.pid").write_text(f"{decoy.pid}\n{datadir}\n")
        assert postmaster_pid(datadir) is None
        assert stop_server(datadir, fast=False, timeout=1) is False
        assert decoy.poll() is None
    finally:
        os.killpg(decoy.pid, signal.SIGKILL)
        decoy.wait()
