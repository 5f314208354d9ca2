"""Seeding benchmark: one run, every figure next to its target and its anchor.

    python bench/bench_seed.py [--rows 400000] [--repeat 5]
    python bench/bench_seed.py --only masked     # one part; results-seed.json is left alone

Prints a table and writes bench/results-seed.json. Figures are medians; speed is judged by
ratios within this run (same machine, same moment), never by absolute timings in tests.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
ANCHORS = {
    "faker_per_row_rows_s": 3_100,
    "fresh_to_400k_indexed_s": 4.95,
    "copy_bare_then_index_rows_s": "245k-284k",
    "masking_in_postgres_rows_s": 117_000,
}


def run(cmd: list[str], env: dict[str, str]) -> tuple[float, str]:
    started = time.perf_counter()
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    took = time.perf_counter() - started
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({out.returncode}): {out.stderr[-2000:]}")
    return took, out.stdout


def bench_generation(rows: int) -> dict[str, float]:
    from envkit.seeding import datasets, generation
    from envkit.settings import Settings

    ds = datasets.load(Settings.resolve({"home": Path(tempfile.gettempdir())}), "default")
    scale = rows / sum(ds.rows().values())
    gen = generation.Generator(ds, scale)
    started = time.perf_counter()
    gen.pools  # noqa: B018
    pools = time.perf_counter() - started
    first_started = time.perf_counter()
    total = sum(generation.generate_all(gen).values())
    first = time.perf_counter() - first_started
    runs = []
    for _ in range(3):
        t = time.perf_counter()
        generation.generate_all(gen)
        runs.append(time.perf_counter() - t)
    return {
        "rows": total,
        "pools_s": pools,
        "generation_rows_s_cold": total / first,
        "generation_rows_s": total / statistics.median(runs),
    }


def bench_faker_per_row(n: int = 3000) -> float:
    """The baseline: one Faker call per field per row (en_US, weighted), as scripts do it."""
    from faker import Faker

    fake = Faker("en_US")
    fake.seed_instance(1)
    started = time.perf_counter()
    for _ in range(n):
        (
            fake.name(),
            fake.email(),
            fake.phone_number(),
            fake.address(),
            fake.date_of_birth(),
            fake.credit_card_number(),
        )
    return n / (time.perf_counter() - started)


FRESH = """
import sys, time
t0 = time.perf_counter()
from envkit import lifecycle
from envkit.plan import Plan
from envkit.seeding import datasets
from envkit.seeding.loading import load_dataset
from envkit.settings import Settings
s = Settings.resolve({})
r = lifecycle.up(Plan.build(sys.argv[1], s, seed=False))
ds = datasets.load(s, "default")
stats = load_dataset(r.outputs["DATABASE_URL"], ds, float(sys.argv[2]))
stats["wall_s"] = time.perf_counter() - t0
import json; print(json.dumps(stats))
"""


def bench_fresh_and_load(env: dict[str, str], rows: int) -> dict[str, float]:
    """A fresh process: up an empty environment, then generate + COPY + index ``rows`` rows."""
    scale = rows / 10_000
    walls, loads = [], []
    for i in range(3):
        pid = f"bench-fresh-{i}"
        started = time.perf_counter()
        _, out = run([sys.executable, "-c", FRESH, pid, str(scale)], env)
        walls.append(time.perf_counter() - started)
        stats = json.loads(out)
        loads.append(stats)
        run([sys.executable, "-m", "envkit", "down", pid], env)
    best = sorted(loads, key=lambda s: s["seconds"])[len(loads) // 2]
    return {
        "fresh_to_indexed_s": statistics.median(walls),
        "load_rows_s": best["rows"] / best["seconds"],
        "copy_phase_rows_s": best["rows"] / best["copy_seconds"],
        "load_copy_s": best["copy_seconds"],
        "load_index_s": best["index_seconds"],
        "load_analyze_s": best["analyze_seconds"],
    }


SOURCE_SCHEMA = """
CREATE TABLE customers (id bigint PRIMARY KEY, email text NOT NULL, full_name text NOT NULL,
    phone text NOT NULL, city text NOT NULL, card text NOT NULL, note text NOT NULL);
