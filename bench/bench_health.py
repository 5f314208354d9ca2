"""Detection lag of envkit's PostgreSQL health probe: how long after a server is ready does
``wait_until_healthy`` notice?

For each run: stop the environment's server, start it again from a background thread after a
delay, and wait for it with ``wait_until_healthy([PostgresProbe])``. The reference moments come
from an independent watcher *process* woken by inotify (it takes no CPU from the probe while
it waits, unlike a polling watcher): when ``postmaster.pid`` first says ``ready`` (connections
succeed from then on: "ready to accept connections") and when it first names a listen address
(earlier: the port accepts TCP connections and the server answers "starting up").
CLOCK_MONOTONIC is system-wide, so the two processes' timestamps compare directly.

The same restarts are also waited for by the floor: a bare psycopg connect loop, 0.5 ms apart,
with none of envkit's machinery. The lag after ``ready`` is mostly the server's: start-up deletes
the relcache init files, so the first connection rebuilds them while the postmaster launches
its background workers; a connection after that one costs about half as much.

Run: ``python bench/bench_health.py [--runs 10] [--delay 0.3]``. Prints medians for the wire
(envkit's own client) and psycopg paths and the floor next to re-measured anchors; writes
bench/results-health.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from envkit import lifecycle
from envkit.health import wait_until_healthy
from envkit.health.postgres import PostgresProbe
from envkit.pgbin import PgInstall
from envkit.plan import Plan
from envkit.providers.local.layout import Layout
from envkit.providers.local.pgserver import PgServer, stop_server
from envkit.providers.local.provider import LocalProvider
from envkit.settings import Settings
from envkit.state import Record

RESULTS = Path(__file__).with_name("results-health.json")

WATCHER = r"""
import ctypes, json, os, struct, sys, time
folder, name = sys.argv[1], "postmaster.pid"
libc = ctypes.CDLL(None, use_errno=True)
fd = libc.inotify_init1(os.O_CLOEXEC)
IN_MODIFY, IN_CLOSE_WRITE, IN_CREATE, IN_MOVED_TO = 0x2, 0x8, 0x100, 0x80
if fd < 0 or libc.inotify_add_watch(
    fd, folder.encode(), IN_MODIFY | IN_CLOSE_WRITE | IN_CREATE | IN_MOVED_TO
) < 0:
    sys.exit("inotify: " + os.strerror(ctypes.get_errno()))
moments = {"listening": None, "ready": None}
print("go", flush=True)
while moments["ready"] is None:
    data = os.read(fd, 65536)  # blocks: no CPU spent while nothing happens
    now = time.monotonic()
    if name.encode() not in data:
        continue
    try:
        lines = open(os.path.join(folder, name)).read().split("\n")
    except OSError:
        continue
    if moments["listening"] is None and len(lines) > 5 and lines[5].strip():
        moments["listening"] = now
    if len(lines) > 7 and lines[7].strip() == "ready":
        moments["ready"] = now
print(json.dumps(moments), flush=True)
"""
"""Records, from inotify events on the data directory (no polling, so no CPU taken from the
probe), when ``postmaster.pid`` first names a listen address (the port accepts TCP connections,
answering "starting up") and when it first says ``ready`` (connections succeed from then on)."""


def server_for(settings: Settings, record: Record) -> PgServer:
    """A PgServer for the environment's data directory, as the local provider starts it."""
    return LocalProvider(settings).server_of(record)


