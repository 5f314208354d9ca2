"""Run every benchmark of the project and print one table, each figure next to its anchor.

    python bench/run.py                 # all of bench/bench_*.py, then the table
    python bench/run.py --only up seed  # some of them
    python bench/run.py --from-results  # re-render the table from the last results-*.json

Each ``bench/bench_<name>.py`` is run as its own process (a crash or leak in one cannot skew
another) and writes ``bench/results-<name>.json``. ``bench_up`` runs first: it measures two of the
anchors every other figure is compared with, in this same run:

- **bare initdb + start**: ``initdb -N`` + ``pg_ctl start -w`` of an empty server on /dev/shm;
- **single up**: the median ``envkit up`` → ready as a CLI subprocess;
- **Faker per row**: Faker en_US name + email + phone + address + birthdate + card, one row at
  a time, measured here directly.

A results file may hold ``"rows"``: ``[{"what", "value", "unit", "anchor", "anchor_value"}]``
(used as they are); otherwise its numeric fields are listed (``median`` of nested statistics),
rates (``*_rows_s``) against Faker per row, durations (``*_s``, ``*_ms``) against the file's own
``"anchors"`` figure of the same name when there is one, else against a single up.

Run it with the interpreter envkit is installed in, ideally the project's own venv
(``.venv/bin/python bench/run.py``, what ``.ci/run`` builds): every CLI figure includes that
interpreter's start-up, and an interpreter whose site-packages carries other tools' ``.pth``
hooks pays them in every process (this machine's pyenv Python imports certifi at every start
for its sandbox: ~50 ms for ``python -c pass`` against ~20 ms in the venv). The table shows
``python -c pass`` for the interpreter used, measured in the same run.

Writes bench/results.json (the table, the anchors and every benchmark's raw results) and exits
non-zero when a benchmark failed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
FIRST = "up"
SKIP_KEYS = {"samples", "machine", "runs", "repeat", "rows_requested", "name", "anchors",
             "delay_s"}


def discover() -> list[str]:
    """Names of every ``bench_<name>.py``, ``up`` first."""
    names = sorted(p.stem.removeprefix("bench_") for p in HERE.glob("bench_*.py"))
    return sorted(names, key=lambda n: n != FIRST)


def faker_per_row(rows: int = 2000, repeat: int = 3) -> float:
    """Rows per second of Faker en_US generating a 6-field person row, one row at a time."""
    from faker import Faker

    fake = Faker("en_US")
    rates = []
    for attempt in range(repeat):
        fake.seed_instance(attempt)
        started = time.perf_counter()
        for _ in range(rows):
            (fake.name(), fake.email(), fake.phone_number(), fake.address(),
             fake.date_of_birth(), fake.credit_card_number())
        rates.append(rows / (time.perf_counter() - started))
    return statistics.median(rates)


def interpreter_start(repeat: int = 7) -> float:
    """Median seconds of ``python -c pass`` with the interpreter running the benchmarks."""
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], check=True)
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


def run_bench(name: str, timeout: float, env: dict[str, str]) -> tuple[bool, float, str]:
    """Run one benchmark script; (succeeded, seconds, last lines of its output)."""
    script = HERE / f"bench_{name}.py"
    started = time.perf_counter()
    try:
        done = subprocess.run([sys.executable, str(script)], cwd=HERE.parent, env=env, text=True,
                              capture_output=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return False, time.perf_counter() - started, f"timed out after {timeout:.0f} s"
    tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-12:])
    return done.returncode == 0, time.perf_counter() - started, tail


def unit_of(key: str) -> tuple[str, float] | None:
    """(unit, factor to that unit) from a key's suffix, or None when it is not a figure."""
    if key.endswith("rows_s") or "rows_per_" in key:  # rows per (CPU) second
        return "rows/s", 1.0
    if key.endswith("_ms"):
        return "s", 0.001
    if key.endswith("_s"):
        return "s", 1.0
    return None


