"""Commands that look inside a network: `activations`, `explain`, `visualize` and `top-examples`."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from engine import imaging
from engine.cli.common import add_json, fraction_progress, stage_progress, write_png
from engine.cli.models import explainable, model_args, run_source
from engine.data.sources import DEFAULT_SOURCE
from engine.errors import ConvScopeError
from engine.explain import METHODS, activations, checks, explain_image, featurevis, top_examples
from engine.explain.overlay import COLORMAPS, label_tile, overlay, to_png
from engine.model.explainable import Explainable
from engine.runs import atomic_write


def _channel_list(text: str) -> list[int]:
    """ "3", "0,5,9" or "0-7" -> channel numbers."""
    out: list[int] = []
    try:
        for part in text.split(","):
            lo, _, hi = part.strip().partition("-")
            out += list(range(int(lo), int(hi) + 1)) if hi else [int(lo)]
    except ValueError as exc:
        raise ConvScopeError(f"--channel takes numbers like 3, 0,5,9 or 0-7; got {text!r}") from exc
    return out


def add_activations(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("activations", help="a layer's feature maps for an image, or `--layer list` for the layers")
    p.add_argument("image", metavar="IMAGE", nargs="?")
    model_args(p)
    p.add_argument("--layer", required=True, help="layer name, or `list`")
    p.add_argument("--sort", choices=("mean", "index"), default="mean", help="channel order (default: most active)")
    p.add_argument("--channels", type=int, default=32, help="channels in the grid (default 32)")
    p.add_argument("--out", metavar="PNG", help="write the channel grid here")
    add_json(p)
    p.set_defaults(run=cmd_activations, show=_print_activations)


def cmd_activations(args: argparse.Namespace) -> dict:
    model = explainable(args)
    if args.layer == "list":
        return {"model": model.name, "layers": [info.to_json() for info in model.layers()]}
    if not args.image:
        raise ConvScopeError("give an IMAGE; only `--layer list` works without one")
    if args.channels < 1:
        raise ConvScopeError(f"--channels must be at least 1, got {args.channels}")
    rgb = imaging.load_rgb(args.image)
    layer = model.check_layer(args.layer)
    acts = model.activations(model.prepare(rgb)[None], layer)[0]
    order = activations.channel_order(acts, args.sort)
    shown = order[: args.channels]
    result = {
        "layer": layer,
        "shape": list(acts.shape),
        "channels": int(acts.shape[-1]),
        "shown_channels": [int(c) for c in shown],
        "stats": activations.layer_stats(acts),
        "out": None,
    }
    if args.out:
        write_png(args.out, to_png(activations.channel_grid(acts, shown)))
        result["out"] = args.out
    return result


def _print_activations(result: dict) -> None:
    if "layers" in result:
        print(f"{'layer':40} {'type':22} {'output shape':22} {'params':>10}")
        for info in result["layers"]:
            print(f"{info['name']:40} {info['type']:22} {str(tuple(info['output_shape'])):22} {info['params']:>10,}")
        return
    st = result["stats"]
    print(
        f"{result['layer']}: {tuple(result['shape'])}, mean {st['mean']:.3f}, max {st['max']:.3f}, "
        f"dead channels {st['dead_fraction']:.0%}"
    )
    print(f"most active channels: {result['shown_channels'][:16]}")
    if result["out"]:
        print(f"grid written to {result['out']}")


def add_explain(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("explain", help="where the network looked: a CAM or an input attribution for one image")
    p.add_argument("image", metavar="IMAGE")
    model_args(p)
    # Not argparse choices: an unknown name is the registry's own error (exit 2, "unknown method ...").
    p.add_argument("--method", default="gradcam", help=f"{', '.join(METHODS)} (default gradcam)")
    p.add_argument("--class", dest="class_index", type=int, help="class index (default: the predicted class)")
    p.add_argument("--layer", help="convolutional layer (default: the last one)")
    p.add_argument("--out", metavar="PNG", help="write the heatmap overlay here")
    p.add_argument(
        "--npy",
        metavar="FILE",
        help="write the raw map here (np.save): float32 (S, S) in [0, 1] at the model's input size S, "
        "before the overlay's contrast and resizing, to script and compare explanations",
    )
    p.add_argument(
        "--checks",
        action="store_true",
        help="also run the trust checks on the map: the sanity check (the top 3 weighted layers randomised; "
        "a faithful map changes) and the deletion / insertion areas",
    )
    p.add_argument("--opacity", type=float, default=0.5, help="overlay opacity (default 0.5)")
    p.add_argument("--colormap", choices=COLORMAPS, default="Jet")
    add_json(p)
    p.set_defaults(run=cmd_explain, show=_print_explain)


def cmd_explain(args: argparse.Namespace) -> dict:
    model = explainable(args)
    rgb = imaging.load_rgb(args.image)
    result = explain_image(model, rgb, args.method, args.class_index, args.layer)
    out = result.to_json()
    out.update(size=list(result.heatmap.shape), out=None, npy=None)
    if args.out:
        write_png(args.out, to_png(overlay(rgb, result.display, args.opacity, args.colormap)))
        out["out"] = args.out
    if args.npy:
        write_npy(args.npy, result.heatmap)
        out["npy"] = args.npy
    if args.checks:
        out["checks"] = _checks(model, result)
    return out


def write_npy(path: str, heatmap: np.ndarray) -> None:
    """np.save a (S, S) map as float32 to `path` exactly (no .npy added), never leaving a half-written file."""
    data = np.ascontiguousarray(heatmap, dtype=np.float32)

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:  # a file object: np.save would add ".npy" to a name without it
            np.save(f, data, allow_pickle=False)

    atomic_write(Path(path), write)


def _checks(model: Explainable, result) -> dict:
    """The sanity check and the deletion / insertion areas of one Explanation."""
    x = result.model_input.astype(np.float32)
    sanity = checks.sanity_check(model, result.method, x, result.class_index, result.layer)
    curves = checks.faithfulness(model, result)
    return {
        "sanity_correlation": round(sanity.correlation, 6),
        "sanity_passed": bool(sanity.passed),
        "sanity_threshold": checks.SANITY_THRESHOLD,
        "randomised_layers": checks.randomised_layers(model),
        "deletion_auc": round(curves.deletion_auc, 6),
        "insertion_auc": round(curves.insertion_auc, 6),
    }


def _print_explain(result: dict) -> None:
    layer = f" at {result['layer']}" if result["layer"] else ""
    print(f"{result['method']}{layer}: class {result['class_index']} {result['label']} ({result['probability']:.1%})")
    print(f"peak at row {result['peak'][0]}, column {result['peak'][1]} of the input image")
    if result["out"]:
        print(f"overlay written to {result['out']}")
    if result["npy"]:
        print(f"map ({result['size'][0]}x{result['size'][1]} float32 in [0, 1]) written to {result['npy']}")
    if result.get("checks"):
        c = result["checks"]
        verdict = "passes" if c["sanity_passed"] else "FAILS"
        print(
            f"sanity check {verdict}: rank correlation {c['sanity_correlation']:.2f} with "
            f"{', '.join(c['randomised_layers'])} randomised (threshold {c['sanity_threshold']})"
        )
        print(f"deletion area {c['deletion_auc']:.2f} (lower is better), insertion {c['insertion_auc']:.2f} (higher)")


def add_visualize(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "visualize",
        help="feature visualisation: optimise an image that a channel (or class) responds to most",
        description="Lucid-style optimisation (Fourier image, decorrelated colour, jitter/scale/rotate each step). "
        "--layer logits optimises class logits. The natural activation is the channel's mean over "
        "--natural-images images of --source (default: the run's data, else the built-in dataset).",
    )
    model_args(p)
    p.add_argument("--layer", required=True, help="a spatial layer (see `activations --layer list`), or `logits`")
    p.add_argument("--channel", required=True, help="channel numbers: 3, 0,5,9 or 0-7")
    p.add_argument("--steps", type=int, default=256, help="optimisation steps (default 256)")
    p.add_argument("--size", type=int, default=128, help="picture side in pixels (default 128)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--source", help="data for the natural activation (default: the run's, else the built-in)")
    p.add_argument("--natural-images", type=int, default=200, help="images for it (default 200; 0 skips)")
    p.add_argument("--out", metavar="PNG", help="write the pictures side by side here")
    add_json(p)
    p.set_defaults(run=cmd_visualize, show=_print_visualize)


def _natural_source(args: argparse.Namespace) -> str:
    """The data a channel's natural activation is measured on: --source, else the run's own, else the default."""
    return args.source or run_source(args) or DEFAULT_SOURCE


def cmd_visualize(args: argparse.Namespace) -> dict:
    t0 = time.perf_counter()
    model = explainable(args)
    channels = _channel_list(args.channel)
    settings = featurevis.Settings(steps=args.steps, size=args.size, seed=args.seed)
    pictures = featurevis.visualize(model, args.layer, channels, settings, fraction_progress("optimising"))
    result = {
        "layer": args.layer,
        "channels": channels,
        "activation": [round(p.activation, 6) for p in pictures],
        "natural_mean_activation": None,
        "ratio": None,
        "natural_source": None,
        "cached": [p.cached for p in pictures],
        "steps": settings.steps,
        "size": settings.size,
        "seconds": 0.0,
        "out": None,
    }
    if args.layer != featurevis.LOGITS and args.natural_images > 0:
        source = _natural_source(args)
        found = top_examples.top_examples(
            model, source, [args.layer], k=1, limit=args.natural_images, progress=stage_progress("natural images")
        )[args.layer]
        natural = [float(found.natural_mean[c]) for c in channels]
        result["natural_mean_activation"] = [round(v, 6) for v in natural]
        pairs = zip(pictures, natural, strict=True)
        result["ratio"] = [round(p.activation / v, 3) if v > 0 else None for p, v in pairs]
        result["natural_source"] = source
    if args.out:
        tiles = [label_tile(p.image, f"#{p.channel}") for p in pictures]
        write_png(args.out, to_png(np.concatenate(tiles, axis=1)))
        result["out"] = args.out
    result["seconds"] = round(time.perf_counter() - t0, 2)
    return result


def _print_visualize(result: dict) -> None:
    natural = result["natural_mean_activation"] or [None] * len(result["channels"])
    ratio = result["ratio"] or [None] * len(result["channels"])
    for c, a, n, r in zip(result["channels"], result["activation"], natural, ratio, strict=True):
        extra = f", natural mean {n:.3f} ({r:.1f}x)" if n is not None and r is not None else ""
        print(f"{result['layer']} channel {c}: activation {a:.3f}{extra}")
    if result["natural_source"]:
        print(f"natural images: {result['natural_source']}")
    print(f"{result['seconds']:.1f} s" + (f"; pictures written to {result['out']}" if result["out"] else ""))


def add_top_examples(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "top-examples",
        help="the dataset images (and the crop) that activate each channel of a layer most",
        description="One forward pass over SOURCE (as for inspect-data); per channel the k images with the "
        "highest activation, where it peaks, and that position's receptive field in the image. Without SOURCE, "
        "the run's own data; an imported model that came without data needs SOURCE.",
    )
    p.add_argument(
        "source",
        metavar="SOURCE",
        nargs="?",
        help="a dataset: a folder of class folders, shapes[:...], a .zip or tfds:NAME (default: the run's data)",
    )
    model_args(p)
    p.add_argument("--layer", required=True, help="a spatial layer")
    p.add_argument("--k", type=int, default=9, help="images per channel (default 9)")
    p.add_argument("--channel", help="only these channels in the output: 3, 0,5,9 or 0-7 (default all)")
    p.add_argument("--limit", type=int, help="scan at most this many images, spread over the classes")
    add_json(p)
    p.set_defaults(run=cmd_top_examples, show=_print_top_examples)


def cmd_top_examples(args: argparse.Namespace) -> dict:
    source = args.source or run_source(args)
    if not source:
        whose = "this run has no data of its own (an imported model)" if args.run_dir else "a backbone has no data"
        raise ConvScopeError(
            f"give SOURCE, the images to scan: {whose}. A folder of class folders, shapes, a .zip or tfds:NAME"
        )
    model = explainable(args)
    layer = model.check_layer(args.layer)
    channels = _channel_list(args.channel) if args.channel else None
    if channels:
        featurevis.check_target(model, layer, channels)  # before a long scan, not after it
    found = top_examples.top_examples(
        model, source, [layer], k=args.k, limit=args.limit, progress=stage_progress("scanning")
    )[layer]
    return found.to_json(channels)


def _print_top_examples(result: dict) -> None:
    cached = " (cached)" if result["cached"] else ""
    print(f"{result['layer']}: top {result['k']} of {result['images']} images{cached}")
    for ch in result["channels"][:64]:
        best = ", ".join(f"{e['rel'].rsplit('/', 1)[-1]} {e['activation']:.2f}" for e in ch["examples"][:3])
        print(f"  channel {ch['channel']:>4}: {best}")
    if len(result["channels"]) > 64:
        print(f"  ... {len(result['channels']) - 64} more channels (--json for all)")
