"""Benchmark: parallel ups, and reaping, as users run them (the CLI as a subprocess).

Measured in one run, on this machine, medians of N rounds each, in a private ENVKIT_HOME:

- **one up**: ``python -m envkit up ID --format json`` → ready, wall time (each followed by an
  untimed ``down``), two per round;
- **8 parallel ups**: eight such processes started at once with distinct IDs, wall time until
  the last one exits (then all downs, untimed). Target: ≤ 1.25 x (8 / cores) x one up — within
  25 % of the CPU-bound ideal (5 x one up on 2 cores).

  Every timed up and burst starts from rest, as pipelines that start minutes apart do: the spare
  pool's background refill has finished and the run queue is quiet. Round 1's burst meets the
  pool at its resting size (most of its ups copy the template themselves, and the pool grows);
  later rounds meet the pool grown to the burst. Each round records how many spares it found;
- **8 parallel ups, back to back**: bursts started right after the previous one's downs, with
  no pause: the refill cannot keep up, so most ups copy the template on their own path. Shown
  for what sustained saturation costs; the target is judged on the rounds from rest;
- **reap 50 expired**: 50 real environments created with a 1 s TTL, then one
  ``python -m envkit reap --json`` wall time until all 50 are gone.

Every environment created here is destroyed at the end, also on failure or Ctrl-C.
Writes bench/results-lifecycle.json (``rows`` in the shape bench/run.py renders).
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
from datetime import timedelta
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from envkit import lifecycle  # noqa: E402
from envkit.locking import is_locked  # noqa: E402
from envkit.plan import Plan  # noqa: E402
from envkit.providers.local import spares  # noqa: E402
from envkit.providers.local.leftovers import inventory  # noqa: E402
from envkit.settings import Settings  # noqa: E402


def envkit(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """The CLI exactly as a user runs it, with the real interpreter."""
    return subprocess.run([sys.executable, "-m", "envkit", *args], capture_output=True,
                          text=True, env=env, check=False, timeout=300)


def timed_up(pipeline_id: str, env: dict[str, str]) -> float:
    started = time.perf_counter()
    done = envkit("up", pipeline_id, "--format", "json", env=env)
    took = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"envkit up {pipeline_id} failed: {done.stderr}")
    return took


def parallel_ups(ids: list[str], env: dict[str, str]) -> float:
    """Start every up at once (Popen, not a pool that could stagger them); wall time to the last."""
    started = time.perf_counter()
    procs = [subprocess.Popen([sys.executable, "-m", "envkit", "up", i, "--format", "json"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
             for i in ids]
    errors = [p.communicate(timeout=300)[1] for p in procs]
    took = time.perf_counter() - started
    failed = [e for p, e in zip(procs, errors, strict=True) if p.returncode != 0]
    if failed:
        raise SystemExit(f"{len(failed)} parallel ups failed: {failed[0]!r}")
    return took


def downs(ids: list[str], env: dict[str, str]) -> None:
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda i: envkit("down", i, env=env), ids))


def stop_refills(data: Path) -> None:
    """Wait for spare refills under ``data`` (they hold the pool's lock until done)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and any(
        is_locked(p / ".refill.lock") for p in (data / "templates").glob("*.spares")
    ):
        time.sleep(0.05)


def settle(data: Path) -> None:
    """Start a measurement from rest: refills done, then at most one runnable task (this one)
    in three readings of /proc/loadavg 50 ms apart (at most 3 s)."""
    stop_refills(data)
    calm, deadline = 0, time.monotonic() + 3
    while calm < 3 and time.monotonic() < deadline:
        running = int(Path("/proc/loadavg").read_text().split()[3].split("/")[0])
        calm = calm + 1 if running <= 1 else 0
        time.sleep(0.05)


