"""A seeded database on a shared server (issue 17) against a dedicated local server and the bare
floor, medians from one run:

- **shared CLI**: ``envkit up ID --database-server DSN`` → ready (CLI subprocess, seeded with
  the default dataset, its template already on the server);
- **local CLI**: ``envkit up ID`` → ready, a dedicated server from the warm seeded template;
- **shared in-process**: ``envkit.environment(ID, settings=…database_server…)`` enter;
- **floor**: ``CREATE ROLE`` + ``CREATE DATABASE … TEMPLATE`` of the same template through one
  ``psql`` process.

Targets: shared CLI <= 0.75 x local CLI; in-process <= 2 x floor. The server's spare pools
(ENVKIT_SPARES, default 2) are refilled in the background after each shared up; every timed
step waits for those refills first, so none of them runs during another's measurement. The
server is the tests' one (tests/shared_pg.py: PostgreSQL 15 as the envkit OS user, /dev/shm,
SCRAM over TCP, an admin with CREATEDB CREATEROLE, not superuser).
Run: ``python bench/bench_shared_server.py [--runs 9]``; writes bench/results-shared_server.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
sys.path.insert(0, str(HERE))

from bench_up import envkit_home  # noqa: E402
from shared_pg import ADMIN, bindirs, shared_server, wait_for_refills  # noqa: E402

RESULTS = HERE / "results-shared_server.json"


def timed_cli(env: dict[str, str], *args: str) -> float:
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "envkit", *args], env=env, text=True,
                          capture_output=True, cwd=tempfile.gettempdir(), check=False)
    took = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"envkit {' '.join(args[:2])} exited {done.returncode}: {done.stderr}")
    return took


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=9)
    parser.add_argument("--version", default="15")
    args = parser.parse_args()
    import compileall

    compileall.compile_dir(str(HERE.parent / "envkit"), quiet=1)  # as installed: with bytecode
    from envkit.settings import Settings

    out: dict[str, list[float]] = {"shared_cli": [], "local_cli": [], "in_process": [],
                                   "floor": [], "cli_start": []}
    with shared_server(bindirs()[args.version]) as server, envkit_home() as env:
        shared_env = dict(env, PGPASSWORD=server.password)
        ref = server.reference
        # Warm both templates (the server's and the local one) and the local spare pool.
        timed_cli(shared_env, "up", "warm-s", "--database-server", ref)
        timed_cli(env, "up", "warm-l")
        template = server.psql("SELECT datname FROM pg_database WHERE datistemplate "
                               "AND datname LIKE 'envkit-%'")
        settings = Settings.resolve({"database_server": server.dsn}, env=env)
        import envkit

        psql = [str(server.bindir / "psql"), "-XAtq", "-v", "ON_ERROR_STOP=1",
                "-h", "127.0.0.1", "-p", str(server.port), "-U", ADMIN, "-d", "postgres"]
        for i in range(args.runs):
            wait_for_refills(server)
            out["cli_start"].append(timed_cli(env, "--version"))  # what every CLI call costs
            out["shared_cli"].append(timed_cli(
                shared_env, "up", f"s-{i}", "--database-server", ref, "--format", "json"))
            timed_cli(shared_env, "down", f"s-{i}")
            wait_for_refills(server)
            out["local_cli"].append(timed_cli(env, "up", f"l-{i}", "--format", "json"))
            timed_cli(env, "down", f"l-{i}")
            time.sleep(0.3)  # the spare pool refills in the background, as between CI jobs
            wait_for_refills(server)
            context = envkit.environment(f"p-{i}", settings=settings)
            started = time.perf_counter()
            context.__enter__()
            out["in_process"].append(time.perf_counter() - started)
            context.__exit__(None, None, None)
            wait_for_refills(server)
            started = time.perf_counter()
            subprocess.run([*psql, "-c", f"CREATE ROLE floor_{i} LOGIN PASSWORD 'x{i}'",
                            "-c", f'CREATE DATABASE floor_{i} '
                            f'TEMPLATE "{template}"'],
                           env=dict(os.environ, PGPASSWORD=server.password), check=True)
            out["floor"].append(time.perf_counter() - started)
            server.psql(f"DROP DATABASE floor_{i}")
            server.psql(f"DROP ROLE floor_{i}")
        for name in ("warm-s", "warm-l"):
            timed_cli(shared_env, "down", name)
    med = {k: statistics.median(v) for k, v in out.items()}
    rows = [
        {"what": "seeded up --database-server (CLI)", "value": med["shared_cli"], "unit": "s",
         "anchor": "seeded local up (CLI), target ratio <= 0.75", "anchor_value": med["local_cli"]},
        {"what": "seeded local up (CLI)", "value": med["local_cli"], "unit": "s"},
        {"what": "shared-server up in-process (environment())", "value": med["in_process"],
         "unit": "s", "anchor": "floor: CREATE ROLE + CREATE DATABASE TEMPLATE, one psql; "
         "target ratio <= 2", "anchor_value": med["floor"]},
        {"what": "floor: CREATE ROLE + CREATE DATABASE TEMPLATE (one psql)", "value": med["floor"],
         "unit": "s"},
        {"what": "envkit --version (interpreter + CLI start, in both CLI ups)",
         "value": med["cli_start"], "unit": "s"},
    ]
    result = {"machine": platform.node(), "cpus": os.cpu_count(), "runs": args.runs,
              "postgres": args.version, "medians": med, "raw": out, "rows": rows,
              "ratios": {"shared_cli/local_cli": med["shared_cli"] / med["local_cli"],
                         "in_process/floor": med["in_process"] / med["floor"],
                         "above CLI start: shared/local": (med["shared_cli"] - med["cli_start"])
                         / (med["local_cli"] - med["cli_start"])}}
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    for row in rows:
        print(f"{row['what']:<60} {row['value'] * 1000:8.1f} ms")
    for name, ratio in result["ratios"].items():
        print(f"{name:<60} {ratio:8.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