def one_run(server: PgServer, wait: Callable[[], int], delay: float) -> dict[str, float]:
    """Stop, restart after ``delay`` in a thread, ``wait()`` (it returns its attempts); lags in
    ms."""
    stop_server(server.datadir, fast=True)
    watcher = subprocess.Popen(
        [
            sys.executable,
            "-c",
            WATCHER,
            str(server.datadir),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert watcher.stdout is not None
        watcher.stdout.readline()  # "go": it is watching

        def start() -> None:
            time.sleep(delay)
            server.start()

        starter = threading.Thread(target=start, daemon=True)
        started = time.monotonic()
        starter.start()
        attempts = wait()
        detected = time.monotonic()
        starter.join(30)
        moments = json.loads(watcher.stdout.readline())
    finally:
        if watcher.poll() is None:
            watcher.kill()
        watcher.wait()
    return {
        "lag_after_ready_ms": (detected - moments["ready"]) * 1000,
        "lag_after_listening_ms": (detected - moments["listening"]) * 1000,
        "ready_after_spawn_ms": (moments["ready"] - started - delay) * 1000,
        "attempts": float(attempts),
    }


def envkit_wait(probe: PostgresProbe) -> Callable[[], int]:
    def wait() -> int:
        return wait_until_healthy([probe], timeout=30).results[0].attempts

    return wait


def connect_loop(url: str) -> Callable[[], int]:
    """The floor any poller can reach: psycopg connect + SELECT 1 in a tight loop (0.5 ms
    apart), no backoff, no pid file, no probe machinery."""
    import psycopg

    def wait() -> int:
        attempts = 0
        deadline = time.monotonic() + 30
        while True:
            attempts += 1
            try:
                with psycopg.connect(url, autocommit=True, connect_timeout=2) as conn:
                    conn.execute("SELECT 1")
                return attempts
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.0005)

    return wait


def summarise(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "median": round(statistics.median(ordered), 2),
        "p90": round(ordered[max(0, round(0.9 * len(ordered)) - 1)], 2),
        "min": round(ordered[0], 2),
        "max": round(ordered[-1], 2),
    }


def anchors(record: Record, runs: int) -> dict[str, float]:
    """Re-measured raw costs of one healthy check, per path (ms, medians); ``psql`` spawned
    per check is what envkit's wire client replaced."""
    import psycopg

    url = record.outputs["DATABASE_URL"]
    psql = PgInstall(Path(record.resources["bindir"])).binary("psql")
    out = record.outputs
    psql_argv = [str(psql), "-X", "-q", "-A", "-t", "-h", out["DATABASE_HOST"], "-p",
                 out["DATABASE_PORT"], "-U", out["DATABASE_USER"], "-d", out["DATABASE_NAME"],
                 "-c", "SELECT 1"]
    psql_env = {"PATH": os.environ.get("PATH", ""), "PGPASSWORD": out["DATABASE_PASSWORD"]}

    def timed(fn: Any) -> float:
        samples = []
        for _ in range(runs):
            t = time.perf_counter()
            fn()
            samples.append((time.perf_counter() - t) * 1000)
        return round(statistics.median(samples), 2)

    def with_psycopg() -> None:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("SELECT 1")

    return {
        "psycopg_connect_select1_ms": timed(with_psycopg),
        "psql_spawn_select1_ms": timed(
            lambda: subprocess.run(psql_argv, env=psql_env, capture_output=True, check=True)
        ),
        "probe_psycopg_healthy_ms": timed(PostgresProbe(url, client="psycopg").check),
        "probe_wire_healthy_ms": timed(PostgresProbe(url, client="wire").check),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--delay", type=float, default=0.3, help="seconds before the start")
    args = parser.parse_args()

    import psycopg  # noqa: F401  (imported up front: its ~0.14 s import is not detection lag)
    import tenacity  # noqa: F401

    home = Path(tempfile.mkdtemp(prefix="envkit-bench-health-"))
    settings = Settings.resolve({"home": home})
    ctx = Plan.build("bench-health", settings, seed=False)
    try:
        record = lifecycle.up(ctx)
        server = server_for(settings, record)
        results: dict[str, Any] = {
            "machine": {
                "python": platform.python_version(),
                "cpus": _cpus(),
                "loadavg_before": [round(x, 2) for x in os.getloadavg()],
            },
            "runs": args.runs,
            "delay_s": args.delay,
            "anchors": anchors(record, 20),
            "paths": {},
        }
        # The probe the local provider declares (it reads the server's postmaster.pid), on
        # each client path, and the floor: a bare connect loop. Interleaved run by run, so
        # machine noise hits every path alike.
        declared = LocalProvider(settings).probes(record)[0]
        assert isinstance(declared, PostgresProbe)
        waits = {
            "wire": envkit_wait(replace(declared, client="wire")),
            "psycopg": envkit_wait(replace(declared, client="psycopg")),
            "floor": connect_loop(record.outputs["DATABASE_URL"]),
        }
        samples: dict[str, list[dict[str, float]]] = {name: [] for name in waits}
        for _ in range(args.runs):
            for name, wait in waits.items():
                samples[name].append(one_run(server, wait, args.delay))
        for name, runs in samples.items():
            results["paths"][name] = {key: summarise([s[key] for s in runs]) for key in runs[0]}
        floor = results["paths"]["floor"]["lag_after_ready_ms"]["median"]
        for name in ("wire", "psycopg"):
            # What envkit's probe adds on top of the floor (same run, same restarts).
            results["paths"][name]["over_floor_ms"] = round(
                results["paths"][name]["lag_after_ready_ms"]["median"] - floor, 2
            )
        results["machine"]["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
        results["rows"] = [
            {
                "what": f"detection lag after ready, {name} probe",
                "value": round(results["paths"][name]["lag_after_ready_ms"]["median"] / 1000, 4),
                "unit": "s",
                "anchor": "floor: bare psycopg connect loop, same restarts",
                "anchor_value": round(floor / 1000, 4),
            }
            for name in ("wire", "psycopg")
        ]
        RESULTS.write_text(json.dumps(results, indent=2) + "\n")
        report(results)
    finally:
        try:
            lifecycle.down(ctx)
        finally:
            # The home's directory under the shared data root (its .home marker) goes with it.
            shutil.rmtree(Layout.for_settings(settings).envs_root, ignore_errors=True)
            shutil.rmtree(home, ignore_errors=True)


def _cpus() -> int:
    return len(os.sched_getaffinity(0))


def report(results: dict[str, Any]) -> None:
    print(
        f"Health-check detection lag ({results['runs']} runs, server started after "
        f"{results['delay_s']}s; medians, ms)"
    )
    print(
        f"{'path':<9} {'after ready':>12} {'p90':>7} {'after listening':>17} "
        f"{'ready after spawn':>18} {'attempts':>9}"
    )
    for client, data in results["paths"].items():
        print(
            f"{client:<9} {data['lag_after_ready_ms']['median']:>12.2f} "
            f"{data['lag_after_ready_ms']['p90']:>7.2f} "
            f"{data['lag_after_listening_ms']['median']:>17.2f} "
            f"{data['ready_after_spawn_ms']['median']:>18.2f} "
            f"{data['attempts']['median']:>9.0f}"
            + (f"   (+{data['over_floor_ms']:.2f} over floor)" if "over_floor_ms" in data else "")
        )
    print(
        f"load average before/after: {results['machine']['loadavg_before']} / "
        f"{results['machine']['loadavg_after']} on {results['machine']['cpus']} CPUs"
    )
    print("Anchors re-measured here (one healthy check, median ms):")
    for key, value in results["anchors"].items():
        print(f"  {key:<28} {value:>7.2f}")
    print(
        "ANCHORS.md: psycopg connect + SELECT 1 ~2 ms; pid-file poll every 2 ms (envkit's own "
        "start); pg_ctl -w polls every 100 ms (~70 ms lost)."
    )
    print(f"Written: {RESULTS}")


if __name__ == "__main__":
    main()
