"""Dataset health: `data-issues` (what looks wrong) and `data-fix` (relabel, exclude, undo; files untouched)."""

from __future__ import annotations

import argparse
from pathlib import Path

from engine import runs
from engine.backbones import DEFAULT_BACKBONE
from engine.cli.common import add_json, stderr_progress
from engine.data import corrections
from engine.data.sources import open_dataset
from engine.errors import ConvScopeError
from engine.health.analysis import analyse

SHOWN = 10  # rows of each kind in the text output (--json has them all)


def add_data_issues(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "data-issues",
        help="find likely label mistakes, outliers, near-duplicates and leaks across splits",
        description="Scores every image with a linear head that never saw it (K folds over cached backbone "
        "features), then cleanlab ranks likely label mistakes and outliers; near-duplicates are close in "
        "features and in a perceptual hash. Corrections (data-fix) are applied first.",
    )
    p.add_argument("source", metavar="SOURCE", help="shapes[:...], a folder, a .zip/.tar.gz, or tfds:NAME[:SPLIT]")
    p.add_argument(
        "--backbone", default=DEFAULT_BACKBONE, help=f"features from this backbone (default {DEFAULT_BACKBONE})"
    )
    p.add_argument("--image-size", type=int, default=None, help="pixels (default: the backbone's own)")
    p.add_argument("--folds", type=int, default=5, help="out-of-fold heads (default 5)")
    p.add_argument("--seed", type=int, default=0, help="split seed of the leak check without --run (default 0)")
    p.add_argument("--val", type=float, default=0.15, help="validation fraction carved (default 0.15)")
    p.add_argument("--test", type=float, default=0.15, help="test fraction carved (default 0.15)")
    p.add_argument(
        "--run", dest="run_dir", metavar="RUN_DIR", help="measure leaks against this run's split and test accuracy"
    )
    add_json(p)
    p.set_defaults(run=cmd_data_issues, show=_print_issues)


def cmd_data_issues(args: argparse.Namespace) -> dict:
    run = runs.open_run(args.run_dir) if args.run_dir else None
    return analyse(
        args.source,
        args.backbone,
        args.image_size,
        args.folds,
        run,
        stderr_progress,
        seed=args.seed,
        val_frac=args.val,
        test_frac=args.test,
    )


def _print_issues(result: dict) -> None:
    c = result["counts"]
    print(f"{result['source']}: {result['num_images']} images, health {result['score']:.0f}/100")
    print(
        f"  {c['label_issues']} likely label mistakes, {c['outliers']} outliers, "
        f"{c['near_duplicate_groups']} near-duplicate groups, {c['leaks']} leaks across splits"
    )
    print(f"  out-of-fold accuracy {result['oof_accuracy']:.3f} ({result['folds']} folds, {result['backbone']})")
    if result["label_issues"]:
        print("likely label mistakes (worst first):")
        for row in result["label_issues"][:SHOWN]:
            print(f"  {row['path']}: given {row['given']}, suggested {row['suggested']} (score {row['score']:.3f})")
    if result["outliers"]:
        print("outliers (most unusual first):")
        for row in result["outliers"][:SHOWN]:
            print(f"  {row['path']} ({row['label']}, score {row['score']:.3f})")
    for title, groups in (("near-duplicates", result["near_duplicates"]), ("leaks", result["leaks"])):
        if groups:
            print(f"{title}:")
            for g in groups[:SHOWN]:
                print("  " + ", ".join(f"{p} [{s or '-'}]" for p, s in zip(g["paths"], g["splits"], strict=True)))
    inflation = result["inflation"]
    if result["leaks"]:
        print(
            f"leaks against {result['split']}: {inflation['leaked_test_images']} of {inflation['test_images']} test "
            f"images have a copy in training; test accuracy may be up to {inflation['at_most_points']:.1f} points high"
        )
        if inflation.get("accuracy") is not None:
            without = inflation["accuracy_without_leaked"]
            print(f"  run {inflation['run']}: test accuracy {inflation['accuracy']:.3f}, without them {without:.3f}")
    print(
        "fix with: python -m engine data-fix SOURCE --relabel PATH=CLASS --exclude PATH (your files stay as they are)"
    )
    print(f"{result['seconds']['total']:.1f} s" + (" (from the cache)" if result["cached"] else ""))


