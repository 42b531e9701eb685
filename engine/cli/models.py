"""Commands about models as they come: `backbones` (the registry), `predict` (classify images), `import-model`."""

from __future__ import annotations

import argparse
from pathlib import Path

from engine import imaging, runs
from engine.backbones import DEFAULT_BACKBONE, all_specs, availability, get_spec
from engine.cli.common import add_json, stderr_progress
from engine.errors import ConvScopeError
from engine.imaging import RESIZE_POLICIES
from engine.importing import PREPROCESS_CHOICES, import_model
from engine.model.classifier import ImageNetClassifier, RunClassifier
from engine.model.explainable import Explainable


def model_args(p: argparse.ArgumentParser) -> None:
    """--run DIR or --backbone NAME: the model a command looks at (predict and the inside-the-network commands)."""
    group = p.add_mutually_exclusive_group()
    group.add_argument(
        "--run", dest="run_dir", metavar="DIR", help="a trained run folder (model.keras, labels.json, config.json)"
    )
    group.add_argument(
        "--backbone", default=DEFAULT_BACKBONE, help=f"an ImageNet backbone (default {DEFAULT_BACKBONE})"
    )


def explainable(args: argparse.Namespace) -> Explainable:
    """The model that --run or --backbone names."""
    return Explainable.from_run(args.run_dir) if args.run_dir else Explainable.from_backbone(args.backbone)


def run_source(args: argparse.Namespace) -> str:
    """The run's own data source; "" for a backbone or a run without data (an imported model may come without)."""
    if not args.run_dir:
        return ""
    return runs.source_of(runs.Run(Path(args.run_dir)).config())


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
        if classifier.imported:  # a model from a file: which one, and what its output was
            head["imported"] = {k: classifier.imported.get(k) for k in ("file", "output", "preprocess")}
    else:
        classifier = ImageNetClassifier(args.backbone)
        results = classifier.predict(images, top_k=args.top)
        head = {"backbone": args.backbone}
    return {**head, "predictions": [r.to_json() for r in results], "skipped": skipped}


def _print_predictions(result: dict) -> None:
    if result.get("imported"):
        facts = result["imported"]
        print(f"imported model {facts['file']} (output {facts['output']}, preprocessing {facts['preprocess']})")
    for p in result["predictions"]:
        print(f"{p['image']}  ({p['seconds'] * 1000:.0f} ms)")
        for t in p["top"]:
            print(f"  {t['probability']:6.1%}  {t['label']}  [{t['index']}]")
    if result.get("skipped"):
        print(f"skipped {len(result['skipped'])} file(s) that cannot be read:")
        for s in result["skipped"]:
            print(f"  {s['image']}: {s['reason']}")


def add_import_model(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "import-model",
        help="import your own Keras model (.keras) as a run: predict, evaluate, explain, fine-tune and export it",
    )
    p.add_argument("path", metavar="PATH", help="a .keras file, a SavedModel folder or .zip (opaque), an allowed .h5")
    p.add_argument("--labels", metavar="FILE", help="class names: labels.txt (one per line) or a JSON list")
    p.add_argument(
        "--preprocess",
        default="auto",
        choices=PREPROCESS_CHOICES,
        help="the pixel convention the model expects (default auto: its own Rescaling layer, else the most "
        "accurate on --source)",
    )
    p.add_argument(
        "--source", metavar="LABELLED", help="a labelled dataset: class names, and the images auto compares on"
    )
    p.add_argument("--image-size", type=int, help="the input side for a model that accepts any size")
    p.add_argument("--resize", default="stretch", choices=RESIZE_POLICIES, help="how images fit the input")
    p.add_argument("--name", default="", help="the run's display name (default: the file's name)")
    p.add_argument("--out", metavar="RUN_DIR", help="the run folder (default: a new one under the runs folder)")
    add_json(p)
    p.set_defaults(run=cmd_import_model, show=_print_import)


def cmd_import_model(args: argparse.Namespace) -> dict:
    return import_model(
        args.path,
        labels=args.labels,
        preprocess=args.preprocess,
        source=args.source,
        image_size=args.image_size,
        resize=args.resize,
        name=args.name,
        out=args.out,
        progress=lambda stage, f: stderr_progress(stage, round(f * 100), 100),
    )


def _print_import(result: dict) -> None:
    pre = result["preprocess"]
    print(f"imported {result['file']} as {result['run_dir']}")
    print(f"  input {result['input_size']}x{result['input_size']}x{result['channels']}, output {result['output']}")
    print(f"  classes ({len(result['classes'])}, from {result['labels_from']}): {', '.join(result['classes'])}")
    print(f"  preprocessing: {pre['name']} ({pre['reason']})")
    for name, acc in pre["accuracy"].items():
        flag = f"  <- {pre['flagged'][name]}" if name in pre["flagged"] else ""
        print(f"    {name:10} {acc:6.1%}{flag}")
    print(
        f"  {len(result['layers'])} layers, {len(result['conv_layers'])} convolutions, {result['params']:,} parameters"
    )
    if result["augmentation"]:
        print(f"  augmentation layers (inactive outside training): {', '.join(result['augmentation'])}")
    for warning in result["warnings"]:
        print(f"  warning: {warning}")
