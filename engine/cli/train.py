"""Commands that train: `train`, `finetune`, `lr-find`, and `worker` (one dashboard job, the same code path)."""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import sys
import tempfile
import threading
from dataclasses import replace
from pathlib import Path

from engine import backbones, runs
from engine.backbones import DEFAULT_BACKBONE
from engine.cli.common import add_json, counts_progress, stderr_progress
from engine.config import OPTIMIZERS, TRAIN_MODES, AugmentConfig, DataConfig, HeadConfig, TrainConfig
from engine.errors import ConvScopeError
from engine.jobs import worker
from engine.training import changes, distribute, finetune, fit, lr_finder, presets

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
            counts_progress(stage, fields)
        elif stage == "training" and "history" in fields and fields["history"].get("loss"):
            h = fields["history"]
            parts = [f"{k} {h[k][-1]:.4f}" for k in ("loss", "accuracy", "val_loss", "val_accuracy") if h.get(k)]
            print(f"epoch {len(h['loss'])}/{fields['epochs']}: " + ", ".join(parts), file=sys.__stderr__, flush=True)
        elif stage == "data" and fields.get("message", "").startswith("Corrections"):
            print(fields["message"], file=sys.__stderr__, flush=True)
        elif stage in ("evaluating", "saving"):
            print(f"{stage}…", file=sys.__stderr__, flush=True)
        elif stage == "follow-up":  # the run is finished and usable; this is what follows
            print(f"finished; {fields.get('message', '').lower()}…", file=sys.__stderr__, flush=True)


def _stop_on_interrupt() -> threading.Event:
    """An event the first Ctrl-C sets (training stops after the batch); a second Ctrl-C aborts."""
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
    if resume and distribute.cluster() is not None:
        raise ConvScopeError(
            "resuming a run on a cluster is not supported (only the chief has its checkpoint): "
            "resume it on one machine, without TF_CONFIG"
        )
    distribute.start()


@contextlib.contextmanager
def _run_folder(out: str | None, backbone: str, mode: str):
    """The run this process trains into: the real one, or on a worker other than the chief a throwaway one."""
    if distribute.is_chief():
        yield runs.create(out, backbone=backbone, mode=mode)
        return
    with tempfile.TemporaryDirectory(prefix="convscope-worker-") as tmp:
        yield runs.create(str(Path(tmp) / "run"), backbone=backbone, mode=mode)


def _as_worker(result: dict) -> dict:
    """A worker's result: its run folder was thrown away; the chief's holds the run."""
    if distribute.is_chief():
        return result
    return {**result, "run_dir": None, "worker": distribute.task_name()}


def add_train(sub: argparse._SubParsersAction) -> None:
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
    add_timeline_flag(p)
    add_json(p)
    p.set_defaults(run=cmd_train, show=_print_train)


def add_timeline_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--timeline",
        action=argparse.BooleanOptionalAction,
        help="after every epoch, Grad-CAM of a few fixed validation images, kept with the run "
        "(`python -m engine timeline RUN_DIR`; default on; a resumed run keeps its own setting)",
    )


def _train_config(args: argparse.Namespace) -> TrainConfig:
    """A TrainConfig from the defaults, then the preset, then the options given on the command line."""
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
    if "timeline" in given:
        top["timeline"] = given["timeline"]
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


def cmd_train(args: argparse.Namespace) -> dict:
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


def _print_train(result: dict) -> None:
    print(f"{result['status']}: {result['run_dir'] or 'this worker wrote no run folder'}")
    if result["reason"]:
        print(f"  {result['reason']}")
    for key in ("val_accuracy", "test_accuracy"):
        if result.get(key) is not None:
            print(f"  {key.replace('_', ' ')}: {result[key]:.3f}")
    print(f"  {result['epochs_run']} epochs in {result['seconds']:.1f} s")
    if result.get("corrections"):
        c = result["corrections"]
        print(f"  on corrected data: {c['relabelled']} relabelled, {c['excluded']} excluded (engine data-fix)")
    strategy = result.get("strategy") or {}
    if strategy.get("replicas", 1) > 1:
        print(
            f"  {strategy['name']}: {strategy['replicas']} replicas on {strategy['workers']} worker(s)"
            + (f", this is {result['worker']} (the chief wrote the run)" if result.get("worker") else "")
        )
    if result.get("params"):
        p = result["params"]
        print(f"  parameters: {p['trainable']:,} trainable, {p['non_trainable']:,} frozen")


