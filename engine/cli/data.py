"""Commands about datasets: `make-shapes` (write the built-in one) and `inspect-data` (check one)."""

from __future__ import annotations

import argparse
from pathlib import Path

from engine.cli.common import add_json, stderr_progress
from engine.config import DataConfig
from engine.data import shapes
from engine.data.report import inspect_report
from engine.data.sources import open_dataset, shapes_config
from engine.errors import ConvScopeError


def add_make_shapes(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("make-shapes", help="write the built-in shapes dataset as class folders plus boxes.json")
    p.add_argument("out_dir", metavar="OUT_DIR")
    p.add_argument("--per-class", type=int, default=60, help="images per class (default 60)")
    p.add_argument("--classes", type=int, default=5, help="number of shape classes, 2..8 (default 5)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--size", type=int, default=160, help="image side in pixels (default 160)")
    add_json(p)
    p.set_defaults(run=cmd_make_shapes, show=_print_make_shapes)


def cmd_make_shapes(args: argparse.Namespace) -> dict:
    out = Path(args.out_dir)
    if out.exists() and any(out.iterdir()):
        raise ConvScopeError(f"{out} exists and is not empty; give a new folder")
    opts = f"per_class={args.per_class},classes={args.classes},seed={args.seed},size={args.size}"
    config = shapes_config(opts)
    boxes = shapes.generate(out, config, lambda d, t: stderr_progress("Drawing shapes", d, t))
    return {
        "out": str(out),
        "classes": list(config.class_names),
        "num_images": len(boxes),
        "boxes": str(out / "boxes.json"),
    }


def _print_make_shapes(result: dict) -> None:
    print(f"wrote {result['num_images']} images of {', '.join(result['classes'])} to {result['out']}")
    print(f"object boxes: {result['boxes']}")


def add_inspect_data(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "inspect-data",
        help="check a dataset: classes, counts, splits and every skipped file with its reason",
        description="SOURCE is shapes[:per_class=N,...], a folder, a .zip/.tar.gz, or tfds:NAME[:SPLIT]. "
        "Exit code 2 when the data cannot be used for training (the report says why).",
    )
    p.add_argument("source", metavar="SOURCE")
    p.add_argument("--seed", type=int, default=0, help="split seed (default 0)")
    p.add_argument("--val", type=float, default=0.15, help="validation fraction carved when the source has none")
    p.add_argument("--test", type=float, default=0.15, help="test fraction carved when the source has none")
    add_json(p)
    p.set_defaults(run=cmd_inspect_data, show=_print_inspect)


def cmd_inspect_data(args: argparse.Namespace) -> dict:
    DataConfig(source=args.source, val_frac=args.val, test_frac=args.test, seed=args.seed)  # validates
    dataset = open_dataset(args.source, stderr_progress)
    report = inspect_report(dataset, args.seed, args.val, args.test)
    if report["problems"]:
        # Still show the whole report: the user needs it to fix the data.
        report["error"] = f"{args.source} cannot be used for training: " + "; ".join(report["problems"])
    return report


def _print_inspect(result: dict) -> None:
    print(f"{result['source']}  ({result['root']})")
    print(f"{len(result['classes'])} classes, {result['num_images']} usable images")
    width = max([len(c) for c in result["classes"]] + [5])
    for c, n in result["counts"].items():
        print(f"  {c:{width}}  {n:6d}")
    s = result["splits"]
    own = " (the source's own splits kept)" if result["source_splits"] else ""
    print(f"splits: train {s['train']}, validation {s['validation']}, test {s['test']}{own}")
    if result["skipped"]:
        print(f"skipped {len(result['skipped'])} files:")
        for item in result["skipped"]:
            detail = f" - {item['detail']}" if item.get("detail") else ""
            print(f"  {item['path']}: {item['reason']}{detail}")
    c = result.get("corrections")
    if c and (c["relabelled"] or c["excluded"] or c["stale"]):
        print(f"corrections applied: {c['relabelled']} relabelled, {c['excluded']} excluded (engine data-fix)")
        for path in c["stale"]:
            print(f"  not applied to {path}: the file changed or is gone since it was corrected")
    for w in result["warnings"]:
        print(f"warning: {w}")
    for p in result["problems"]:
        print(f"problem: {p}")
