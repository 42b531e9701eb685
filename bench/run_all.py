"""Run every bench in bench/ and print one table: bench, ratio, target, pass/fail, and the machine.

Each bench runs in its own process with its quick options and `--json`, and prints one JSON object
as its last line: {"bench": NAME, "ratios": [{"name", "value", "target", "passed"}]} (load.py and
soak.py print their own shapes, read here). A figure without a stated target has target null and
passed null, shown as "no target"; a bench that prints no JSON is listed as "no --json". Neither
counts as pass or fail.

    python bench/run_all.py [--only NAME ...] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
# The quick options of each bench (its smallest meaningful run); every bench also gets --json.
QUICK = {
    "load": ["--quick"],
    "soak": ["--quick"],
    "backbone_cache": ["--repeats", "2"],
    "channels": ["--repeats", "1", "--channels", "4"],
    "concepts": ["--runs", "10"],
    "data_health": ["--limit", "1000", "--images", "1000", "--repeats", "1"],
    "evaluate_speed": ["--per-class", "30", "--repeats", "2"],
    "explain_speed": ["--repeats", "3"],
    "export": ["--repeats", "10"],
    # the figures are for the default sizes; one seed each
    "feature_cache": ["--seeds", "1"],
    "finetune": ["--tops", "2", "--seeds", "0"],
    "fixed_costs": [],
    "import_model": ["--repeats", "1"],
    "probe": ["--per-class", "30"],
    "timeline": ["--epochs", "20"],
    "watched": ["--repeats", "1"],
}
SKIP = {"run_all"}


def private_dirs(prefix: str = "convscope-bench-") -> Path:
    """A new temporary folder holding this bench's own cache and runs (nothing of a developer's is reused)."""
    import tempfile

    tmp = Path(tempfile.mkdtemp(prefix=prefix))
    os.environ["CONVSCOPE_CACHE_DIR"] = str(tmp / "cache")
    os.environ["CONVSCOPE_RUNS_DIR"] = str(tmp / "runs")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return tmp


def ratio(name: str, value: float | None, target: str | None = None) -> dict:
    """One figure of a bench's --json: `target` is "<= X", ">= X", "within X" (|value| <= X) or None (none stated)."""
    passed = None
    if target is not None and value is not None:
        op, bound = target.split()
        limit = float(bound)
        passed = {"<=": value <= limit, ">=": value >= limit, "within": abs(value) <= limit}[op]
    return {"name": name, "value": None if value is None else round(float(value), 4), "target": target,
            "passed": passed}  # fmt: skip


def machine() -> dict:
    """CPU model, cores and memory of this machine (from /proc where there is one)."""
    cpu = platform.processor() or platform.machine()
    memory_gb = 0.0
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                memory_gb = round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count() or 1, "memory_gb": memory_gb}


def last_json(stdout: str) -> dict | None:
    """The last line of a bench's output that is a JSON object, or None."""
    for line in reversed(stdout.strip().splitlines()):
        try:
            value = json.loads(line)
        except ValueError:
            continue
        if isinstance(value, dict):
            return value
    return None


def rows_of(name: str, result: dict | None) -> list[dict]:
    """A bench's JSON as table rows."""
    if result is None:
        return [{"bench": name, "name": "", "value": None, "target": "", "passed": None, "note": "no --json"}]
    if name == "load":
        phases = result["phases"]
        label = f"{phases[-1]['sessions']} sessions / 1 (errors {sum(p['errors'] for p in phases)})"
        passed = result["ratio"] >= result["target"] and not result["errors"]
        return [{"bench": name, "name": label, "value": result["ratio"], "target": f">= {result['target']}",
                 "passed": passed}]  # fmt: skip
    if name == "soak":
        out = []
        for proc in ("trainer", "server"):
            r = result[proc]
            out.append({"bench": name, "name": f"{proc} MB/step, last half", "value": r["last_half_mb_per_step"],
                        "target": "flat", "passed": r["flat"] and not result["errors"]})  # fmt: skip
        return out
    rows = [{"bench": name, **r} for r in result.get("ratios", [])]
    return rows or [{"bench": name, "name": "", "value": None, "target": "", "passed": None, "note": "no ratios"}]


def table(rows: list[dict], host: dict) -> str:
    """The printed table and the machine it ran on."""
    lines = [f"{'bench':16} {'ratio':44} {'value':>8} {'target':>10}  result"]
    for r in rows:
        value = "" if r["value"] is None else f"{r['value']:.2f}"
        target = r["target"] or ""
        result = r.get("note") or ("no target" if r["passed"] is None else "pass" if r["passed"] else "FAIL")
        lines.append(f"{r['bench']:16} {r['name']:44} {value:>8} {target:>10}  {result}")
    lines.append(f"machine: {host['cpu']}, {host['cores']} cores, {host['memory_gb']} GB")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", help="bench names (file names without .py)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    names = sorted(p.stem for p in BENCH.glob("*.py") if p.stem not in SKIP and not p.stem.startswith("_"))
    if args.only:
        unknown = set(args.only) - set(names)
        if unknown:
            parser.error(f"no bench named {', '.join(sorted(unknown))}; choose from {', '.join(names)}")
        names = [n for n in names if n in args.only]
    rows, timings = [], {}
    for name in names:
        t0 = time.monotonic()
        out = subprocess.run([sys.executable, str(BENCH / f"{name}.py"), *QUICK.get(name, []), "--json"],
                             capture_output=True, text=True, cwd=BENCH.parent)  # fmt: skip
        timings[name] = round(time.monotonic() - t0, 1)
        if out.returncode != 0:
            tail = out.stderr.strip().splitlines()[-1:] or ["?"]
            rows.append({"bench": name, "name": "", "value": None, "target": "", "passed": False,
                         "note": f"exit {out.returncode}: {tail[0][:60]}"})  # fmt: skip
            continue
        rows += rows_of(name, last_json(out.stdout))
        print(f"{name}: {timings[name]} s", file=sys.stderr, flush=True)
    host = machine()
    if args.json:
        print(json.dumps({"machine": host, "rows": rows, "seconds": timings}))
    else:
        print(table(rows, host))


if __name__ == "__main__":
    main()