def _add_finetune_parser(sub: argparse._SubParsersAction, name: str) -> argparse.ArgumentParser:
    """The options `finetune` and `lr-find` share: the parent run, where to unfreeze, BatchNorm, optimiser, batch."""
    finding = name == "lr-find"
    p = sub.add_parser(
        name,
        help="the learning-rate finder on a fine-tune setup (the parent's weights are not changed)"
        if finding
        else "fine-tune a finished run: unfreeze the backbone from a block and train on",
        description="RUN_DIR is a finished feature-mode run, an imported Keras model (import-model) or an earlier "
        "fine-tune (a folder, or a name under CONVSCOPE_RUNS_DIR). Give where to unfreeze with --unfreeze-from or "
        "--unfreeze-top (an imported model: a layer name such as base_model/block2_conv, an index into its nested "
        "base model's layers, or head)"
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
    p.add_argument(
        "--source",
        metavar="LABELLED",
        help="an imported run: the labelled data to fine-tune on, class folders named as its classes "
        "(default: the data given at import)",
    )
    p.add_argument("--bn", choices=("frozen", "train"), default="frozen", help="BatchNorm (default frozen)")
    p.add_argument("--optimizer", choices=OPTIMIZERS, help="default: the parent's")
    p.add_argument("--batch-size", type=int, help="default: the parent's")
    return p


def add_finetune(sub: argparse._SubParsersAction) -> None:
    p = _add_finetune_parser(sub, "finetune")
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
    add_timeline_flag(p)
    add_json(p)
    p.set_defaults(run=cmd_finetune, show=_print_finetune)


def _finetune_setup(args: argparse.Namespace, default_from: str = "") -> tuple[runs.Run, TrainConfig]:
    """(parent run, TrainConfig of the fine-tune) from the command line; a preset fills what is not given."""
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
    return parent, finetune.finetune_config(parent, preset=preset or "", source=args.source or "", **options)


def cmd_finetune(args: argparse.Namespace) -> dict:
    stop = _stop_on_interrupt()
    _start_strategy(bool(args.resume))
    if args.resume:
        run = runs.open_run(args.parent)
        result = fit.resume(run, epochs=args.epochs, stop=stop, report=_TrainProgress())
    else:
        parent, config = _finetune_setup(args)
        config = config if args.timeline is None else replace(config, timeline=args.timeline)
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


def _print_finetune(result: dict) -> None:
    _print_train(result)
    if result.get("parent"):
        print(f"  fine-tuned from {result['parent']}")
    boundary = result.get("boundary") or {}
    if boundary:
        print(f"  boundary: {boundary['mode']} ({boundary['why']})")
    if result.get("changes"):
        width = max(16, *(len(row["block"]) for row in result["changes"]))  # an imported model's "base/layer"
        print(f"  {'what changed':<{width + 2}} weight change   CKA (1 = same features)")
        for row in result["changes"]:
            cka = "" if row["cka"] is None else f"{row['cka']:.3f}"
            change = "" if row["weight_change"] is None else f"{row['weight_change']:.4f}"
            print(f"    {row['block']:<{width}} {change:>13}   {cka:>7}")


def add_lr_find(sub: argparse._SubParsersAction) -> None:
    p = _add_finetune_parser(sub, "lr-find")
    p.add_argument("--steps", type=int, default=100, help="most batches in the sweep (default 100)")
    p.add_argument("--start-lr", type=float, default=1e-7, help="default 1e-7")
    p.add_argument("--end-lr", type=float, default=1.0, help="default 1")
    add_json(p)
    p.set_defaults(run=cmd_lr_find, show=_print_lr_find)


def cmd_lr_find(args: argparse.Namespace) -> dict:
    parent, config = _finetune_setup(args, default_from="head")

    def progress(done: int, total: int) -> None:
        stderr_progress("learning-rate sweep", done, total)

    return lr_finder.lr_find(
        config,
        steps=args.steps,
        start_lr=args.start_lr,
        end_lr=args.end_lr,
        report=lambda stage="", **f: counts_progress(stage, f),
        progress=progress,
    )


def _print_lr_find(result: dict) -> None:
    def rate(value) -> str:
        return "none (too few points)" if value is None else f"{value:.2e}"

    print(f"suggested learning rate: {rate(result['suggestion'])}")
    print(f"  steepest descent: {rate(result['steepest'])}; minimum / 10: {rate(result['min_over_10'])}")
    print(f"  {len(result['lrs'])} steps" + (", stopped when the loss diverged" if result.get("diverged") else ""))


def add_worker(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "worker",
        help="run one dashboard job (the dashboard starts it; a JSON request on stdin)",
        description="The dashboard's job registry runs each training, fine-tune, learning-rate sweep and latency "
        "measurement in its own `python -m engine worker --json` process: one JSON request on stdin, progress "
        "as JSON lines on stdout, then the result. A `stop` line on stdin (or its end) stops it within one batch. "
        "See engine/jobs/worker.py.",
    )
    add_json(p, help="print one JSON object (the dashboard always asks for it)")
    p.set_defaults(run=cmd_worker, show=lambda result: print(json.dumps(result)))


def cmd_worker(args: argparse.Namespace) -> dict:
    return worker.serve(_stop_on_interrupt())
