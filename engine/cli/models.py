"""Commands about models as they come: `backbones` (the registry) and `predict` (classify images)."""

from __future__ import annotations

import argparse

from engine import imaging, runs
from engine.backbones import DEFAULT_BACKBONE, all_specs, availability, get_spec
from engine.cli.common import add_json
from engine.errors import ConvScopeError
from engine.model.classifier import ImageNetClassifier, RunClassifier


def model_args(p: argparse.ArgumentParser) -> None:
    """--run DIR or --backbone NAME: the model a command looks at (predict and the inside-the-network commands)."""
    group = p.add_mutually_exclusive_group()
    group.add_argument(
        "--run", dest="run_dir", metavar="DIR", help="a trained run folder (model.keras, labels.json, config.json)"
    )
    group.add_argument(
        "--backbone", default=DEFAULT_BACKBONE, help=f"an ImageNet backbone (default {DEFAULT_BACKBONE})"
    )


def add_backbones(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("backbones", help="list the registered backbones and whether they can load here")
    add_json(p)
    p.set_defaults(run=cmd_backbones, show=_print_backbones)


def cmd_backbones(args: argparse.Namespace) -> dict:
    rows = []
    for spec in all_specs():
        ok, reason = availability(spec)
        row = {
            "name": spec.name,
            "source": spec.source,
            "available": ok,
            "input_size": spec.input_size,
            "params": spec.params,
            "imagenet_head": spec.imagenet_head,
        }
        if not ok:
            row["reason"] = reason
        rows.append(row)
    return {"backbones": rows}


def _print_backbones(result: dict) -> None:
    print(f"{'name':20} {'source':8} {'size':>4} {'params':>12}  head  status")
    for b in result["backbones"]:
        status = "ok" if b["available"] else f"unavailable: {b['reason']}"
        head = "yes" if b["imagenet_head"] else "no"
        print(f"{b['name']:20} {b['source']:8} {b['input_size']:>4} {b['params']:>12,}  {head:4}  {status}")


def add_predict(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="classify images with a backbone's ImageNet head, or with a trained run (--run)")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    model_args(p)
    p.add_argument("--top", type=int, default=5, help="how many classes to show (default 5; at most the run's)")
    add_json(p)
    p.set_defaults(run=cmd_predict, show=_print_predictions)


def cmd_predict(args: argparse.Namespace) -> dict:
    if args.run_dir:
        runs.open_run(args.run_dir)  # a wrong folder fails before any image is read
    else:
        get_spec(args.backbone)  # an unknown name fails before any image is read
    if args.top < 1 or args.top > 1000:
        raise ConvScopeError(f"--top must be between 1 and 1000, got {args.top}")
    images, skipped = [], []
    for path in args.images:
        try:
            images.append((path, imaging.load_rgb(path)))
        except imaging.ImageLoadError as exc:
            # The message starts with the file's name; the reason is the rest.
            skipped.append({"image": path, "reason": str(exc).removeprefix(f"{path}: ")})
    if not images:
        raise ConvScopeError("cannot read " + "; ".join(f"{s['image']}: {s['reason']}" for s in skipped))
    if args.run_dir:
        classifier = RunClassifier(args.run_dir)
        results = classifier.predict(images, top_k=args.top)
        head = {"run": classifier.run, "backbone": classifier.backbone, "temperature": classifier.temperature}
    else:
        classifier = ImageNetClassifier(args.backbone)
        results = classifier.predict(images, top_k=args.top)
        head = {"backbone": args.backbone}
    return {**head, "predictions": [r.to_json() for r in results], "skipped": skipped}


def _print_predictions(result: dict) -> None:
    for p in result["predictions"]:
        print(f"{p['image']}  ({p['seconds'] * 1000:.0f} ms)")
        for t in p["top"]:
            print(f"  {t['probability']:6.1%}  {t['label']}  [{t['index']}]")
    if result.get("skipped"):
        print(f"skipped {len(result['skipped'])} file(s) that cannot be read:")
        for s in result["skipped"]:
            print(f"  {s['image']}: {s['reason']}")
