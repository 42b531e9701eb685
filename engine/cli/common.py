"""What every command shares: the quiet TensorFlow start-up, the parser, --json, progress on stderr, running one.

Light on purpose: engine/__main__.py imports it before TensorFlow is loaded, so nothing here
imports an engine module that loads TensorFlow.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from engine.errors import ConvScopeError
from engine.runs.files import atomic_write

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's C++ chatter quiet (its children's too)

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


def has_gpu_device() -> bool:
    """True when the machine exposes an NVIDIA GPU (Linux device nodes, or WSL's /dev/dxg)."""
    return any(Path("/dev").glob("nvidia[0-9]*")) or Path("/dev/dxg").exists()


def import_tensorflow_quietly(gpu: bool) -> None:
    """Import TensorFlow and initialise its devices with known start-up noise removed from stderr.

    The C++ side writes to file descriptor 2 directly, so Python's sys.stderr cannot
    catch it: fd 2 goes to a temporary file for the import, then every line that is
    not known noise is written back. Nothing is hidden from TensorFlow itself: a GPU
    stays visible. With `gpu` the CUDA lines are kept: on a GPU machine they are real problems.
    """
    if "tensorflow" in sys.modules:
        return
    noise = _TF_NOISE + (() if gpu else _CUDA_NOISE)
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            import tensorflow as tf  # heavy: seconds to load; imported here so its start-up noise is caught

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


class Parser(argparse.ArgumentParser):
    """argparse that reports usage errors as JSON when --json was asked for."""

    def error(self, message: str):
        if "--json" in sys.argv:
            print(json.dumps({"error": message}))
            sys.exit(2)
        super().error(message)


def add_json(p: argparse.ArgumentParser, help: str = "print one JSON object") -> None:
    """The --json flag every command has, as the last option of its help."""
    p.add_argument("--json", action="store_true", help=help)


def run(args: argparse.Namespace) -> int:
    """Run the parsed command: one JSON object (--json) or its text on stdout, and the exit code.

    0 success, 1 a training run that failed (its JSON says why), 2 bad input.
    """
    try:
        # Anything a library prints while working goes to stderr, so stdout
        # holds only our JSON object.
        with contextlib.redirect_stdout(sys.stderr):
            result = args.run(args)
    except ConvScopeError as exc:
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


def stderr_progress(stage: str, done: int, total: int) -> None:
    """Progress on stderr (stdout stays one JSON object), at most every half second."""
    global _last_progress
    now = time.monotonic()
    tty = sys.__stderr__.isatty()
    if done < total and now - _last_progress < (0.5 if tty else 5.0):
        return
    _last_progress = now
    end = "\n" if done >= total or not tty else "\r"
    print(f"{stage}: {done}/{total}", end=end, file=sys.__stderr__, flush=True)


_last_progress = 0.0


def fraction_progress(stage: str) -> Callable[[float], None]:
    """A progress(fraction 0..1) callback printing `stage: percent/100`."""
    return lambda f: stderr_progress(stage, round(f * 100), 100)


def stage_progress(stage: str) -> Callable[[int, int], None]:
    """A progress(done, total) callback printing under the name `stage`."""
    return lambda done, total: stderr_progress(stage, done, total)


def counts_progress(stage: str, fields: dict) -> None:
    """A report(stage, **fields) with counts (data, features) on stderr; other stages print nothing."""
    if stage == "features" and "done" in fields:
        _features_progress(fields)
    elif "done" in fields:
        stderr_progress(fields.get("message", stage), fields["done"], fields["total"])


def _features_progress(fields: dict) -> None:
    """A features stage on stderr: "Backbone features: 300 from the cache" when they were read, not computed."""
    message = fields.get("message", "features")
    if fields.get("cached"):
        what = message.removeprefix("Computing ")
        print(f"{what[:1].upper()}{what[1:]}: {fields['total']:,} from the cache", file=sys.__stderr__, flush=True)
    else:
        stderr_progress(message, fields["done"], fields["total"])


def write_png(path: str, data: bytes) -> None:
    """Write PNG bytes to `path` (folders made), never leaving a half-written file."""
    atomic_write(Path(path), lambda tmp: tmp.write_bytes(data))
