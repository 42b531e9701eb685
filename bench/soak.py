"""Soak (RELIABILITY.md case 27): 30 training runs and 20 sessions opened and closed; memory levels off.

Two processes are watched, by their resident memory (RSS, from psutil) after every step:
- the trainer: this process, which holds the dashboard's job registry and submits every run through
  its public API (`jobs.registry().submit(config)`, `.wait(id)`), as the Train page does. Whether
  the registry trains in a thread here or in worker processes, this is the process a dashboard
  server would be, and its memory must not grow run after run;
- the server: `streamlit run app.py` on localhost, where sessions are opened on Predict and Inside
  the network (one request each, checked as in bench/load.py), then closed.

Runs are tiny (the built-in shapes, 36 images at 96 px, 2 epochs). Prints RSS over time and the
slope (MB per step) of the last half against the first half (the warm-up); target: flat, i.e. the
last half's slope at most 1 MB per step.

    python bench/soak.py [--runs 30] [--sessions 20] [--port 8622] [--quick] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import load  # noqa: E402 - the server and the protocol client of the load bench

FLAT_MB = 1.0  # MB per step: the last half's growth at most this (30 steps: 15 MB) counts as flat


def slope(values: list[float]) -> float:
    """Least-squares slope of values against their index (units per step); 0 for fewer than 2."""
    n = len(values)
    if n < 2:
        return 0.0
    mean_x, mean_y = (n - 1) / 2, sum(values) / n
    num = sum((i - mean_x) * (v - mean_y) for i, v in enumerate(values))
    return num / sum((i - mean_x) ** 2 for i in range(n))


def halves(values: list[float]) -> tuple[float, float]:
    """Slopes of the first half and the last half of a series."""
    mid = len(values) // 2
    return slope(values[:mid]), slope(values[mid:])


def verdict(first: float, last: float) -> bool:
    """Flat: after the warm-up (the first half, shown for contrast) memory grows by at most FLAT_MB per step."""
    return last <= FLAT_MB


def rss_mb(pid: int) -> float:
    import psutil

    return psutil.Process(pid).memory_info().rss / 2**20


async def open_and_close(port: int, index: int) -> list[str]:
    """One session: open its page, make its choices, one checked request, close the tab."""
    # Students on the ImageNet backbone only (0, 1, 4, 5, ...): the runs folder fills with the soak's
    # runs, so the run picker's first choice is not the tiny run the trained-run check looks for.
    student = load.Student(4 * (index // 2) + index % 2)
    async with load.Session(port, student.page) as session:
        await load.prepare(session, student)
        return await load.request(session, student, 0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--port", type=int, default=8622)
    parser.add_argument("--quick", action="store_true", help="8 runs, 6 sessions")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.runs, args.sessions = 8, 6

    work = Path(tempfile.mkdtemp(prefix="convscope-bench-soak-"))
    os.environ["CONVSCOPE_RUNS_DIR"] = str(work / "runs")
    from engine import jobs
    from engine.config import DataConfig, TrainConfig

    config = TrainConfig(
        data=DataConfig(source="shapes:per_class=12,classes=3,size=64", image_size=96), epochs=args.epochs
    )
    samples: list[dict] = []
    errors: list[str] = []
    server = None
    t0 = time.monotonic()
    try:
        load.train_tiny_run(work / "runs")
        server = load.start_server(work / "runs", args.port, work / "server.log")
        steps = max(args.runs, args.sessions)
        for step in range(steps):
            # Spread the sessions over the runs: step k opens one when k * sessions / runs crosses an integer.
            if step < args.runs:
                job = jobs.registry().submit(config)
                snap = jobs.registry().wait(job.id, timeout=600) or {}
                if snap.get("status") != "finished":
                    errors.append(f"run {step}: {snap.get('status')}: {snap.get('reason')}")
            due = (step + 1) * args.sessions // steps - step * args.sessions // steps
            for k in range(due):
                try:
                    problems = asyncio.run(open_and_close(args.port, step + k))
                except Exception as exc:  # noqa: BLE001 - any failure of a session is reported, not fatal
                    problems = [f"{type(exc).__name__}: {exc}"]
                errors += [f"session at step {step}: {p}" for p in problems]
            samples.append(
                {
                    "step": step,
                    "seconds": round(time.monotonic() - t0, 1),
                    "trainer_mb": round(rss_mb(os.getpid()), 1),
                    "server_mb": round(rss_mb(server.pid), 1),
                }
            )
            if not args.json:
                s = samples[-1]
                print(
                    f"step {step:>3}  {s['seconds']:>7.1f} s  trainer {s['trainer_mb']:>7.1f} MB  "
                    f"server {s['server_mb']:>7.1f} MB",
                    flush=True,
                )
    finally:
        if server is not None:
            load.stop_server(server)
        shutil.rmtree(work, ignore_errors=True)

    result: dict = {"bench": "soak", "runs": args.runs, "sessions": args.sessions, "samples": samples, "errors": errors}
    for proc in ("trainer", "server"):
        first, last = halves([s[f"{proc}_mb"] for s in samples])
        result[proc] = {
            "first_half_mb_per_step": round(first, 3),
            "last_half_mb_per_step": round(last, 3),
            "flat": verdict(first, last),
        }
    result["flat"] = result["trainer"]["flat"] and result["server"]["flat"] and not errors
    if args.json:
        print(json.dumps(result))
        return
    for proc in ("trainer", "server"):
        r = result[proc]
        print(
            f"{proc}: slope first half {r['first_half_mb_per_step']:+.2f} MB/step, last half "
            f"{r['last_half_mb_per_step']:+.2f} MB/step (target flat: <= {FLAT_MB}): "
            f"{'flat' if r['flat'] else 'GROWING'}"
        )
    print(f"errors: {len(errors)}")
    for e in errors[:10]:
        print("error:", e)


if __name__ == "__main__":
    main()
