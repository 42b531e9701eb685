"""First load (conversion from the PyTorch file) against a cached load.

Each measurement runs in a fresh Python process, timed after imports and a
TensorFlow warm-up, so neither path profits from the other's warm caches.
Prints the medians and the ratio, measured in this one run.

No target is stated for the ratio.

    python bench/backbone_cache.py [--backbone efficientnet_lite0] [--repeats 5] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from run_all import ratio

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, shutil, sys, time
import numpy as np, keras
keras.ops.convert_to_tensor(np.zeros(1))  # TensorFlow runtime warm-up, outside the timing
from engine.backbones import bundled
name, mode = sys.argv[1], sys.argv[2]
if mode == "convert":
    shutil.rmtree(bundled.cache_entry(name), ignore_errors=True)
t0 = time.perf_counter()
model = bundled.build(name, bundled.PACKAGES[name][2], include_top=True)
seconds = time.perf_counter() - t0
assert model.output_shape == (None, 1000)
print(json.dumps({"seconds": seconds}))
"""


def measure(name: str, mode: str, cache: str) -> float:
    env = {**os.environ, "CONVSCOPE_CACHE_DIR": cache, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, "-c", CHILD, name, mode], env=env, capture_output=True, text=True, check=True, cwd=ROOT
    )
    return json.loads(out.stdout.strip().splitlines()[-1])["seconds"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", action="store_true", help="end with one JSON line for bench/run_all.py")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as cache:
        convert, cached = [], []
        for i in range(args.repeats):  # interleaved, so drift hits both alike
            convert.append(measure(args.backbone, "convert", cache))
            cached.append(measure(args.backbone, "cached", cache))
            print(f"  run {i + 1}: convert {convert[-1]:.3f} s, cached {cached[-1]:.3f} s", file=sys.stderr)
    c, k = statistics.median(convert), statistics.median(cached)
    print(f"backbone            {args.backbone}")
    print(f"first load (convert) median {c:.3f} s  (read .pth, re-layout, build, write cache)")
    print(f"cached load          median {k:.3f} s  (read .npz, build)")
    print(f"ratio convert/cached        {c / k:.2f}x")
    if args.json:
        print(json.dumps({"bench": "backbone_cache", "ratios": [ratio("first load / cached load", c / k)]}))


if __name__ == "__main__":
    main()
