"""Benchmark: ``envkit up`` → ready, as a user runs it, against the raw floors measured here.

Measured in one run, on this machine, medians of N runs each:

- ``envkit up`` as a CLI subprocess (``python -m envkit up ID --format json``) in a fresh
  ENVKIT_HOME and a fresh data directory: the first (cold: builds the template with initdb)
  and then N warm ones, each followed by an untimed ``envkit down``;
- the floor envkit must beat: ``initdb -N`` + ``pg_ctl start -w`` of an empty server on /dev/shm;
- anchors: ``pg_ctl start -w`` alone (existing data directory), and the raw floor: copy a
  pre-initialised data directory, start ``postgres -D`` directly, poll the pid file every 2 ms.

Target: envkit up ≤ 0.5 x (initdb + pg_ctl start). When run as root the servers run as the
unprivileged user envkit uses. Every server started here is
stopped and every directory removed, also on failure or Ctrl-C.

Writes bench/results-up.json; ``python bench/run.py`` runs this with every other benchmark.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from functools import partial
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from envkit.pgbin import find_install  # noqa: E402
from envkit.providers.local.osuser import RunAs, server_user  # noqa: E402

POLL = 0.002


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


class Bench:
    """Scratch space on /dev/shm owned by the server user, and every postmaster started in it."""

    def __init__(self, run_as: RunAs, bindir: Path) -> None:
        self.run_as = run_as
        self.bindir = bindir
        shm = Path("/dev/shm")
        base = shm if shm.is_dir() and os.access(shm, os.W_OK) else Path(tempfile.gettempdir())
        self.root = Path(tempfile.mkdtemp(prefix="envkit-bench-", dir=base))
        self.root.chmod(0o755)
        run_as.chown(self.root)
        self.sock = self.root / "sock"
        self.sock.mkdir(mode=0o700)
        run_as.chown(self.sock)
        self.datadirs: list[Path] = []
        self.children: dict[Path, subprocess.Popen[bytes]] = {}
        self.counter = 0

    def env(self) -> dict[str, str]:
        return {"PATH": f"{self.bindir}:/usr/bin:/bin", "LC_ALL": "C", "TZ": "UTC"}

    def run(self, argv: list[str]) -> None:
        subprocess.run(
            argv, check=True, capture_output=True, cwd=self.root, env=self.env(),
            **self.run_as.popen_kwargs(),
        )

    def fresh_dir(self) -> Path:
        self.counter += 1
        path = self.root / f"d{self.counter}"
        self.datadirs.append(path)
        return path

    def server_options(self) -> list[str]:
        return ["-k", str(self.sock), "-c", "listen_addresses=", "-c", "fsync=off"]

    def initdb(self, datadir: Path) -> None:
        self.run([str(self.bindir / "initdb"), "-N", "-A", "trust", "-U", "postgres",
                  "-E", "UTF8", "--locale=C", "-D", str(datadir)])

    def pg_ctl_start(self, datadir: Path) -> None:
        opts = " ".join(f"'{o}'" if not o.startswith("-") else o for o in self.server_options())
        self.run([str(self.bindir / "pg_ctl"), "start", "-w", "-s", "-D", str(datadir),
                  "-l", str(datadir / "log"), "-o", opts])

    def copy(self, source: Path, target: Path) -> None:
        self.run(["cp", "-a", str(source), str(target)])

    def postgres_direct(self, datadir: Path) -> subprocess.Popen[bytes]:
        """Start ``postgres -D`` and poll its pid file every 2 ms until it says ready."""
        proc = subprocess.Popen(
            [str(self.bindir / "postgres"), "-D", str(datadir), *self.server_options()],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=self.root, env=self.env(),
            start_new_session=True, **self.run_as.popen_kwargs(),
        )
        self.children[datadir] = proc
        pidfile = datadir / "postmaster.pid"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                lines = pidfile.read_text().splitlines()
            except (FileNotFoundError, PermissionError):
                lines = []
            if len(lines) >= 8 and lines[7].strip() == "ready":
                return proc
            if proc.poll() is not None:
                raise RuntimeError(f"postgres exited with {proc.returncode}")
            time.sleep(POLL)
        raise RuntimeError("postgres did not become ready in 30 s")

    def stop(self, datadir: Path) -> None:
        """Fast shutdown of the postmaster of ``datadir``, if one runs; wait until it is gone."""
        child = self.children.pop(datadir, None)
        if child is not None:  # our own child: signal and reap it (else it lingers as a zombie)
            child.send_signal(signal.SIGINT)
            try:
                child.wait(15)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
            return
        try:
            pid = int((datadir / "postmaster.pid").read_text().split()[0])
        except (FileNotFoundError, ValueError, IndexError):
            return
        try:
            os.kill(pid, signal.SIGINT)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.005)
        os.kill(pid, signal.SIGKILL)

    def remove(self, datadir: Path) -> None:
        self.stop(datadir)
        shutil.rmtree(datadir, ignore_errors=True)

    def close(self) -> None:
        for datadir in self.datadirs:
            self.stop(datadir)
        shutil.rmtree(self.root, ignore_errors=True)


def timed(action: Callable[[], Any]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def floors_once(bench: Bench, base: Path, out: dict[str, list[float]]) -> None:
    """One sample of each bare-PostgreSQL figure: initdb+pg_ctl, pg_ctl alone, copy+direct."""
    datadir = bench.fresh_dir()
    out["initdb_pg_ctl"].append(timed(lambda: (bench.initdb(datadir), bench.pg_ctl_start(datadir))))
    bench.remove(datadir)

    datadir = bench.fresh_dir()
    bench.copy(base, datadir)
    out["pg_ctl_start"].append(timed(lambda: bench.pg_ctl_start(datadir)))
    bench.remove(datadir)

    datadir = bench.fresh_dir()
    out["copy_direct"].append(
        timed(lambda: (bench.copy(base, datadir), bench.postgres_direct(datadir)))
    )
    bench.remove(datadir)


@contextmanager
def envkit_home() -> Iterator[dict[str, str]]:
    """A fresh ENVKIT_HOME and data directory; everything in them destroyed afterwards."""
    home = Path(tempfile.mkdtemp(prefix="envkit-bench-home-"))
    shm = Path("/dev/shm")
    # Short: envkit puts unix sockets under the data dir, and those paths max out at 107 bytes.
    data = Path(tempfile.mkdtemp(prefix="ekb-", dir=shm if shm.is_dir() else None))
    data.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ENVKIT_", "GITHUB_", "CI_"))}
    env.update(ENVKIT_HOME=str(home), ENVKIT_DATA_DIR=str(data))
    try:
        yield env
    finally:
        listed = subprocess.run(
            [sys.executable, "-m", "envkit", "list", "--json"], env=env, capture_output=True,
            text=True, check=False,
        )
        try:
            for record in json.loads(listed.stdout or "[]"):
                subprocess.run([sys.executable, "-m", "envkit", "down", record["pipeline_id"]],
                               env=env, capture_output=True, check=False)
        except json.JSONDecodeError:
            pass
        kill_under(data)
        kill_under(home)
        shutil.rmtree(data, ignore_errors=True)
        shutil.rmtree(home, ignore_errors=True)


def kill_under(folder: Path) -> None:
    """Kill any process whose command line names a path under ``folder`` (a leak sweep)."""
    prefix = str(folder) + os.sep
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            args = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(a.decode(errors="replace").startswith(prefix) for a in args):
            with suppress(ProcessLookupError, PermissionError):
                os.kill(int(entry), signal.SIGKILL)


def measure(bench: Bench, n: int, pause: float) -> dict[str, list[float]]:
    """Cold and warm ``envkit up`` → ready (CLI subprocess) and the ``down`` after each,
    interleaved with the bare-PostgreSQL floors so both see the same machine load."""
    out: dict[str, list[float]] = {
        "up_cold": [], "up": [], "down": [],
        "initdb_pg_ctl": [], "pg_ctl_start": [], "copy_direct": [],
    }
    base = bench.fresh_dir()
    bench.initdb(base)
    with envkit_home() as env:

        def cli(*args: str) -> None:
            done = subprocess.run([sys.executable, "-m", "envkit", *args], env=env, text=True,
                                  capture_output=True, cwd=tempfile.gettempdir(), check=False)
            if done.returncode != 0:
                raise RuntimeError(f"envkit {' '.join(args)} exited {done.returncode}:\n"
                                   f"{done.stderr.strip()}")

        for i in range(n + 1):
            pipeline = f"bench-{i}"
            took = timed(partial(cli, "up", pipeline, "--format", "json"))
            out["up_cold" if i == 0 else "up"].append(took)
            out["down"].append(timed(partial(cli, "down", pipeline)))
            time.sleep(pause)  # let the background spare-copy refill finish, as between CI jobs
            if i > 0:
                floors_once(bench, base, out)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=7, help="runs per figure (median reported)")
    parser.add_argument("--pause", type=float, default=0.5, help="seconds between envkit ups")
    parser.add_argument("--out", type=Path, default=HERE / "results-up.json")
    args = parser.parse_args()

    install = find_install(Path(os.environ["ENVKIT_PG_BINDIR"])
                           if os.environ.get("ENVKIT_PG_BINDIR") else None)
    run_as = server_user(None)
    bench = Bench(run_as, install.bindir)
    try:
        samples = measure(bench, args.n, args.pause)
    finally:
        bench.close()
    bare = ups = samples

    up = median(ups["up"])
    floor = median(bare["initdb_pg_ctl"])
    raw = median(bare["copy_direct"])
    rows = [
        {"what": "envkit up → ready (CLI, warm template)", "value": up, "unit": "s",
         "anchor": "initdb -N + pg_ctl start -w (tmpfs)", "anchor_value": floor},
        {"what": "envkit up → ready (CLI, cold: first up in a fresh home)",
         "value": median(ups["up_cold"]), "unit": "s",
         "anchor": "initdb -N + pg_ctl start -w (tmpfs)", "anchor_value": floor},
        {"what": "envkit down", "value": median(ups["down"]), "unit": "s",
         "anchor": "", "anchor_value": None},
        {"what": "pg_ctl start -w (existing data dir)", "value": median(bare["pg_ctl_start"]),
         "unit": "s", "anchor": "", "anchor_value": None},
        {"what": "raw floor: cp -a + postgres -D + 2 ms poll", "value": raw, "unit": "s",
         "anchor": "", "anchor_value": None},
    ]
    result = {
        "name": "up",
        "runs": args.n,
        "postgres": install.version(),
        "server_user": run_as.name,
        "rows": rows,
        "anchors": {"initdb_pg_ctl_start": floor, "single_up": up, "raw_copy_start": raw},
        "ratio_up_to_initdb_pg_ctl": up / floor,
        "target_ratio": 0.5,
        "meets_target": up / floor <= 0.5,
        "samples": samples,
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    for row in rows:
        anchor = f"  vs {row['anchor_value']:.3f} s ({row['anchor']})" if row["anchor"] else ""
        print(f"{row['what']:<58} {row['value']:.3f} s{anchor}")
    print(f"envkit up / (initdb + pg_ctl start) = {up / floor:.2f} "
          f"(target ≤ 0.50: {'met' if up / floor <= 0.5 else 'NOT met'}); "
          f"vs raw floor {up / raw:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