def add_data_fix(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "data-fix",
        help="relabel or exclude images without touching the files (undo, CSV in and out)",
        description="Corrections are kept in ConvScope's cache, one record per dataset; train, evaluate, "
        "inspect-data and every page apply them. Each call is one edit; --undo takes the last edit back.",
    )
    p.add_argument("source", metavar="SOURCE")
    p.add_argument("--relabel", action="append", default=[], metavar="PATH=CLASS", help="give PATH the class CLASS")
    p.add_argument("--exclude", action="append", default=[], metavar="PATH", help="leave PATH out of the data")
    p.add_argument("--keep", action="append", default=[], metavar="PATH", help="mark PATH reviewed (data unchanged)")
    p.add_argument("--clear", action="append", default=[], metavar="PATH", help="back to PATH as it is on disk")
    p.add_argument("--undo", action="store_true", help="take the last edit back")
    p.add_argument("--reset", action="store_true", help="forget every correction of this dataset")
    p.add_argument("--csv-out", metavar="FILE", help="write the corrections that hold now as CSV")
    p.add_argument("--csv-in", metavar="FILE", help="apply a CSV written by --csv-out (maybe of another copy)")
    add_json(p)
    p.set_defaults(run=cmd_data_fix, show=_print_fix)


def cmd_data_fix(args: argparse.Namespace) -> dict:
    # opened once (every file read and hashed), as on disk; the record is applied again after the edit
    dataset = open_dataset(args.source, stderr_progress, corrected=False)
    changes = []
    for text in args.relabel:
        path, sep, label = text.rpartition("=")
        if not sep or not path:
            raise ConvScopeError(f"--relabel {text!r}: give PATH=CLASS")
        changes.append((path, corrections.RELABEL, label))
    for action, paths in (
        (corrections.EXCLUDE, args.exclude),
        (corrections.KEEP, args.keep),
        (corrections.CLEAR, args.clear),
    ):
        changes += [(path, action, "") for path in paths]
    out: dict = {"source": args.source}
    if sum(map(bool, (changes, args.undo, args.reset, args.csv_in))) > 1:
        raise ConvScopeError("one of: changes (--relabel/--exclude/--keep/--clear), --undo, --reset or --csv-in")
    if changes:
        out["edit"] = corrections.edit(dataset, changes)
    elif args.undo:
        out["undone"] = [c.to_json() for c in corrections.undo(dataset.root)]
    elif args.reset:
        out["forgotten"] = corrections.reset(dataset.root)
    elif args.csv_in:
        out["edit"], out["skipped"] = corrections.from_csv(dataset, Path(args.csv_in).read_text(encoding="utf-8"))
    after = corrections.apply(dataset)
    if args.csv_out:
        Path(args.csv_out).write_text(corrections.to_csv(after), encoding="utf-8")
        out["csv"] = args.csv_out
    summary = after.corrections or corrections.Summary()
    return {
        **out,
        "corrections": summary.to_json(),
        "fingerprint": after.fingerprint,
        "files_fingerprint": after.files_fingerprint,
        "num_images": len(after.items),
        "record": str(corrections.record_path(after.root)),
    }


def _print_fix(result: dict) -> None:
    if "edit" in result:
        print(f"edit {result['edit']} recorded" if result["edit"] else "nothing applied")
    if result.get("skipped"):
        print(f"skipped {len(result['skipped'])} rows whose file is missing or differs here:")
        for path in result["skipped"][:SHOWN]:
            print(f"  {path}")
    if "undone" in result:
        print(f"undid {len(result['undone'])} changes" if result["undone"] else "nothing to undo")
    if "forgotten" in result:
        print(f"forgot {result['forgotten']} changes")
    c = result["corrections"]
    print(
        f"{result['source']}: {result['num_images']} images; {c['relabelled']} relabelled, {c['excluded']} excluded, "
        f"{c['kept']} reviewed (your files are unchanged)"
    )
    for path in c["stale"]:
        print(f"  not applied to {path}: the file changed or is gone since it was corrected")
    if result.get("csv"):
        print(f"wrote {result['csv']}")