"""


def _server_cpu(url: str) -> tuple[int, float]:
    """The postmaster of ``url``'s (local) server and the CPU seconds it and its backends used so
    far, reaped backends included (their time lands in the postmaster's cutime/cstime)."""
    import psycopg

    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT pg_backend_pid()").fetchone()
        assert row is not None  # read while the backend lives: its parent is the postmaster
        postmaster = int(Path(f"/proc/{row[0]}/stat").read_text().rsplit(")", 1)[1].split()[1])
    return postmaster, _tree_cpu(postmaster)


def _tree_cpu(postmaster: int) -> float:
    """CPU seconds of ``postmaster`` (with its reaped children) and its live children."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        pid, ppid = int(entry), int(fields[1])
        if pid == postmaster:
            total += sum(int(f) for f in fields[11:15])  # utime stime cutime cstime
        elif ppid == postmaster:
            total += int(fields[11]) + int(fields[12])
    return total / tick


def bench_masked_copy(env: dict[str, str], rows: int, repeat: int = 3) -> dict[str, Any]:
    """Fill a source environment with real-looking rows, copy all of it masked to a target,
    ``repeat`` times (the target's tables are replaced each time); medians.

    The figure is end to end: source COPY out -> mask -> target COPY in, in one process that
    masks on one core, while the two servers' backends run their COPYs beside it. For per-core
    accounting the CPU time of all three during the copy phase is measured too (the servers'
    by sampling their process trees around the streaming of each table).
    """
    import psycopg

    from envkit import lifecycle
    from envkit.plan import Plan
    from envkit.seeding import subsetting
    from envkit.seeding.masking import luhn_check_digit
    from envkit.settings import Settings

    settings = Settings.resolve({"home": env["ENVKIT_HOME"]})
    src = lifecycle.up(Plan.build("bench-src", settings, seed=False)).outputs["DATABASE_URL"]
    dst = lifecycle.up(Plan.build("bench-dst", settings, seed=False)).outputs["DATABASE_URL"]
    stream = subsetting._stream
    try:
        with psycopg.connect(src) as conn:
            conn.execute(SOURCE_SCHEMA)
            with conn.cursor().copy("COPY customers FROM STDIN") as copy:
                for i in range(rows):
                    body = f"4929{i:011d}"
                    copy.write(
                        f"{i}\tperson{i}@gmail.com\tPat Person{i % 997}\t+1 415 {2000000 + i}\t"
                        f"City{i % 301}\t{body}{luhn_check_digit(body)}\tok\n"
                    )
        with psycopg.connect(src, autocommit=True) as conn:
            conn.execute("VACUUM ANALYZE customers")  # hint bits set: every run reads alike
        rules = Path(tempfile.mkdtemp()) / "rules.toml"
        rules.write_text(
            '[subset]\nroot = "customers"\nwhere = "true"\n[rules.customers]\n'
            'id = "keep"\nemail = "email"\nfull_name = "name"\nphone = "phone"\n'
            'city = "city"\ncard = "card"\nnote = "keep"\n'
        )
        (src_pm, _), (dst_pm, _) = _server_cpu(src), _server_cpu(dst)
        servers_in_copy = [0.0]

        def measured_stream(*args: Any, **kwargs: Any) -> int:
            before = _tree_cpu(src_pm) + _tree_cpu(dst_pm)
            try:
                return stream(*args, **kwargs)
            finally:
                servers_in_copy[0] += _tree_cpu(src_pm) + _tree_cpu(dst_pm) - before

        subsetting._stream = measured_stream  # measurement only: the work is unchanged
        runs = []
        for _ in range(repeat):
            servers_in_copy[0] = 0.0
            before = _tree_cpu(src_pm) + _tree_cpu(dst_pm)
            stats = subsetting.copy_subset(src, rules, dst, key=b"bench-key-0123456789abcdef")
            stats["servers_cpu_s"] = _tree_cpu(src_pm) + _tree_cpu(dst_pm) - before
            stats["servers_copy_cpu_s"] = servers_in_copy[0]
            runs.append(stats)
    finally:
        subsetting._stream = stream
        for pid in ("bench-src", "bench-dst"):
            lifecycle.down(Plan.build(pid, settings))
    best = sorted(runs, key=lambda s: s["rows_per_s"])[len(runs) // 2]
    all_cpu = best["copy_cpu_seconds"] + best["servers_copy_cpu_s"]
    return {
        "masked_rows": best["rows"],
        "masked_copy_rows_s": best["rows_per_s"],
        "masked_copy_runs_rows_s": [s["rows_per_s"] for s in runs],
        "masked_copy_s": best["copy_seconds"],
        "masked_copy_python_cpu_s": best["copy_cpu_seconds"],
        "masked_copy_servers_cpu_s": best["servers_copy_cpu_s"],
        "masked_rows_per_python_cpu_s": best["rows"] / best["copy_cpu_seconds"],
        "masked_rows_per_cpu_s_all_processes": best["rows"] / all_cpu,
        "masked_servers_cpu_s_whole_run": best["servers_cpu_s"],
        "masked_total_s": best["seconds"],
    }


def bench_up(env: dict[str, str], repeat: int) -> dict[str, float]:
    """`envkit up` (CLI, fresh process) with the default dataset vs ``--no-seed``."""
    envkit = [sys.executable, "-m", "envkit"]
    # Warm: build the seeded template and let spare copies of both templates be made.
    for flag, pid in (([], "bench-warm-a"), (["--no-seed"], "bench-warm-b")):
        run([*envkit, "up", pid, "--format", "json", *flag], env)
        run([*envkit, "down", pid], env)
    time.sleep(1.0)
    seeded, empty = [], []
    for i in range(repeat):
        for flag, into in (([], seeded), (["--no-seed"], empty)):
            pid = f"bench-up-{len(flag)}-{i}"
            took, _ = run([*envkit, "up", pid, "--format", "json", *flag], env)
            into.append(took)
            run([*envkit, "down", pid], env)
            time.sleep(0.3)  # let the spare refill finish, as between real CI jobs
    s, e = statistics.median(seeded), statistics.median(empty)
    return {"up_seeded_s": s, "up_empty_s": e, "up_ratio": s / e}


PARTS = ("generation", "load", "masked", "up")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=400_000)
    parser.add_argument("--masked-rows", type=int, default=200_000)
    parser.add_argument("--masked-repeat", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument(
        "--only", nargs="+", choices=PARTS, default=list(PARTS),
        help="run only these parts (then bench/results-seed.json is left as it is)",
    )  # fmt: skip
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="envkit-bench-seed-"))
    env = {**os.environ, "ENVKIT_HOME": str(home)}
    for name in ("ENVKIT_DATASET", "ENVKIT_SEED_SCALE", "ENVKIT_SEEDS_DIR"):
        env.pop(name, None)
    os.environ["ENVKIT_HOME"] = str(home)
    results: dict[str, Any] = {"anchors": ANCHORS}
    try:
        if "generation" in args.only:
            results.update(bench_generation(args.rows))
            results["faker_per_row_rows_s"] = bench_faker_per_row()
            results["faker_per_row_projected_400k_s"] = 400_000 / results["faker_per_row_rows_s"]
        if "load" in args.only:
            results.update(bench_fresh_and_load(env, args.rows))
        if "masked" in args.only:
            results.update(bench_masked_copy(env, args.masked_rows, args.masked_repeat))
        if "up" in args.only:
            results.update(bench_up(env, args.repeat))
    finally:
        subprocess.run(
            [sys.executable, "-c", "import sys; sys.path.insert(0, 'tests'); "
             "from conftest import tear_down_home; from pathlib import Path; "
             f"tear_down_home(Path({str(home)!r}))"],
            cwd=ROOT, env=env, check=False,
        )  # fmt: skip
        shutil.rmtree(home, ignore_errors=True)
    rows = [
        ("generation rows/s (warm pools)", "generation_rows_s", "≥ 300k"),
        ("generation rows/s (cold, 1st pass)", "generation_rows_s_cold", ""),
        ("Faker pools built (s)", "pools_s", ""),
        ("Faker per row rows/s (baseline)", "faker_per_row_rows_s", "anchor 3.1k"),
        ("load rows/s (gen+COPY+keys+index)", "load_rows_s", "≥ 250k"),
        ("  COPY phase rows/s", "copy_phase_rows_s", "anchor 245-284k"),
        ("fresh → 400k indexed DB (s)", "fresh_to_indexed_s", "≤ 3 (anchor 4.95)"),
        ("  Faker-per-row projected (s)", "faker_per_row_projected_400k_s", ""),
        ("masked copy rows/s (real DB)", "masked_copy_rows_s", "≥ 100k/core (anchor in-PG 117k)"),
        ("  rows per CPU s, masking process", "masked_rows_per_python_cpu_s", "1 process"),
        ("  rows per CPU s, + both backends", "masked_rows_per_cpu_s_all_processes", ""),
        ("  whole seed incl. leak check (s)", "masked_total_s", ""),
        ("envkit up, default dataset (s)", "up_seeded_s", ""),
        ("envkit up, --no-seed (s)", "up_empty_s", ""),
        ("ratio seeded / empty", "up_ratio", "≤ 1.2"),
    ]
    print(f"{'figure':<40} {'value':>14}  target / anchor")
    for label, name, target in rows:
        if name not in results:
            continue
        value = results[name]
        shown = f"{value:,.0f}" if value >= 1000 else f"{value:.3f}"
        print(f"{label:<40} {shown:>14}  {target}")
    if set(args.only) == set(PARTS):
        out = ROOT / "bench" / "results-seed.json"
        out.write_text(json.dumps(results, indent=2, default=str))
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
