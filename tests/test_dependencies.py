"""RELIABILITY 15: Keras is pinned exactly, at a version with the known model-loading CVEs fixed."""

import re
from importlib.metadata import version
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# The last of the model-loading fixes the README lists (CVE-2025-1550, -8747, -9905, -9906, -12058) shipped in 3.12.0.
FIRST_SAFE_KERAS = (3, 12, 0)


def _numbers(text: str) -> tuple[int, ...]:
    return tuple(int(n) for n in re.findall(r"\d+", text)[:3])


def test_keras_is_pinned_at_a_version_with_the_loading_cves_fixed():
    pins = re.findall(r"^keras\s*([=<>!~]=?)\s*([\w.]+)\s*$", (ROOT / "requirements.txt").read_text(), re.M)
    assert len(pins) == 1 and pins[0][0] == "==", f"keras must be pinned exactly in requirements.txt, found {pins}"
    pinned = pins[0][1]
    assert _numbers(pinned) >= FIRST_SAFE_KERAS, pinned
    assert version("keras") == pinned, "the installed Keras is not the pinned one"
