"""ConvScope command line: `python -m engine COMMAND ... [--json]`.

With --json, exactly one JSON object goes to stdout; logs go to stderr.
Exit codes: 0 success, 1 a training run that failed (its JSON says why),
2 bad input (with {"error": "..."} under --json).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's C++ chatter quiet

from engine.errors import ConvScopeError  # noqa: E402

# Lines TensorFlow's C++ side writes to stderr that TF_CPP_MIN_LOG_LEVEL cannot stop:
# absl writes everything logged before absl::InitializeLog() (library load time), and
# cuInit's failure is logged at ERROR. No environment variable silences them (TF 2.21;
# CUDA_VISIBLE_DEVICES="" or -1 still logs both), so they are filtered by text.
_TF_NOISE = (
    "before absl::InitializeLog() is called",
    "oneDNN custom operations are on",
    "cpu_feature_guard",
    "rebuild TensorFlow with the appropriate compiler flags",
)
# Only noise on a machine without an NVIDIA GPU; where one exists they are real problems.
_CUDA_NOISE = ("cuda drivers", "cuinit", "cudart_stub", "cuda_platform", "cuda error")


def _has_gpu_device() -> bool:
    """True when the machine exposes an NVIDIA GPU (Linux device nodes, or WSL's /dev/dxg)."""
    return any(Path("/dev").glob("nvidia[0-9]*")) or Path("/dev/dxg").exists()


def _import_tensorflow_quietly() -> None:
    """Import TensorFlow and initialise its devices with known start-up noise removed from stderr.

    The C++ side writes to file descriptor 2 directly, so Python's sys.stderr cannot
    catch it: fd 2 goes to a temporary file for the import, then every line that is
    not known noise is written back. Nothing is hidden from TensorFlow itself: a GPU
    stays visible.
    """
    if "tensorflow" in sys.modules:
        return
    noise = _TF_NOISE + (() if _has_gpu_device() else _CUDA_NOISE)
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            import tensorflow as tf

            tf.config.list_physical_devices()  # cuInit runs here, once
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            lines = captured.read().decode(errors="replace").splitlines(keepends=True)
            kept = [line for line in lines if not any(n.lower() in line.lower() for n in noise)]
            sys.stderr.write("".join(kept))
            sys.stderr.flush()


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
    from engine.model.classifier import ImageNetClassifier, RunClassifier

    if args.run_dir:
        from engine import runs

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


def _features_progress(fields: dict) -> None:
    """A features stage on stderr: "Backbone features: 300 from the cache" when they were read, not computed."""
    message = fields.get("message", "features")
    if fields.get("cached"):
        what = message.removeprefix("Computing ")
        print(f"{what[:1].upper()}{what[1:]}: {fields['total']:,} from the cache", file=sys.__stderr__, flush=True)
    else:
        _stderr_progress(message, fields["done"], fields["total"])


def _counts_progress(stage: str, fields: dict) -> None:
    """A report(stage, **fields) with counts (data, features) on stderr; other stages print nothing."""
    if stage == "features" and "done" in fields:
        _features_progress(fields)
    elif "done" in fields:
        _stderr_progress(fields.get("message", stage), fields["done"], fields["total"])


def _stderr_progress(stage: str, done: int, total: int) -> None:
    """Progress on stderr (stdout stays one JSON object), at most every half second."""
    now = time.monotonic()
    tty = sys.__stderr__.isatty()
    if done < total and now - _stderr_progress.last < (0.5 if tty else 5.0):
        return
    _stderr_progress.last = now
    end = "\n" if done >= total or not tty else "\r"
    print(f"{stage}: {done}/{total}", end=end, file=sys.__stderr__, flush=True)


_stderr_progress.last = 0.0


def cmd_make_shapes(args: argparse.Namespace) -> dict:
    from pathlib import Path

    from engine.data import shapes
    from engine.data.sources import shapes_config

    out = Path(args.out_dir)
    if out.exists() and any(out.iterdir()):
        raise ConvScopeError(f"{out} exists and is not empty; give a new folder")
    opts = f"per_class={args.per_class},classes={args.classes},seed={args.seed},size={args.size}"
    config = shapes_config(opts)
    boxes = shapes.generate(out, config, lambda d, t: _stderr_progress("Drawing shapes", d, t))
    return {
        "out": str(out),
        "classes": list(config.class_names),
        "num_images": len(boxes),
        "boxes": str(out / "boxes.json"),
    }


def _print_make_shapes(result: dict) -> None:
    print(f"wrote {result['num_images']} images of {', '.join(result['classes'])} to {result['out']}")
    print(f"object boxes: {result['boxes']}")


def cmd_inspect_data(args: argparse.Namespace) -> dict:
    from engine.config import DataConfig
    from engine.data.report import inspect_report
    from engine.data.sources import open_dataset

    DataConfig(source=args.source, val_frac=args.val, test_frac=args.test, seed=args.seed)  # validates
    dataset = open_dataset(args.source, _stderr_progress)
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
    for w in result["warnings"]:
        print(f"warning: {w}")
    for p in result["problems"]:
        print(f"problem: {p}")


def _explainable(args: argparse.Namespace):
    from engine.explain import Explainable

    return Explainable.from_run(args.run_dir) if args.run_dir else Explainable.from_backbone(args.backbone)


def _read_image(path: str):
    from engine import imaging

    return imaging.load_rgb(path)


def cmd_activations(args: argparse.Namespace) -> dict:
    from engine.explain import activations as acts_mod
    from engine.explain.overlay import to_png

    model = _explainable(args)
    if args.layer == "list":
        return {"model": model.name, "layers": [info.to_json() for info in model.layers()]}
    if not args.image:
        raise ConvScopeError("give an IMAGE; only `--layer list` works without one")
    if args.channels < 1:
        raise ConvScopeError(f"--channels must be at least 1, got {args.channels}")
    rgb = _read_image(args.image)
    layer = model.check_layer(args.layer)
    acts = model.activations(model.prepare(rgb)[None], layer)[0]
    order = acts_mod.channel_order(acts, args.sort)
    shown = order[: args.channels]
    result = {
        "layer": layer,
        "shape": list(acts.shape),
        "channels": int(acts.shape[-1]),
        "shown_channels": [int(c) for c in shown],
        "stats": acts_mod.layer_stats(acts),
        "out": None,
    }
    if args.out:
        _write_png(args.out, to_png(acts_mod.channel_grid(acts, shown)))
        result["out"] = args.out
    return result


def _write_png(path: str, data: bytes) -> None:
    from pathlib import Path

    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(out)  # never a half-written PNG


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


def _natural_source(args: argparse.Namespace, model) -> str:
    """The data a channel's natural activation is measured on: --source, else the run's own, else the default."""
    from engine.data.sources import DEFAULT_SOURCE

    if args.source:
        return args.source
    if args.run_dir:
        from pathlib import Path

        from engine.runs import Run

        return Run(Path(args.run_dir)).config().get("data", {}).get("source", DEFAULT_SOURCE)
    return DEFAULT_SOURCE


def cmd_visualize(args: argparse.Namespace) -> dict:
    import time

    import numpy as np

    from engine.explain import featurevis, top_examples
    from engine.explain.overlay import label_tile, to_png

    t0 = time.perf_counter()
    model = _explainable(args)
    channels = _channel_list(args.channel)
    settings = featurevis.Settings(steps=args.steps, size=args.size, seed=args.seed)
    pictures = featurevis.visualize(model, args.layer, channels, settings, _fraction_progress("optimising"))
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
        source = _natural_source(args, model)
        found = top_examples.top_examples(
            model, source, [args.layer], k=1, limit=args.natural_images, progress=_stage_progress("natural images")
        )[args.layer]
        natural = [float(found.natural_mean[c]) for c in channels]
        result["natural_mean_activation"] = [round(v, 6) for v in natural]
        pairs = zip(pictures, natural, strict=True)
        result["ratio"] = [round(p.activation / v, 3) if v > 0 else None for p, v in pairs]
        result["natural_source"] = source
    if args.out:
        tiles = [label_tile(p.image, f"#{p.channel}") for p in pictures]
        _write_png(args.out, to_png(np.concatenate(tiles, axis=1)))
        result["out"] = args.out
    result["seconds"] = round(time.perf_counter() - t0, 2)
    return result


def _fraction_progress(stage: str):
    return lambda f: _stderr_progress(stage, round(f * 100), 100)


def _stage_progress(stage: str):
    return lambda done, total: _stderr_progress(stage, done, total)


def _print_visualize(result: dict) -> None:
    natural = result["natural_mean_activation"] or [None] * len(result["channels"])
    ratio = result["ratio"] or [None] * len(result["channels"])
    for c, a, n, r in zip(result["channels"], result["activation"], natural, ratio, strict=True):
        extra = f", natural mean {n:.3f} ({r:.1f}x)" if n is not None and r is not None else ""
        print(f"{result['layer']} channel {c}: activation {a:.3f}{extra}")
    if result["natural_source"]:
        print(f"natural images: {result['natural_source']}")
    print(f"{result['seconds']:.1f} s" + (f"; pictures written to {result['out']}" if result["out"] else ""))


def cmd_top_examples(args: argparse.Namespace) -> dict:
    from engine.explain import top_examples
    from engine.explain.featurevis import check_target

    model = _explainable(args)
    layer = model.check_layer(args.layer)
    channels = _channel_list(args.channel) if args.channel else None
    if channels:
        check_target(model, layer, channels)  # before a long scan, not after it
    found = top_examples.top_examples(
        model, args.source, [layer], k=args.k, limit=args.limit, progress=_stage_progress("scanning")
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


def cmd_export(args: argparse.Namespace) -> dict:
    from engine.export import export_run

    checking = _stage_progress("checking")
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


def cmd_report(args: argparse.Namespace) -> dict:
    from engine.export.report import write_report

    return write_report(args.run_dir, args.out, progress=_stderr_progress)


def _print_report(result: dict) -> None:
    print(f"report written to {result['path']} ({result['bytes'] / 1e6:.1f} MB, opens offline)")


def cmd_explain(args: argparse.Namespace) -> dict:
    from engine.explain import explain_image
    from engine.explain.overlay import overlay, to_png

    model = _explainable(args)
    rgb = _read_image(args.image)
    result = explain_image(model, rgb, args.method, args.class_index, args.layer)
    out = result.to_json()
    out["out"] = None
    if args.out:
        _write_png(args.out, to_png(overlay(rgb, result.display, args.opacity, args.colormap)))
        out["out"] = args.out
    return out


def _print_explain(result: dict) -> None:
    layer = f" at {result['layer']}" if result["layer"] else ""
    print(f"{result['method']}{layer}: class {result['class_index']} {result['label']} ({result['probability']:.1%})")
    print(f"peak at row {result['peak'][0]}, column {result['peak'][1]} of the input image")
    if result["out"]:
        print(f"overlay written to {result['out']}")


def _train_config(args: argparse.Namespace):
    """A TrainConfig from the defaults, then the preset, then the options given on the command line."""
    from dataclasses import replace

    from engine import backbones
    from engine.config import AugmentConfig, DataConfig, HeadConfig, TrainConfig
    from engine.training import presets

    config = TrainConfig(data=DataConfig(source=args.source), mode=args.mode or "feature")  # the mode's defaults
    if args.preset:
        config = presets.get(args.preset).apply(config)
    given = {k: v for k, v in vars(args).items() if v is not None}
    if "mode" in given and "backbone" not in given and not args.preset:
        config = replace(config, backbone="small_cnn" if given["mode"] == "scratch" else config.backbone)
    top = {k: given[k] for k in ("backbone", "mode", "epochs", "batch_size", "optimizer", "seed") if k in given}
    if "lr" in given:
        top["learning_rate"] = given["lr"]
    if "early_stopping" in given:
        top["early_stopping"] = given["early_stopping"]
    if "aug_views" in given:
        top["aug_views"] = given["aug_views"]
    if args.class_weights:
        top["class_weights"] = True
    config = replace(config, **top)
    if "hidden" in given or "dropout" in given or "l2" in given:
        config = replace(
            config,
            head=HeadConfig.parse(
                given.get("hidden", ",".join(map(str, config.head.hidden))),
                given.get("dropout", config.head.dropout),
                given.get("l2", config.head.l2),
            ),
        )
    data = {}
    if "image_size" in given:
        data["image_size"] = given["image_size"]
    elif not args.preset:
        data["image_size"] = backbones.get_spec(config.backbone).input_size
    for key, name in (("val", "val_frac"), ("test", "test_frac"), ("resize", "resize")):
        if key in given:
            data[name] = given[key]
    if "augment" in given:
        data["augment"] = AugmentConfig.parse(given["augment"]).__dict__  # from_json takes the dict form
    data["seed"] = config.seed
    return replace(config, data=DataConfig.from_json({**config.data.to_json(), **data}))


DISTRIBUTED = (
    "Trains on every local GPU (MirroredStrategy; --batch-size is the global batch, a multiple of the GPUs), "
    "or with the other workers of the cluster TF_CONFIG describes (experimental; run the same command on each). "
    "See the README's 'Several GPUs or machines'."
)


class _TrainProgress:
    """Training progress on stderr: stages as they go, one line per epoch."""

    def __init__(self, run_dir=None) -> None:
        self.run_dir = run_dir

    def __call__(self, stage: str = "", **fields) -> None:
        if self.run_dir and stage in ("features", "training"):
            print(f"run folder: {self.run_dir}", file=sys.__stderr__, flush=True)
            self.run_dir = None
        if stage in ("data", "features") and "done" in fields:
            _counts_progress(stage, fields)
        elif stage == "training" and "history" in fields and fields["history"].get("loss"):
            h = fields["history"]
            parts = [f"{k} {h[k][-1]:.4f}" for k in ("loss", "accuracy", "val_loss", "val_accuracy") if h.get(k)]
            print(f"epoch {len(h['loss'])}/{fields['epochs']}: " + ", ".join(parts), file=sys.__stderr__, flush=True)
        elif stage in ("evaluating", "saving"):
            print(f"{stage}…", file=sys.__stderr__, flush=True)


def _stop_on_interrupt():
    """An event the first Ctrl-C sets (training stops after the batch); a second Ctrl-C aborts."""
    import signal
    import threading

    stop = threading.Event()

    def on_interrupt(signum, frame) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        print("stopping after this batch (Ctrl-C again to abort)…", file=sys.__stderr__, flush=True)
        stop.set()

    signal.signal(signal.SIGINT, on_interrupt)
    return stop


def _start_strategy(resume: bool) -> None:
    """Choose the tf.distribute strategy before TensorFlow runs anything (engine.training.distribute)."""
    from engine.training import distribute

    if resume and distribute.cluster() is not None:
        raise ConvScopeError(
            "resuming a run on a cluster is not supported (only the chief has its checkpoint): "
            "resume it on one machine, without TF_CONFIG"
        )
    distribute.start()


@contextlib.contextmanager
def _run_folder(out: str | None, backbone: str, mode: str):
    """The run this process trains into: the real one, or on a worker other than the chief a throwaway one."""
    from engine import runs
    from engine.training import distribute

    if distribute.is_chief():
        yield runs.create(out, backbone=backbone, mode=mode)
        return
    with tempfile.TemporaryDirectory(prefix="convscope-worker-") as tmp:
        yield runs.create(str(Path(tmp) / "run"), backbone=backbone, mode=mode)


def _as_worker(result: dict) -> dict:
    """A worker's result: its run folder was thrown away; the chief's holds the run."""
    from engine.training import distribute

    if distribute.is_chief():
        return result
    return {**result, "run_dir": None, "worker": distribute.task_name()}


def cmd_train(args: argparse.Namespace) -> dict:
    from engine import runs
    from engine.training import distribute, fit

    stop = _stop_on_interrupt()
    _start_strategy(bool(args.resume))
    if args.resume:
        run = runs.open_run(args.resume)
        return fit.resume(run, epochs=args.epochs, stop=stop, report=_TrainProgress())
    if not args.source:
        raise ConvScopeError("give a SOURCE (shapes, a folder, a .zip or tfds:NAME), or --resume RUN_DIR")
    config = _train_config(args)
    with _run_folder(args.out, config.backbone, config.mode) as run:
        # Named once the data opened: a run whose data cannot be read leaves no folder behind.
        progress = _TrainProgress(run.path if distribute.is_chief() else None)  # a worker's folder is thrown away
        return _as_worker(fit.train(config, run, stop=stop, report=progress))


def cmd_worker(args: argparse.Namespace) -> dict:
    from engine.jobs import worker

    return worker.serve(_stop_on_interrupt())


def _finetune_setup(args: argparse.Namespace, default_from: str = ""):
    """(parent run, TrainConfig of the fine-tune) from the command line; a preset fills what is not given."""
    from engine.training import finetune, presets

    parent = finetune.parent_of(args.parent)
    options: dict = {}
    preset = getattr(args, "preset", None)
    if preset:
        options = presets.get_finetune(preset).options(parent)
    if args.unfreeze_from or args.unfreeze_top:
        options.pop("unfreeze_from", None)
        options.pop("unfreeze_top", None)
        options["unfreeze_from" if args.unfreeze_from else "unfreeze_top"] = args.unfreeze_from or args.unfreeze_top
    if "unfreeze_from" not in options and "unfreeze_top" not in options:
        if not default_from:
            raise ConvScopeError("say where fine-tuning starts: --unfreeze-from NAME, --unfreeze-top N, or --preset")
        options["unfreeze_from"] = default_from
    for key, name in (
        ("epochs", "epochs"),
        ("lr", "learning_rate"),
        ("optimizer", "optimizer"),
        ("batch_size", "batch_size"),
        ("layer_decay", "layer_decay"),
        ("warmup", "warmup"),
    ):
        value = getattr(args, key, None)
        if value is not None and not (key in ("layer_decay", "warmup") and name in options):
            options[name] = value
    options["bn"] = args.bn
    return parent, finetune.finetune_config(parent, preset=preset or "", **options)


def cmd_finetune(args: argparse.Namespace) -> dict:
    from engine import runs
    from engine.training import changes, distribute, fit

    stop = _stop_on_interrupt()
    _start_strategy(bool(args.resume))
    if args.resume:
        run = runs.open_run(args.parent)
        result = fit.resume(run, epochs=args.epochs, stop=stop, report=_TrainProgress())
    else:
        parent, config = _finetune_setup(args)
        with _run_folder(args.out, config.backbone, "finetune") as run:
            progress = _TrainProgress(run.path if distribute.is_chief() else None)
            result = fit.train(config, run, stop=stop, report=progress)
            config = run.config()
        if not distribute.is_chief():
            return {**_as_worker(result), "parent": config.get("parent"), "changes": None}
    config = run.config()
    params = result.get("params") or {}
    out = {
        **result,
        "parent": config.get("parent"),
        "trainable_params": params.get("trainable"),
        "non_trainable_params": params.get("non_trainable"),
        "boundary": result.get("boundary"),
        "changes": None,
    }
    if result["status"] == "finished":
        print("measuring what changed…", file=sys.__stderr__, flush=True)
        out["changes"] = changes.what_changed(runs.open_run(config["finetune"]["parent"]), run)["blocks"]
    return out


def cmd_lr_find(args: argparse.Namespace) -> dict:
    from engine.training import lr_finder

    parent, config = _finetune_setup(args, default_from="head")

    def progress(done: int, total: int) -> None:
        _stderr_progress("learning-rate sweep", done, total)

    result = lr_finder.lr_find(
        config,
        steps=args.steps,
        start_lr=args.start_lr,
        end_lr=args.end_lr,
        report=lambda stage="", **f: _counts_progress(stage, f),
        progress=progress,
    )
    return result


def _print_finetune(result: dict) -> None:
    _print_train(result)
    if result.get("parent"):
        print(f"  fine-tuned from {result['parent']}")
    boundary = result.get("boundary") or {}
    if boundary:
        print(f"  boundary: {boundary['mode']} ({boundary['why']})")
    if result.get("changes"):
        print("  what changed       weight change   CKA (1 = same features)")
        for row in result["changes"]:
            cka = "" if row["cka"] is None else f"{row['cka']:.3f}"
            change = "" if row["weight_change"] is None else f"{row['weight_change']:.4f}"
            print(f"    {row['block']:<16} {change:>13}   {cka:>7}")


def _print_lr_find(result: dict) -> None:
    def rate(value) -> str:
        return "none (too few points)" if value is None else f"{value:.2e}"

    print(f"suggested learning rate: {rate(result['suggestion'])}")
    print(f"  steepest descent: {rate(result['steepest'])}; minimum / 10: {rate(result['min_over_10'])}")
    print(f"  {len(result['lrs'])} steps" + (", stopped when the loss diverged" if result.get("diverged") else ""))


def _print_train(result: dict) -> None:
    print(f"{result['status']}: {result['run_dir'] or 'this worker wrote no run folder'}")
    if result["reason"]:
        print(f"  {result['reason']}")
    for key in ("val_accuracy", "test_accuracy"):
        if result.get(key) is not None:
            print(f"  {key.replace('_', ' ')}: {result[key]:.3f}")
    print(f"  {result['epochs_run']} epochs in {result['seconds']:.1f} s")
    strategy = result.get("strategy") or {}
    if strategy.get("replicas", 1) > 1:
        print(
            f"  {strategy['name']}: {strategy['replicas']} replicas on {strategy['workers']} worker(s)"
            + (f", this is {result['worker']} (the chief wrote the run)" if result.get("worker") else "")
        )
    if result.get("params"):
        p = result["params"]
        print(f"  parameters: {p['trainable']:,} trainable, {p['non_trainable']:,} frozen")


def cmd_evaluate(args: argparse.Namespace) -> dict:
    from engine import evaluate, runs

    run = runs.open_run(args.run_dir)
    if args.top_k < 1:
        raise ConvScopeError(f"--top-k must be at least 1, got {args.top_k}")
    result = evaluate.evaluate(run, args.source, args.split, top_k=args.top_k, progress=_stderr_progress)
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


_RUNS_USAGE = {"list": "runs [--json]", "rename": "runs rename RUN NAME", "delete": "runs delete RUN"}


def cmd_runs(args: argparse.Namespace) -> dict:
    from engine import runs

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


def _model_args(p: argparse.ArgumentParser) -> None:
    from engine.backbones import DEFAULT_BACKBONE

    group = p.add_mutually_exclusive_group()
    group.add_argument(
        "--run", dest="run_dir", metavar="DIR", help="a trained run folder (model.keras, labels.json, config.json)"
    )
    group.add_argument(
        "--backbone", default=DEFAULT_BACKBONE, help=f"an ImageNet backbone (default {DEFAULT_BACKBONE})"
    )


def build_parser() -> argparse.ArgumentParser:
    from engine.backbones import DEFAULT_BACKBONE

    parser = _Parser(prog="python -m engine", description="ConvScope engine: transfer learning and CNN insight.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    p = sub.add_parser("backbones", help="list the registered backbones and whether they can load here")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(run=cmd_backbones, show=_print_backbones)
    p = sub.add_parser("predict", help="classify images with a backbone's ImageNet head, or with a trained run (--run)")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    _model_args(p)
    p.add_argument("--top", type=int, default=5, help="how many classes to show (default 5; at most the run's)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(run=cmd_predict, show=_print_predictions)

    p = sub.add_parser("make-shapes", help="write the built-in shapes dataset as class folders plus boxes.json")
    p.add_argument("out_dir", metavar="OUT_DIR")
    p.add_argument("--per-class", type=int, default=60, help="images per class (default 60)")
    p.add_argument("--classes", type=int, default=5, help="number of shape classes, 2..8 (default 5)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--size", type=int, default=160, help="image side in pixels (default 160)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(run=cmd_make_shapes, show=_print_make_shapes)

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
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(run=cmd_inspect_data, show=_print_inspect)

    p = sub.add_parser("activations", help="a layer's feature maps for an image, or `--layer list` for the layers")
    p.add_argument("image", metavar="IMAGE", nargs="?")
    _model_args(p)
    p.add_argument("--layer", required=True, help="layer name, or `list`")
    p.add_argument("--sort", choices=("mean", "index"), default="mean", help="channel order (default: most active)")
    p.add_argument("--channels", type=int, default=32, help="channels in the grid (default 32)")
    p.add_argument("--out", metavar="PNG", help="write the channel grid here")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(run=cmd_activations, show=_print_activations)

    from engine.explain.overlay import COLORMAPS

    p = sub.add_parser("explain", help="where the network looked: a CAM or an input attribution for one image")
    p.add_argument("image", metavar="IMAGE")
    _model_args(p)
    p.add_argument(
        "--method",
        default="gradcam",
        help="gradcam, gradcam++, layercam, scorecam, eigencam, cam, "
        "saliency, smoothgrad, integrated_gradients, occlusion (default gradcam)",
    )
    p.add_argument("--class", dest="class_index", type=int, help="class index (default: the predicted class)")
    p.add_argument("--layer", help="convolutional layer (default: the last one)")
    p.add_argument("--out", metavar="PNG", help="write the heatmap overlay here")
    p.add_argument("--opacity", type=float, default=0.5, help="overlay opacity (default 0.5)")
    p.add_argument("--colormap", choices=COLORMAPS, default="Jet")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(run=cmd_explain, show=_print_explain)

    p = sub.add_parser(
        "visualize",
        help="feature visualisation: optimise an image that a channel (or class) responds to most",
        description="Lucid-style optimisation (Fourier image, decorrelated colour, jitter/scale/rotate each step). "
        "--layer logits optimises class logits. The natural activation is the channel's mean over "
        "--natural-images images of --source (default: the run's data, else the built-in dataset).",
    )
    _model_args(p)
    p.add_argument("--layer", required=True, help="a spatial layer (see `activations --layer list`), or `logits`")
    p.add_argument("--channel", required=True, help="channel numbers: 3, 0,5,9 or 0-7")
    p.add_argument("--steps", type=int, default=256, help="optimisation steps (default 256)")
    p.add_argument("--size", type=int, default=128, help="picture side in pixels (default 128)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--source", help="data for the natural activation (default: the run's, else the built-in)")
    p.add_argument("--natural-images", type=int, default=200, help="images for it (default 200; 0 skips)")
    p.add_argument("--out", metavar="PNG", help="write the pictures side by side here")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(run=cmd_visualize, show=_print_visualize)

    p = sub.add_parser(
        "top-examples",
        help="the dataset images (and the crop) that activate each channel of a layer most",
        description="One forward pass over SOURCE (as for inspect-data); per channel the k images with the "
        "highest activation, where it peaks, and that position's receptive field in the image.",
    )
    p.add_argument("source", metavar="SOURCE")
    _model_args(p)
    p.add_argument("--layer", required=True, help="a spatial layer")
    p.add_argument("--k", type=int, default=9, help="images per channel (default 9)")
    p.add_argument("--channel", help="only these channels in the output: 3, 0,5,9 or 0-7 (default all)")
    p.add_argument("--limit", type=int, help="scan at most this many images, spread over the classes")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(run=cmd_top_examples, show=_print_top_examples)

    from engine.export import FORMATS

    p = sub.add_parser(
        "export",
        help="export a finished run (.keras, SavedModel, TFLite float/fp16/int8, ONNX), checked against Keras",
        description="The export is reloaded and compared with the Keras model on the run's test split: top-1 "
        "agreement, largest probability difference, accuracy, latency per image. Exit code 2 when the "
        "format's converter cannot handle this model here (the reason is printed).",
    )
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--format", required=True, choices=FORMATS)
    p.add_argument("--out", metavar="PATH", help="where to write it (default RUN_DIR/exports/, one name per format)")
    p.add_argument("--no-check", action="store_true", help="skip the comparison with the Keras model")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(run=cmd_export, show=_print_export)

    p = sub.add_parser(
        "report",
        help="one self-contained HTML file about a finished run (opens offline)",
        description="Data, configuration, curves of every phase, test metrics, per-class table, confusion matrix, "
        "calibration, the most confident mistakes with their Grad-CAMs, and the checked exports.",
    )
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--out", metavar="HTML", help="where to write it (default RUN_DIR/report.html)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(run=cmd_report, show=_print_report)

    from engine.config import OPTIMIZERS, TRAIN_MODES
    from engine.training import presets

    p = sub.add_parser(
        "train",
        help="train a classifier: a head on a frozen pretrained backbone (feature) or a CNN from scratch",
        description="SOURCE as for inspect-data. Options left out come from --preset, else the defaults. "
        "Exit code 1 when the run failed (NaN loss, out of memory), 2 for bad input. " + DISTRIBUTED,
    )
    p.add_argument("source", metavar="SOURCE", nargs="?")
    p.add_argument("--preset", choices=list(presets.PRESETS), help="start from a classic recipe")
    p.add_argument("--backbone", help=f"registry name (default {DEFAULT_BACKBONE}; small_cnn in scratch mode)")
    p.add_argument("--mode", choices=TRAIN_MODES, help="feature (default) or scratch")
    p.add_argument(
        "--epochs",
        type=int,
        help="most epochs (default: feature 200, scratch 60, ended by early stopping; with --resume: the new total)",
    )
    p.add_argument("--image-size", type=int, help="input side in pixels (default: the backbone's)")
    p.add_argument("--resize", choices=("stretch", "crop", "pad"), help="how images are fitted (default stretch)")
    p.add_argument("--batch-size", type=int, help="default 32")
    p.add_argument("--optimizer", choices=OPTIMIZERS, help="default adam (sgd has momentum 0.9)")
    p.add_argument("--lr", type=float, help="learning rate (default: feature 0.01, scratch 0.001)")
    p.add_argument("--hidden", help="hidden Dense layers of the head, e.g. 256 or 512,512 (default none)")
    p.add_argument("--dropout", type=float, help="dropout in the head (default 0)")
    p.add_argument("--l2", type=float, help="L2 penalty on the head's Dense kernels (default 0.001; 0: off)")
    p.add_argument(
        "--early-stopping",
        type=int,
        metavar="PATIENCE",
        help="stop after PATIENCE epochs without a better validation loss, keeping the best weights "
        "(default 10; 0: off)",
    )
    p.add_argument("--class-weights", action="store_true", help="weight classes by inverse frequency")
    p.add_argument("--augment", help="e.g. flip=horizontal,rotation=0.1,zoom=0.1 (default none)")
    p.add_argument("--aug-views", type=int, help="feature mode: augmented views per image, computed once (default 4)")
    p.add_argument("--val", type=float, help="validation fraction (default 0.15)")
    p.add_argument("--test", type=float, help="test fraction (default 0.15)")
    p.add_argument("--seed", type=int, help="seed for the split, initial weights and shuffling (default 0)")
    p.add_argument("--out", metavar="RUN_DIR", help="run folder (default: a new one under CONVSCOPE_RUNS_DIR)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue a stopped, failed or killed run")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(run=cmd_train, show=_print_train)

    for name in ("finetune", "lr-find"):
        finding = name == "lr-find"
        p = sub.add_parser(
            name,
            help="the learning-rate finder on a fine-tune setup (the parent's weights are not changed)"
            if finding
            else "fine-tune a finished run: unfreeze the backbone from a block and train on",
            description="RUN_DIR is a finished feature-mode run or an earlier fine-tune (a folder, or a name "
            "under CONVSCOPE_RUNS_DIR). Give where to unfreeze with --unfreeze-from or --unfreeze-top"
            + (" (default: the head alone)." if finding else ", or a --preset. " + DISTRIBUTED),
        )
        p.add_argument("parent", metavar="RUN_DIR")
        where = p.add_mutually_exclusive_group(required=False)
        where.add_argument(
            "--unfreeze-from",
            metavar="NAME",
            help="the first block or layer that trains (e.g. block5, a layer name, or a layer index such as 100)",
        )
        where.add_argument("--unfreeze-top", type=int, metavar="N", help="unfreeze the top N blocks of the backbone")
        p.add_argument("--bn", choices=("frozen", "train"), default="frozen", help="BatchNorm (default frozen)")
        p.add_argument("--optimizer", choices=OPTIMIZERS, help="default: the parent's")
        p.add_argument("--batch-size", type=int, help="default: the parent's")
        if finding:
            p.add_argument("--steps", type=int, default=100, help="most batches in the sweep (default 100)")
            p.add_argument("--start-lr", type=float, default=1e-7, help="default 1e-7")
            p.add_argument("--end-lr", type=float, default=1.0, help="default 1")
            p.set_defaults(run=cmd_lr_find, show=_print_lr_find)
        else:
            p.add_argument("--preset", choices=list(presets.FINETUNE_PRESETS), help="a recipe's fine-tuning half")
            p.add_argument(
                "--epochs",
                type=int,
                help="fine-tune epochs, counted on from the parent's (default 10; with --resume: the new total, "
                "the parent's epochs included)",
            )
            p.add_argument("--lr", type=float, help="peak learning rate (default: the parent's / 10)")
            p.add_argument(
                "--layer-decay",
                type=float,
                default=1.0,
                metavar="G",
                help="layer-wise rate decay: each block below the head at G times the rate above (default 1: off)",
            )
            p.add_argument("--warmup", type=float, default=0.1, help="fraction of steps warming up (default 0.1)")
            p.add_argument("--out", metavar="RUN_DIR", help="run folder (default: a new one under CONVSCOPE_RUNS_DIR)")
            p.add_argument("--resume", action="store_true", help="RUN_DIR is a stopped fine-tune: continue it")
            p.set_defaults(run=cmd_finetune, show=_print_finetune)
        p.add_argument("--json", action="store_true", help="print one JSON object")

    p = sub.add_parser(
        "evaluate",
        help="accuracy, per-class metrics, confusion, calibration and mistakes of a trained run",
        description="SOURCE defaults to the run's own data (its test split); another labelled source "
        "(class folders named as the run's classes) defaults to all its images.",
    )
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--source", metavar="SOURCE", help="a labelled source (default: the run's own)")
    p.add_argument("--split", choices=("test", "validation", "train", "all"), help="which images (see above)")
    p.add_argument("--top-k", type=int, default=3, help="k of the top-k accuracy (default 3)")
    p.add_argument(
        "--save-temperature", action="store_true", help="keep the fitted temperature with the run (Predict uses it)"
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(run=cmd_evaluate, show=_print_evaluate)

    p = sub.add_parser(
        "runs",
        help="list training runs, or rename or delete one",
        description="`runs` lists the runs; `runs rename RUN NAME` gives RUN a display name (its folder keeps "
        "its name); `runs delete RUN` removes a run that is not queued or running. RUN is a run folder's "
        "name under the runs folder, or a path.",
    )
    p.add_argument("action", nargs="?", choices=("list", "rename", "delete"), default="list", help="default: list")
    p.add_argument("args", nargs="*", metavar="ARG", help="rename: RUN NAME; delete: RUN")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(run=cmd_runs, show=_print_runs)

    p = sub.add_parser(
        "worker",
        help="run one dashboard job (the dashboard starts it; a JSON request on stdin)",
        description="The dashboard's job registry runs each training, fine-tune, learning-rate sweep and latency "
        "measurement in its own `python -m engine worker --json` process: one JSON request on stdin, progress "
        "as JSON lines on stdout, then the result. A `stop` line on stdin (or its end) stops it within one batch. "
        "See engine/training/worker.py.",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object (the dashboard always asks for it)")
    p.set_defaults(run=cmd_worker, show=lambda result: print(json.dumps(result)))
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    _import_tensorflow_quietly()  # first: building the parser imports the registry, and so Keras
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
    if "error" in result:
        return 2
    return 1 if result.get("status") == "failed" else 0


if __name__ == "__main__":
    sys.exit(main())
