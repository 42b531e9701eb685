"""`tcav`: does a class rely on a concept (a set of example images) at a few layers of a model."""

from __future__ import annotations

import argparse
import time

from engine.cli.common import add_json, fraction_progress
from engine.cli.models import explainable, model_args, run_source
from engine.explain import concepts


def add_tcav(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("tcav", help="concept test (TCAV): does a class rely on a concept, with a significance test")
    model_args(p)
    p.add_argument("--concept", required=True, help="the concept's images: a folder, a .zip, or builtin:mark")
    p.add_argument("--class", dest="class_name", required=True, help="the class, by name or index")
    p.add_argument("--images", help="the class's images: a labelled dataset or a folder (default: the run's data)")
    p.add_argument("--random", default="", help="a folder of random counterexamples (default: built-in photo crops)")
    p.add_argument("--layers", help="comma-separated layers (default: three depths)")
    p.add_argument("--runs", type=int, default=concepts.RUNS, help=f"CAVs each way (default {concepts.RUNS})")
    add_json(p)
    p.set_defaults(run=cmd_tcav, show=_print_tcav)


def cmd_tcav(args: argparse.Namespace) -> dict:
    t0 = time.perf_counter()
    model = explainable(args)
    layers = [name.strip() for name in args.layers.split(",") if name.strip()] if args.layers else None
    result = concepts.tcav(
        model,
        args.concept,
        args.class_name,
        args.images or run_source(args),
        layers,
        args.runs,
        args.random,
        progress=fraction_progress("concept test"),
    )
    return {**result.to_json(), "seconds": round(time.perf_counter() - t0, 2)}


def _print_tcav(result: dict) -> None:
    print(concepts.summary(result))
    print(f"\nConcept {result['concept']!r} for class {result['class_name']!r} ({result['model']}):")
    print(f"{'layer':32} {'CAV acc':>8} {'TCAV':>12} {'random':>12} {'p (corr.)':>10}  verdict")
    for r in result["layers"]:
        verdict = {"raises": "relies on it", "lowers": "lowered by it"}.get(r["direction"], "")
        verdict = verdict or ("significant, no clear direction" if r["significant"] else "not significant")
        print(
            f"{r['layer']:32} {r['cav_accuracy']:8.0%} {r['score_mean']:6.0%} ±{r['score_std']:4.0%}"
            f" {r['random_mean']:6.0%} ±{r['random_std']:4.0%} {r['p_corrected']:10.2g}  {verdict}"
        )
    for r in result["layers"]:
        print(r["meaning"])
    print(f"({result['seconds']:.0f} s)")
