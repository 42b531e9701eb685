"""`python -m engine timeline RUN_DIR`: where a run's model looked, epoch by epoch (engine.explain.timeline)."""

from __future__ import annotations

import argparse

from engine import runs
from engine.cli.common import add_json
from engine.explain.timeline import summary


def add_timeline(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "timeline",
        help="where a run's model looked, epoch by epoch: Grad-CAM of its fixed validation images after every epoch",
        description="Lists per epoch and image the predicted class, its probability and the map's peak (row, col) "
        "in input pixels; on data with object boxes (the shapes set) whether the peak is in the box, and the "
        "pointing game per epoch; and what recording the timeline cost per epoch.",
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run folder, or a name under CONVSCOPE_RUNS_DIR")
    add_json(p)
    p.set_defaults(run=cmd_timeline, show=_print_timeline)


def cmd_timeline(args: argparse.Namespace) -> dict:
    return summary(runs.open_run(args.run_dir).path)


def _print_timeline(result: dict) -> None:
    print(f"{result['run']}: Grad-CAM at {result['layer']} for {len(result['images'])} images")
    pointing = result["pointing_game"]
    by_epoch: dict[int, list[dict]] = {}
    for row in result["entries"]:
        by_epoch.setdefault(row["epoch"], []).append(row)
    for i, (epoch, rows) in enumerate(by_epoch.items()):
        right = sum(r["predicted"] == r["label"] for r in rows)
        line = f"epoch {epoch:4d}: {right}/{len(rows)} right"
        if pointing is not None:
            line += f", pointing game {pointing[i]:.0%}"
        print(line)
    cost = result["cost"]
    if cost["share"] is not None:
        print(f"cost: {cost['share']:.1%} of the epoch time ({cost['cpu_share']:.1%} of its CPU time)")
