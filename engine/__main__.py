"""ConvScope command line: `python -m engine COMMAND ... [--json]`.

With --json, exactly one JSON object goes to stdout; logs go to stderr.
Exit codes: 0 success, 2 bad input (with {"error": "..."} under --json).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's C++ chatter quiet

from engine.errors import ConvScopeError  # noqa: E402


class _Parser(argparse.ArgumentParser):
    """argparse that reports usage errors as JSON when --json was asked for."""

    def error(self, message: str):
        if "--json" in sys.argv:
            print(json.dumps({"error": message}))
            sys.exit(2)
        super().error(message)


def cmd_backbones(args: argparse.Namespace) -> dict:
    from engine.backbones import all_specs, availability

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


def cmd_predict(args: argparse.Namespace) -> dict:
    from engine import imaging
    from engine.backbones import get_spec
    from engine.predict import ImageNetClassifier

    get_spec(args.backbone)  # an unknown name fails before any image is read
    if args.top < 1 or args.top > 1000:
        raise ConvScopeError(f"--top must be between 1 and 1000, got {args.top}")
    images, problems = [], []
    for path in args.images:
        try:
            images.append((path, imaging.load_rgb(path)))
        except imaging.ImageLoadError as exc:
            problems.append(str(exc))
    if problems:
        raise ConvScopeError("cannot read " + "; ".join(problems))
    classifier = ImageNetClassifier(args.backbone)
    results = classifier.predict(images, top_k=args.top)
    return {"backbone": args.backbone, "predictions": [r.to_json() for r in results]}


def _print_predictions(result: dict) -> None:
    for p in result["predictions"]:
        print(f"{p['image']}  ({p['seconds'] * 1000:.0f} ms)")
        for t in p["top"]:
            print(f"  {t['probability']:6.1%}  {t['label']}  [{t['index']}]")


def build_parser() -> argparse.ArgumentParser:
    from engine.backbones import DEFAULT_BACKBONE

    parser = _Parser(prog="python -m engine", description="ConvScope engine: transfer learning and CNN insight.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    p = sub.add_parser("backbones", help="list the registered backbones and whether they can load here")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(run=cmd_backbones, show=_print_backbones)
    p = sub.add_parser("predict", help="classify images with a backbone's ImageNet head")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--backbone", default=DEFAULT_BACKBONE, help=f"registry name (default {DEFAULT_BACKBONE})")
    p.add_argument("--top", type=int, default=5, help="how many classes to show (default 5)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(run=cmd_predict, show=_print_predictions)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        # Anything a library prints while working goes to stderr, so stdout
        # holds only our JSON object.
        with contextlib.redirect_stdout(sys.stderr):
            result = args.run(args)
    except (ConvScopeError, ValueError) as exc:
        if args.json:
            print(json.dumps({"error": str(exc)}))
        else:
            print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result))
    else:
        args.show(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
