"""Commands about finished runs: `export`, `report`, `evaluate`, and `runs` (list, rename, delete)."""

from __future__ import annotations

import argparse

from engine import evaluate, runs
from engine.cli.common import add_json, stage_progress, stderr_progress
from engine.errors import ConvScopeError
from engine.export import FORMATS, export_run
from engine.export.report import write_report


def add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="export a finished run (.keras, SavedModel, TFLite float/fp16/int8, ONNX), checked against Keras",
        description="The export is reloaded and compared with the Keras model on the run's test split (an imported "
        "model: all of the labelled source given at import; without one it is unchecked): top-1 "
        "agreement, largest probability difference, accuracy, latency per image. Exit code 2 when the "
        "format's converter cannot handle this model here (the reason is printed).",
    )
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--format", required=True, choices=FORMATS)
    p.add_argument("--out", metavar="PATH", help="where to write it (default RUN_DIR/exports/, one name per format)")
    p.add_argument("--no-check", action="store_true", help="skip the comparison with the Keras model")
    add_json(p)
    p.set_defaults(run=cmd_export, show=_print_export)


def cmd_export(args: argparse.Namespace) -> dict:
    checking = stage_progress("checking")
    return export_run(args.run_dir, args.format, args.out, check=not args.no_check, progress=checking)


def _print_export(result: dict) -> None:
    print(f"{result['format']}: {result['path']} ({result['bytes'] / 1e6:.2f} MB)")
    if "agreement" in result:
        print(
            f"  top-1 agreement with Keras {result['agreement']:.1%} on {result['images']} test images, "
            f"largest probability difference {result['max_abs_diff']:.2g}"
        )
        print(f"  accuracy {result['accuracy']:.1%} (Keras {result['accuracy_keras']:.1%})")
        print(f"  {result['latency_ms']:.1f} ms per image (Keras {result['latency_ms_keras']:.1f} ms)")
    if result.get("warning"):
        print(f"  warning: {result['warning']}")


def add_report(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "report",
        help="one self-contained HTML file about a finished run (opens offline)",
        description="Data, configuration, curves of every phase, test metrics, per-class table, confusion matrix, "
        "calibration, the most confident mistakes with their Grad-CAMs, and the checked exports.",
    )
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--out", metavar="HTML", help="where to write it (default RUN_DIR/report.html)")
    p.add_argument(
        "--source",
        metavar="SOURCE",
        help="a labelled source to score (default: the run's own test split; an imported model: all of the source "
        "given at import, and this is needed when none was given)",
    )
    add_json(p)
    p.set_defaults(run=cmd_report, show=_print_report)


def cmd_report(args: argparse.Namespace) -> dict:
    return write_report(args.run_dir, args.out, progress=stderr_progress, source=args.source)


def _print_report(result: dict) -> None:
    print(f"report written to {result['path']} ({result['bytes'] / 1e6:.1f} MB, opens offline)")


