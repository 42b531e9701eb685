"""Metrics and calibration against values computed by hand."""

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from engine.evaluate import calibration, metrics
from engine.numerics import softmax

# 3 classes, 6 images. Predicted (argmax): 0, 1, 2, 0, 1, 1; true: 0, 0, 1, 1, 1, 2.
PROBS = np.array(
    [
        [0.7, 0.2, 0.1],  # true 0, predicted 0 (right)
        [0.3, 0.6, 0.1],  # true 0, predicted 1; 0 is second
        [0.1, 0.3, 0.6],  # true 1, predicted 2; 1 is second
        [0.5, 0.1, 0.4],  # true 1, predicted 0; 1 is last
        [0.2, 0.7, 0.1],  # true 1, predicted 1 (right)
        [0.1, 0.5, 0.4],  # true 2, predicted 1; 2 is second
    ]
)
LABELS = np.array([0, 0, 1, 1, 1, 2])
NAMES = ["circle", "square", "star"]


def _plain(value) -> bool:
    """True when value holds only JSON's own Python types (no numpy scalars)."""
    if isinstance(value, dict):
        return all(type(k) is str and _plain(v) for k, v in value.items())
    if isinstance(value, list):
        return all(_plain(v) for v in value)
    return value is None or type(value) in (int, float, str, bool)


