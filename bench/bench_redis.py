"""Benchmark: what Redis (issue 19) adds to ``envkit up``, measured in one run.

- sequential: N pairs of ``envkit up ID --no-seed --format json`` as CLI subprocesses, one
  without and one with ``--redis`` (alternating, so drift hits both alike), each followed by an
  untimed ``envkit down`` and each started from rest (``bench_lifecycle.settle``); the median
  wall time of each, their difference, and the same for the ``total`` timing envkit records
  (provision + health, without interpreter start-up);
- parallel: 8 ups at once without Redis and 8 with (order alternating per round, each burst
  from rest), wall time until the last is ready, median over R rounds.

Target: median extra <= 20 ms. A fresh ENVKIT_HOME and data directory (on /dev/shm when it
can) are used and removed, with every environment destroyed, also on failure.

Writes bench/results-redis.json (git-ignored; the figures are copied to docs/benchmarks.md).
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
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from bench_lifecycle import settle  # noqa: E402


def envkit(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "envkit", *args], capture_output=True,
                          text=True, timeout=300, check=False, env=env)


def timed_up(env: dict[str, str], pipeline_id: str, redis: bool) -> tuple[float, float]:
    """(wall seconds, envkit's recorded total) of one up."""
    started = time.perf_counter()
    done = envkit(env, "up", pipeline_id, "--no-seed", "--format", "json",
                  *(["--redis"] if redis else []))
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"up {pipeline_id} failed: {done.stderr}")
    return wall, float(json.loads(done.stdout)["timings"]["total"])


def down(env: dict[str, str], *ids: str) -> None:
    for pipeline_id in ids:
        envkit(env, "down", pipeline_id)


def parallel(env: dict[str, str], ids: list[str], redis: bool) -> float:
    started = time.perf_counter()
    with ThreadPoolExecutor(len(ids)) as pool:
        list(pool.map(lambda i: timed_up(env, i, redis), ids))
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-n", type=int, default=15, help="sequential pairs")
    parser.add_argument("-r", type=int, default=3, help="parallel rounds")
    args = parser.parse_args()
    shm = Path("/dev/shm")
    base = shm if shm.is_dir() and os.access(shm, os.W_OK) else Path(tempfile.gettempdir())
    scratch = Path(tempfile.mkdtemp(prefix="envkit-bench-redis-"))
    data = Path(tempfile.mkdtemp(prefix="envkit-bench-redis-", dir=base))
    data.chmod(0o711)
    env = {**os.environ, "ENVKIT_HOME": str(scratch / "home"), "ENVKIT_DATA_DIR": str(data)}
    for name in ("ENVKIT_REDIS", "ENVKIT_PIPELINE_ID", "ENVKIT_DATASET"):
        env.pop(name, None)
    result: dict[str, Any] = {"n": args.n, "rounds": args.r}
    try:
        timed_up(env, "bench-warm", True)  # builds the template
        down(env, "bench-warm")
        walls: dict[bool, list[float]] = {False: [], True: []}
        totals: dict[bool, list[float]] = {False: [], True: []}
        for i in range(args.n):
            for redis in ((False, True) if i % 2 == 0 else (True, False)):
                settle(data)  # from rest: the spare refill done, the run queue quiet
                wall, total = timed_up(env, f"bench-s{i}-{int(redis)}", redis)
                walls[redis].append(wall)
                totals[redis].append(total)
                down(env, f"bench-s{i}-{int(redis)}")
        for redis, label in ((False, "without"), (True, "with")):
            result[f"up_wall_median_{label}_s"] = round(statistics.median(walls[redis]), 4)
            result[f"up_total_median_{label}_s"] = round(statistics.median(totals[redis]), 4)
        result["extra_wall_median_ms"] = round(
            1000 * (statistics.median(walls[True]) - statistics.median(walls[False])), 1)
        result["extra_total_median_ms"] = round(
            1000 * (statistics.median(totals[True]) - statistics.median(totals[False])), 1)
        rounds: dict[bool, list[float]] = {False: [], True: []}
        for r in range(args.r):
            for redis in ((False, True) if r % 2 == 0 else (True, False)):
                ids = [f"bench-p{r}-{int(redis)}-{k}" for k in range(8)]
                settle(data)
                rounds[redis].append(parallel(env, ids, redis))
                down(env, *ids)
        result["parallel8_median_without_s"] = round(statistics.median(rounds[False]), 3)
        result["parallel8_median_with_s"] = round(statistics.median(rounds[True]), 3)
        result["parallel8_rounds_without_s"] = [round(x, 3) for x in rounds[False]]
        result["parallel8_rounds_with_s"] = [round(x, 3) for x in rounds[True]]
        result["target_met"] = result["extra_wall_median_ms"] <= 20.0
    finally:
        for record in (scratch / "home" / "envs").glob("*.json"):
            down(env, record.stem)
        shutil.rmtree(scratch, ignore_errors=True)
        shutil.rmtree(data, ignore_errors=True)
    (HERE / "results-redis.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