def flatten(data: Any, prefix: str = "") -> list[tuple[str, float]]:
    """Numeric leaves as (dotted key, value); a statistics dict contributes its median."""
    found: list[tuple[str, float]] = []
    if isinstance(data, dict):
        if "median" in data and isinstance(data["median"], int | float):
            return [(prefix, float(data["median"]))]
        for key, value in data.items():
            if key in SKIP_KEYS:
                continue
            found += flatten(value, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(data, int | float) and not isinstance(data, bool):
        found.append((prefix, float(data)))
    return found


def table_rows(
    name: str, result: dict[str, Any], anchors: dict[str, float]
) -> list[dict[str, Any]]:
    """The rows one benchmark contributes to the table."""
    if isinstance(result.get("rows"), list):
        return [{"bench": name, **row} for row in result["rows"]]
    own = {k: v for k, v in flatten(result.get("anchors", {}))}
    rows = []
    for key, value in flatten(result):
        leaf = key.split(".")[-1]
        unit = unit_of(leaf) or unit_of(key.split(".")[-2] if "." in key else "")
        if unit is None:
            continue
        label, factor = unit
        row: dict[str, Any] = {"bench": name, "what": key, "value": value * factor, "unit": label,
                               "anchor": "", "anchor_value": None}
        if label == "rows/s" and "faker_per_row" in anchors:
            row.update(anchor="Faker per row (this run)", anchor_value=anchors["faker_per_row"])
        elif leaf in own:
            row.update(anchor=f"{leaf} ({name}'s own anchor)", anchor_value=own[leaf] * factor)
        elif label == "s" and "single_up" in anchors:
            row.update(anchor="single envkit up (this run)", anchor_value=anchors["single_up"])
        rows.append(row)
    return rows


def fmt(value: float | None, unit: str) -> str:
    if value is None:
        return ""
    if unit == "rows/s":
        return f"{value:,.0f} rows/s"
    return f"{value:.3f} s" if unit == "s" else f"{value:g} {unit}"


def render(rows: list[dict[str, Any]]) -> str:
    """The markdown table."""
    lines = ["| benchmark | figure | value | anchor (same run) | anchor value | ratio |",
             "| --- | --- | ---: | --- | ---: | ---: |"]
    for row in rows:
        value, anchor_value = row["value"], row.get("anchor_value")
        ratio = f"{value / anchor_value:.2f}" if anchor_value else ""
        lines.append(f"| {row['bench']} | {row['what']} | {fmt(value, row['unit'])} | "
                     f"{row.get('anchor', '')} | {fmt(anchor_value, row['unit'])} | {ratio} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", help="benchmark names (bench_<name>.py) to run")
    parser.add_argument("--timeout", type=float, default=1200, help="seconds per benchmark")
    parser.add_argument("--from-results", action="store_true",
                        help="do not run anything; rebuild the table from results-*.json")
    args = parser.parse_args()

    names = [n for n in discover() if not args.only or n in args.only]
    started = time.time()
    status: dict[str, dict[str, Any]] = {}
    anchors: dict[str, float] = {}
    env = dict(os.environ)
    # Measure envkit as installed: pip writes .pyc files at install time. Without them (a fresh
    # checkout on a machine with PYTHONDONTWRITEBYTECODE=1, like ours) every CLI process
    # compiles envkit from source, ~45 ms that no user pays.
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    if not args.from_results:
        import compileall

        compileall.compile_dir(str(HERE.parent / "envkit"), quiet=1)
        compileall.compile_dir(str(HERE.parent / "stacks"), quiet=1)
    if not args.from_results:
        anchors["python_start"] = interpreter_start()
    for name in names:
        if args.from_results:
            break
        print(f"== bench_{name}.py …", file=sys.stderr, flush=True)
        ok, took, tail = run_bench(name, args.timeout, env)
        status[name] = {"ok": ok, "seconds": round(took, 1)}
        print(f"   {'ok' if ok else 'FAILED'} in {took:.1f} s", file=sys.stderr, flush=True)
        if not ok:
            status[name]["error"] = tail
            print(tail, file=sys.stderr)
        if name == FIRST:
            print("== Faker per row anchor …", file=sys.stderr, flush=True)
            anchors["faker_per_row"] = faker_per_row()
            env["ENVKIT_BENCH_ANCHORS"] = json.dumps(anchors)

    previous = HERE / "results.json"
    if args.from_results and previous.is_file():
        anchors.update(json.loads(previous.read_text()).get("anchors", {}))
    results: dict[str, Any] = {}
    for name in names:
        path = HERE / f"results-{name}.json"
        # A benchmark that exits non-zero because it missed its target still wrote its figures.
        fresh = path.is_file() and path.stat().st_mtime >= started
        if path.is_file() and (args.from_results or fresh):
            results[name] = json.loads(path.read_text())
    if FIRST in results:
        anchors.update({k: v for k, v in results[FIRST].get("anchors", {}).items()
                        if k in ("initdb_pg_ctl_start", "single_up")})
    if "faker_per_row" not in anchors and not args.only:
        anchors["faker_per_row"] = faker_per_row()

    rows = [
        {"bench": "anchor", "what": "bare initdb -N + pg_ctl start -w (tmpfs)",
         "value": anchors.get("initdb_pg_ctl_start"), "unit": "s"},
        {"bench": "anchor", "what": "single envkit up → ready (CLI)",
         "value": anchors.get("single_up"), "unit": "s"},
        {"bench": "anchor", "what": "Faker per row, en_US, 6 fields",
         "value": anchors.get("faker_per_row"), "unit": "rows/s"},
        {"bench": "anchor", "what": "python -c pass (this interpreter)",
         "value": anchors.get("python_start"), "unit": "s"},
    ]
    rows = [r for r in rows if r["value"] is not None]
    for name, result in results.items():
        rows += table_rows(name, result, anchors)

    table = render(rows)
    print(table)
    summary = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"python": platform.python_version(), "executable": sys.executable,
                    "cpus": os.cpu_count(), "load_avg": os.getloadavg()},
        "anchors": anchors,
        "status": status,
        "table": rows,
        "results": results,
    }
    (HERE / "results.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    print(json.dumps({"anchors": anchors, "status": status}, indent=2))
    return 0 if all(s["ok"] for s in status.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