def test_metrics_on_a_hand_computed_case():
    m = metrics.classification_metrics(LABELS, PROBS, NAMES, top_k=2)
    assert m["count"] == 6
    assert m["accuracy"] == pytest.approx(2 / 6)
    assert m["top_k"] == 2 and m["top_k_accuracy"] == pytest.approx(5 / 6)  # all but image 4
    assert m["labels"] == NAMES
    assert m["confusion_matrix"] == [[1, 1, 0], [1, 1, 1], [0, 1, 0]]
    assert sum(map(sum, m["confusion_matrix"])) == 6
    pc = m["per_class"]
    # circle: predicted for images 1 and 4 (one right) -> precision 1/2; true 2, found 1 -> recall 1/2
    assert pc["circle"] == pytest.approx({"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2})
    # square: predicted for 2, 5, 6 (image 5 right) -> 1/3; true 3, found 1 -> 1/3; f1 1/3
    assert pc["square"] == pytest.approx({"precision": 1 / 3, "recall": 1 / 3, "f1": 1 / 3, "support": 3})
    # star: predicted once (wrong) -> 0; true once, missed -> 0
    assert pc["star"] == pytest.approx({"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1})
    assert _plain(m) and json.loads(json.dumps(m)) == m


def test_top_1_is_the_accuracy_and_unequal_f1():
    # Only the first 5 images: circle predicted for 1, 4 (1 right), true for 1, 2 -> P 1/2, R 1/2.
    # square predicted for 2, 5 (5 right) -> P 1/2; true for 3, 4, 5 -> R 1/3; F1 = 2PR/(P+R) = (1/3)/(5/6) = 2/5.
    m = metrics.classification_metrics(LABELS[:5], PROBS[:5], NAMES, top_k=1)
    assert m["top_k"] == 1 and m["top_k_accuracy"] == pytest.approx(2 / 5) == m["accuracy"]
    assert m["per_class"]["square"] == pytest.approx({"precision": 0.5, "recall": 1 / 3, "f1": 0.4, "support": 3})


def test_a_class_absent_from_the_labels_keeps_its_row():
    m = metrics.classification_metrics(LABELS[:5], PROBS[:5], NAMES, top_k=2)
    assert m["per_class"]["star"]["support"] == 0 and m["confusion_matrix"][2] == [0, 0, 0]
    # star is still predicted once (image 3), so its column is not empty and its precision is 0
    assert [row[2] for row in m["confusion_matrix"]] == [0, 1, 0]
    assert m["top_k_accuracy"] == pytest.approx(4 / 5)  # all but image 4
    full = metrics.classification_metrics(LABELS, PROBS, NAMES, top_k=5)
    assert full["top_k"] == 3 and full["top_k_accuracy"] == 1.0  # k never exceeds the classes
    # Only one class present at all: scikit-learn would call this "binary" without labels=range(C).
    one = metrics.classification_metrics(np.array([1, 1]), PROBS[[2, 4]], NAMES, top_k=2)
    assert one["top_k_accuracy"] == 1.0 and one["accuracy"] == 0.5 and one["count"] == 2


def test_two_classes():
    probs = np.array([[0.8, 0.2], [0.4, 0.6], [0.3, 0.7], [0.9, 0.1]])
    labels = np.array([0, 0, 1, 1])  # predicted 0, 1, 1, 0: right, wrong, right, wrong
    top1 = metrics.classification_metrics(labels, probs, ["cat", "dog"], top_k=1)
    assert top1["top_k"] == 1 and top1["top_k_accuracy"] == pytest.approx(0.5) == top1["accuracy"]
    assert top1["confusion_matrix"] == [[1, 1], [1, 1]]
    top3 = metrics.classification_metrics(labels, probs, ["cat", "dog"])
    assert top3["top_k"] == 2 and top3["top_k_accuracy"] == 1.0


def test_bad_inputs_say_what_was_received():
    with pytest.raises(ValueError, match="no images"):
        metrics.classification_metrics(np.zeros(0, int), np.zeros((0, 3)), NAMES)
    with pytest.raises(ValueError, match="3 class names for 2 classes"):
        metrics.classification_metrics(LABELS, PROBS[:, :2], NAMES)
    with pytest.raises(ValueError, match=r"0\.\.2, got 0\.\.3"):
        metrics.classification_metrics(np.array([0, 1, 3, 1, 1, 2]), PROBS, NAMES)
    with pytest.raises(ValueError, match=r"0\.\.2, got -1\.\.2"):
        metrics.classification_metrics(np.array([0, 1, -1, 1, 1, 2]), PROBS, NAMES)
    with pytest.raises(ValueError, match=r"labels must be \(6,\).*got shape \(4,\)"):
        metrics.classification_metrics(LABELS[:4], PROBS, NAMES)
    with pytest.raises(ValueError, match=r"probs must be \(N, classes\), got shape \(6,\)"):
        metrics.classification_metrics(LABELS, PROBS[:, 0], NAMES)
    with pytest.raises(ValueError, match="integer class indices, got dtype float64"):
        metrics.classification_metrics(LABELS + 0.5, PROBS, NAMES)
    with pytest.raises(ValueError, match="top_k must be at least 1, got 0"):
        metrics.classification_metrics(LABELS, PROBS, NAMES, top_k=0)


def test_row_normalised():
    out = metrics.row_normalised([[3, 1, 0], [0, 0, 0], [1, 2, 5]])
    np.testing.assert_allclose(out, [[0.75, 0.25, 0.0], [0.0, 0.0, 0.0], [0.125, 0.25, 0.625]])
    assert out.dtype == np.float64
    with pytest.raises(ValueError, match="square"):
        metrics.row_normalised([[1, 2, 3]])


def test_softmax_and_nll_by_hand():
    np.testing.assert_allclose(softmax([[0.0, math.log(3.0)]]), [[0.25, 0.75]])
    # T = 2 halves the logits: exp(ln 3 / 2) = sqrt(3)
    root3 = math.sqrt(3.0)
    np.testing.assert_allclose(softmax([[0.0, math.log(3.0)]], 2.0), [[1 / (1 + root3), root3 / (1 + root3)]])
    big = softmax([[1000.0, 0.0], [-1000.0, -1000.0]])  # no overflow
    np.testing.assert_allclose(big, [[1.0, 0.0], [0.5, 0.5]])
    assert calibration.nll([[0.0, 0.0]], [0]) == pytest.approx(math.log(2.0))
    assert calibration.nll([[1000.0, 0.0]], [1]) == pytest.approx(1000.0)  # log-sum-exp, not log(exp(1000))
    # mean of -ln 0.75 and -ln 0.25
    assert calibration.nll([[0.0, math.log(3.0)]] * 2, [1, 0]) == pytest.approx((math.log(4 / 3) + math.log(4)) / 2)


def test_ece_on_a_hand_made_case():
    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.3, 0.7]])
    labels = np.array([0, 1, 0, 1])  # right, wrong, right, right (argmax of the last is class 1)
    # Top confidence of the last row is 0.7 (class 1), so bins: 0.9, 0.9 -> (0.8, 1]; 0.6 -> (0.4, 0.6];
    # 0.7 -> (0.6, 0.8]. ECE = 2/4 |0.5 - 0.9| + 1/4 |1 - 0.6| + 1/4 |1 - 0.7| = 0.2 + 0.1 + 0.075 = 0.375
    r = calibration.reliability(probs, labels, bins=5)
    assert r["ece"] == pytest.approx(0.375)
    np.testing.assert_allclose(r["edges"], [0.0, 0.2, 0.4, 0.6, 0.8, 1.0])
    assert r["count"] == [0, 0, 1, 1, 2] and sum(r["count"]) == 4
    assert r["confidence"][:2] == [None, None] and r["accuracy"][:2] == [None, None]
    assert r["accuracy"][4] == pytest.approx(0.5) and r["confidence"][4] == pytest.approx(0.9)
    assert r["accuracy"][2] == 1.0 and r["confidence"][2] == pytest.approx(0.6)
    assert _plain(r)
    assert calibration.ece(probs, labels, bins=5) == pytest.approx(0.375)


def test_ece_bin_edges():
    # Confidences 0.5 (argmax 0, wrong), 1.0 (right), 0.8 (right); 2 bins [0, 0.5] and (0.5, 1].
    # 0.5 sits on an edge and belongs to the lower bin; 1.0 to the last.
    # ECE = 1/3 |0 - 0.5| + 2/3 |1 - 0.9| = 1/6 + 1/15 = 7/30
    probs = np.array([[0.5, 0.5], [1.0, 0.0], [0.2, 0.8]])
    labels = np.array([1, 0, 1])
    r = calibration.reliability(probs, labels, bins=2)
    assert r["count"] == [1, 2]
    assert r["accuracy"] == pytest.approx([0.0, 1.0]) and r["confidence"] == pytest.approx([0.5, 0.9])
    assert r["ece"] == pytest.approx(7 / 30)
    assert calibration.reliability(np.array([[0.0, 0.0, 0.0]]), [0], bins=4)["count"] == [1, 0, 0, 0]  # 0 -> first


def calibrated_sample(n: int = 4000, seed: int = 0):
    """Logits and labels drawn from softmax(logits): calibrated by construction."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, 4)) * 2.0
    p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)  # not engine.numerics.softmax: the data must not depend on it
    labels = (p.cumsum(axis=1) > rng.random((n, 1))).argmax(axis=1)
    return z, labels


def test_a_calibrated_model_has_a_small_ece_and_temperature_one():
    z, labels = calibrated_sample()
    r = calibration.reliability(softmax(z), labels)
    assert r["ece"] < 0.03 and sum(r["count"]) == len(labels) and len(r["edges"]) == 16
    assert r["count"][0] == 0 and r["accuracy"][0] is None  # 4 classes: the top confidence is never under 1/4
    assert calibration.fit_temperature(z, labels) == pytest.approx(1.0, abs=0.1)


def test_temperature_scaling_undoes_overconfidence():
    z, labels = calibrated_sample()
    hot = z * 3.0  # an over-confident model: the same ranking, logits 3x too large
    t = calibration.fit_temperature(hot, labels)
    assert type(t) is float and t == pytest.approx(3.0, rel=0.15)
    assert calibration.nll(hot, labels, t) < calibration.nll(hot, labels)
    # a minimum: nudging T either way does not lower the NLL
    assert calibration.nll(hot, labels, t) <= min(
        calibration.nll(hot, labels, t * 1.05), calibration.nll(hot, labels, t / 1.05)
    )
    before = calibration.ece(softmax(hot), labels)
    after = calibration.ece(softmax(hot, t), labels)
    assert after < before / 3
    # the answers do not change, only the confidence
    np.testing.assert_array_equal(softmax(hot, t).argmax(axis=1), hot.argmax(axis=1))
    assert calibration.fit_temperature(hot[:1], labels[:1]) == 1.0  # nothing to fit
    under = calibration.fit_temperature(z / 2.0, labels)  # under-confident: T below 1
    assert under == pytest.approx(0.5, rel=0.15)


def test_calibration_bad_inputs():
    probs = np.array([[0.9, 0.1], [0.2, 0.8]])
    with pytest.raises(ValueError, match="no images"):
        calibration.ece(np.zeros((0, 3)), np.zeros(0, int))
    with pytest.raises(ValueError, match=r"labels must be \(2,\).*got shape \(3,\)"):
        calibration.reliability(probs, np.array([0, 1, 1]))
    with pytest.raises(ValueError, match=r"0\.\.1, got 0\.\.2"):
        calibration.ece(probs, np.array([0, 2]))
    with pytest.raises(ValueError, match=r"probs must be \(N, classes\), got shape \(2,\)"):
        calibration.ece(probs[:, 0], np.array([0, 1]))
    with pytest.raises(ValueError, match="bins must be at least 1, got 0"):
        calibration.reliability(probs, np.array([0, 1]), bins=0)
    with pytest.raises(ValueError, match="temperature must be a positive number, got 0"):
        softmax(probs, 0.0)
    with pytest.raises(ValueError, match=r"0\.\.1, got -1\.\.0"):
        calibration.nll(probs, np.array([0, -1]))
    with pytest.raises(ValueError, match=r"labels must be \(2,\)"):
        calibration.fit_temperature(probs, np.array([0, 1, 0]))


@pytest.mark.slow
def test_metrics_and_calibration_do_not_need_tensorflow():
    # Loaded from their files, not through engine.evaluate (whose __init__ brings in the whole evaluation).
    root = Path(__file__).resolve().parents[1] / "engine" / "evaluate"
    code = (
        "import importlib.util, sys\n"
        "for name in ('metrics', 'calibration'):\n"
        f"    spec = importlib.util.spec_from_file_location(name, {str(root)!r} + '/' + name + '.py')\n"
        "    spec.loader.exec_module(importlib.util.module_from_spec(spec))\n"
        "assert not {'tensorflow', 'keras', 'streamlit'} & set(sys.modules), 'a heavy import'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