def spares_ready(data: Path) -> int:
    return sum(len(spares.ready(p)) for p in (data / "templates").glob("*.spares"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=7, help="rounds per figure (median)")
    parser.add_argument("--parallel", type=int, default=8)
    parser.add_argument("--back-to-back", type=int, default=3,
                        help="bursts run with no pause after the rounds (0: none)")
    parser.add_argument("--reap", type=int, default=50, help="expired environments to reap")
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="envkit-bench-lifecycle-"))
    # A data root of its own (RAM-backed like the default): its template, its spare pool at rest
    # and no other home's leftovers, whatever ran on this machine before.
    shm = Path("/dev/shm")
    data = Path(tempfile.mkdtemp(prefix="envkit-bench-data-", dir=shm if shm.is_dir() else None))
    env = {**os.environ, "ENVKIT_HOME": str(home), "ENVKIT_DATA_DIR": str(data)}
    # The default pool (its resting size is part of what is measured) and no CI-derived IDs.
    for name in ("ENVKIT_PIPELINE_ID", "GITHUB_RUN_ID", "CI_PIPELINE_ID", "BUILD_TAG",
                 "ENVKIT_SPARES"):
        env.pop(name, None)
    settings = Settings.resolve({"home": home, "data_dir": data})
    cores = os.cpu_count() or 1
    results: dict[str, Any] = {"cores": cores, "rounds": args.rounds}
    try:
        timed_up("bench-warm", env)  # builds the template once, off the clock
        downs(["bench-warm"], env)

        one, many, found = [], [], []
        for r in range(args.rounds):
            for k in range(2):  # the one-up median is the ratio's denominator: twice the samples
                settle(data)
                one.append(timed_up(f"bench-one-{r}-{k}", env))
                downs([f"bench-one-{r}-{k}"], env)
            settle(data)
            found.append(spares_ready(data))
            ids = [f"bench-par-{r}-{i}" for i in range(args.parallel)]
            many.append(parallel_ups(ids, env))
            downs(ids, env)
        back, back_found = [], []
        for r in range(args.back_to_back):
            found_now = spares_ready(data)
            ids = [f"bench-b2b-{r}-{i}" for i in range(args.parallel)]
            back.append(parallel_ups(ids, env))
            back_found.append(found_now)
            downs(ids, env)
        one_up = statistics.median(one)
        par = statistics.median(many)
        ideal = args.parallel / cores * one_up
        results.update(
            one_up_s=round(one_up, 4),
            parallel_ups_s=round(par, 4),
            parallel=args.parallel,
            ideal_s=round(ideal, 4),
            target_s=round(1.25 * ideal, 4),
            parallel_vs_one=round(par / one_up, 2),
            parallel_first_round_s=round(many[0], 4),
            parallel_first_round_vs_one=round(many[0] / one_up, 2),
            spares_found=found,
            within_target=par <= 1.25 * ideal,
            samples={"one_up_s": one, "parallel_ups_s": many, "back_to_back_s": back},
        )
        if back:
            results.update(
                back_to_back_s=round(statistics.median(back), 4),
                back_to_back_vs_one=round(statistics.median(back) / one_up, 2),
                back_to_back_spares_found=back_found,
            )

        # 50 real environments, expired: made in-process (the setup is not what is measured).
        ids = [f"bench-reap-{i}" for i in range(args.reap)]

        def make(pipeline_id: str) -> None:
            ctx = Plan.build(pipeline_id, settings, seed=False)
            lifecycle.up(ctx, ttl=timedelta(seconds=1))

        with ThreadPoolExecutor(2) as pool:
            list(pool.map(make, ids))
        time.sleep(2.1)
        started = time.perf_counter()
        done = envkit("reap", "--json", env=env)
        reap_s = time.perf_counter() - started
        report = json.loads(done.stdout)
        left = {k: v for k, v in inventory(settings, ids).items() if v}
        # The data root is the machine's: count this home's environments, not other leftovers
        # the same reap found (templates, homes deleted elsewhere).
        reaped = [e for e in report["reaped"] if e["pipeline_id"] in ids]
        results.update(
            reap_s=round(reap_s, 4),
            reap_count=len(reaped),
            reap_other=len(report["reaped"]) - len(reaped),
            reap_errors=len(report["errors"]),
            reap_per_env_ms=round(1000 * reap_s / max(1, len(reaped)), 1),
            reap_leftovers=left,
        )
    finally:
        for record in lifecycle.list_environments(settings):
            try:
                lifecycle.down(Plan.build(record.pipeline_id, settings))
            except Exception as exc:  # keep cleaning up the rest
                print(f"cleanup of {record.pipeline_id} failed: {exc}", file=sys.stderr)
        envkit("reap", env=env)
        stop_refills(data)
        shutil.rmtree(home, ignore_errors=True)
        shutil.rmtree(data, ignore_errors=True)

    results["rows"] = [
        {"what": "one envkit up (CLI)", "value": results["one_up_s"], "unit": "s",
         "anchor": "copy + postgres -D, tmpfs (ANCHORS.md)", "anchor_value": 0.072},
        {"what": f"{args.parallel} parallel ups (CLI), wall", "value": results["parallel_ups_s"],
         "unit": "s", "anchor": f"target 1.25 x {args.parallel}/{cores} x one up",
         "anchor_value": results["target_s"]},
        *([{"what": f"{args.parallel} parallel ups, back to back",
            "value": results["back_to_back_s"], "unit": "s",
            "anchor": f"target 1.25 x {args.parallel}/{cores} x one up",
            "anchor_value": results["target_s"]}] if back else []),
        {"what": f"reap {results['reap_count']} expired environments", "value": results["reap_s"],
         "unit": "s", "anchor": "one up (CLI)", "anchor_value": results["one_up_s"]},
    ]
    (HERE / "results-lifecycle.json").write_text(json.dumps(results, indent=2) + "\n")

    print(f"{'what':<44} {'value':>9}  anchor")
    for row in results["rows"]:
        print(f"{row['what']:<44} {row['value']:>8.3f}s  {row['anchor']}: "
              f"{row['anchor_value']:.3f}s")
    print(f"parallel/one = {results['parallel_vs_one']}x "
          f"(ideal {args.parallel / cores:.1f}x, target ≤ {1.25 * args.parallel / cores:.2f}x): "
          f"{'OK' if results['within_target'] else 'MISSED'}; first round (pool at rest) "
          f"{results['parallel_first_round_vs_one']}x; spares found per round {found}; "
          f"back to back {results.get('back_to_back_vs_one', '-')}x "
          f"(spares found {results.get('back_to_back_spares_found', '-')}); "
          f"reap {results['reap_per_env_ms']} ms/env, errors {results['reap_errors']}, "
          f"leftovers {results['reap_leftovers'] or 'none'}")
    return 0 if results["within_target"] and not results["reap_errors"] else 1


if __name__ == "__main__":
    sys.exit(main())