def add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate",
        help="accuracy, per-class metrics, confusion, calibration and mistakes of a trained run",
        description="SOURCE defaults to the run's own data (its test split); another labelled source "
        "(class folders named as the run's classes) defaults to all its images. An imported model defaults to all "
        "the images of any source, the one given at import too (ConvScope cannot tell what it was trained on); "
        "imported without one, it needs --source.",
    )
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--source", metavar="SOURCE", help="a labelled source (default: the run's own)")
    p.add_argument("--split", choices=("test", "validation", "train", "all"), help="which images (see above)")
    p.add_argument("--top-k", type=int, default=3, help="k of the top-k accuracy (default 3)")
    p.add_argument(
        "--save-temperature", action="store_true", help="keep the fitted temperature with the run (Predict uses it)"
    )
    add_json(p)
    p.set_defaults(run=cmd_evaluate, show=_print_evaluate)


def cmd_evaluate(args: argparse.Namespace) -> dict:
    run = runs.open_run(args.run_dir)
    if args.top_k < 1:
        raise ConvScopeError(f"--top-k must be at least 1, got {args.top_k}")
    result = evaluate.evaluate(run, args.source, args.split, top_k=args.top_k, progress=stderr_progress)
    out = result.to_json()
    if args.save_temperature:
        if result.temperature is None:
            raise ConvScopeError(f"{run.name} has no validation split to fit a temperature on")
        evaluate.save_temperature(run, result.temperature, ece=out["ece"], ece_calibrated=out["ece_calibrated"])
        out["temperature_saved"] = True
    return out


def _print_evaluate(result: dict) -> None:
    cached = " (scores from the run's cache)" if result["cached"] else ""
    print(f"{result['run']} on {result['source']} [{result['split']}]: {result['count']} images{cached}")
    print(f"  accuracy {result['accuracy']:.3f}   top-{result['top_k']} {result['top_k_accuracy']:.3f}")
    temperature = result["temperature"]
    if temperature is None:
        print(f"  ECE {result['ece']:.3f} (no validation split to fit a temperature on)")
    else:
        saved = ", saved with the run" if result.get("temperature_saved") else ""
        print(f"  ECE {result['ece']:.3f}, {result['ece_calibrated']:.3f} at temperature {temperature:.2f}{saved}")
    print(f"  {'class':20} {'precision':>9} {'recall':>7} {'f1':>6} {'support':>7}")
    for name, m in result["per_class"].items():
        print(f"  {name:20} {m['precision']:9.3f} {m['recall']:7.3f} {m['f1']:6.3f} {m['support']:7d}")
    width = max(len(n) for n in result["labels"])
    print("  confusion (rows: true, columns: predicted)")
    for name, row in zip(result["labels"], result["confusion_matrix"], strict=True):
        print(f"  {name:>{width}} " + " ".join(f"{v:4d}" for v in row))
    mistakes = result["mistakes"]
    print(f"  {len(mistakes)} mistake(s), most confident first:")
    for m in mistakes[:10]:
        print(f"    {m['probability']:6.1%}  {m['true']} -> {m['predicted']}  {m['image']}")


def add_runs(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "runs",
        help="list training runs, or rename or delete one",
        description="`runs` lists the runs; `runs rename RUN NAME` gives RUN a display name (its folder keeps "
        "its name); `runs delete RUN` removes a run that is not queued or running. RUN is a run folder's "
        "name under the runs folder, or a path.",
    )
    p.add_argument("action", nargs="?", choices=("list", "rename", "delete"), default="list", help="default: list")
    p.add_argument("args", nargs="*", metavar="ARG", help="rename: RUN NAME; delete: RUN")
    add_json(p)
    p.set_defaults(run=cmd_runs, show=_print_runs)


_RUNS_USAGE = {"list": "runs [--json]", "rename": "runs rename RUN NAME", "delete": "runs delete RUN"}


def cmd_runs(args: argparse.Namespace) -> dict:
    wanted = {"list": 0, "rename": 2, "delete": 1}[args.action]
    if len(args.args) != wanted:
        quote = " (quote a NAME with spaces)" if args.action == "rename" else ""
        raise runs.RunError(
            f"`{_RUNS_USAGE[args.action]}` takes {wanted} argument(s), got {len(args.args)}: "
            f"{' '.join(args.args) or 'none'}{quote}"
        )
    if args.action == "rename":
        run = runs.open_run(args.args[0], allow_path=True)
        runs.rename(run, args.args[1])
        return {"run": run.name, "display_name": run.display_name()}
    if args.action == "delete":
        run = runs.open_run(args.args[0], allow_path=True)
        runs.delete(run)
        return {"deleted": run.name}
    return {"runs_dir": str(runs.runs_root()), "runs": [runs.summary(r) for r in runs.list_runs()]}


def _print_runs(result: dict) -> None:
    if "deleted" in result:
        print(f"deleted {result['deleted']}")
        return
    if "display_name" in result:
        print(f"{result['run']} is now called {result['display_name']!r}")
        return
    print(f"runs in {result['runs_dir']}")
    for r in result["runs"]:
        acc = f"{r['val_accuracy']:.3f}" if r["val_accuracy"] is not None else "-"
        why = f" ({r['reason']})" if r["reason"] else ""
        label = f"{r['display_name']} [{r['name']}]" if r.get("display_name") else r["name"]
        print(f"  {label:52} {r['status']:9} epochs {r['epochs_run']:>3}  val acc {acc}{why}")
