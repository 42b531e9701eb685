"""Find what is wrong with a labelled dataset: label mistakes, outliers, near-duplicates, leaks.

1. Backbone features of every image (engine.training.feature_cache: computed once per data).
2. Out-of-fold probabilities: K stratified folds, a linear head (scikit-learn's logistic
   regression, the same model as a feature run's head without hidden layers) trained on
   K-1 folds scores the K-th, so no image is scored by a head that saw it.
3. cleanlab on those probabilities: `filter.find_label_issues` (confident learning) and
   `rank.get_label_quality_scores`; `outlier.OutOfDistribution` scores how far each image
   lies from its neighbours in feature space.
4. Near-duplicates and leaks by hand: cleanlab's near-duplicate check lives in `Datalab`,
   which needs the Hugging Face `datasets` package (pyarrow and more) for one rule. Here a
   perceptual hash (imagehash's pHash, 256 bits) finds the pairs, so a resized or re-compressed
   copy counts, and their features must be close too, so two different images that hash alike
   (flat, tiny) do not.

The report is a JSON-ready dict, cached per (data fingerprint, backbone, size, folds, split):
asking again costs a file read. The K heads are kept beside it (`head_file`), so where the
model looked at an image is asked of the head that never saw it (engine.health.explain).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image as PILImage

from engine import backbones, imaging, settings
from engine.data import corrections
from engine.data.ingest import Dataset, Item
from engine.data.sources import StageProgress, open_dataset, source_title
from engine.data.splits import split_dataset
from engine.errors import ConvScopeError, DatasetError
from engine.evaluate.evaluation import cached_logits, labelled_set
from engine.runs import Run, atomic_write, same_files, splits_of
from engine.training import feature_cache
from engine.training.features import FeatureExtractor

_VERSION = 3  # bump when the analysis changes: cached reports are then recomputed
# The heads' inverse L2 strength on standardised features (scikit-learn's C: the data term is summed,
# so the penalty weighs less as images add up). On the digits of bench/data_health.py (8% flipped),
# C=1 finds as many flipped labels but flags more than twice as many good images (precision 0.69
# against 0.84); C=0.001 finds fewer (recall 0.85 against 0.89).
HEAD_C = 0.01
NEIGHBOURS = 10  # as cleanlab's Datalab
# Datalab's outlier rule on features: mean distance to the k nearest > Q3 + (1/t - 1) * IQR.
OUTLIER_T = 0.37037
# Near-duplicates: a 256-bit pHash (16 x 16 DCT signs) within PHASH_BITS, and features closer than
# DUPLICATE_SHARE x the median nearest-neighbour distance. A copy resized to 60% and saved as JPEG
# quality 50 is 5-8 bits away and 1.1-1.3x the median in features (shapes, 96 and 224 px); among the
# 1,797 distinct digits of bench/data_health.py no two are within 16 bits (the 64-bit pHash put
# 374 pairs within 6 of 64: on tiny images it is too coarse).
PHASH_SIZE = 16
PHASH_BITS = 16
DUPLICATE_SHARE = 2.0
SHOWN_NEIGHBOURS = 4


def analyse(
    source: str,
    backbone: str = backbones.DEFAULT_BACKBONE,
    image_size: int | None = None,
    folds: int = 5,
    run: Run | None = None,
    progress: StageProgress | None = None,
    extractor: FeatureExtractor | None = None,
    seed: int = 0,
    val_frac: float = 0.15,
    test_frac: float = 0.15,
) -> dict:
    """The health report of `source` (corrections applied: what a run would train on).

    Args:
        run: whose split the leaks are measured against, and whose test accuracy they may inflate;
            it must have trained on these files (corrections since are fine).
        seed, val_frac, test_frac: without a run, the split the leaks are measured against: the one
            a run with these settings would train on.
        extractor: an already loaded FeatureExtractor of `backbone` (the dashboard shares one).

    Returns:
        The JSON-ready report: `label_issues` (worst first), `outliers`, `near_duplicates`,
        `leaks`, `inflation`, `counts`, `score`, `seconds`, `corrections`.
    """
    t0 = time.monotonic()
    dataset = open_dataset(source, progress)
    dataset.check()
    spec = backbones.get_spec(backbone)
    size = int(image_size or spec.input_size)
    splits, split_name = _splits(dataset, source, run, seed, val_frac, test_frac)
    key = _key(dataset, backbone, size, folds, split_name)
    folder = settings.cache_dir() / "health"
    cached = _read(folder / f"{key}.json")
    if cached is not None:
        return _fresh(cached, dataset, cached=True)

    extractor = extractor or FeatureExtractor(backbone, size)
    t = time.monotonic()
    features, _ = feature_cache.clean_features(
        extractor,
        dataset,
        feature_cache.FeatureKey(backbone, extractor.input_size, "stretch"),
        progress=(lambda d, n: progress("Computing features", d, n)) if progress else None,
    )
    seconds = {"features": time.monotonic() - t}
    t = time.monotonic()
    folder.mkdir(parents=True, exist_ok=True)
    hashes = perceptual_hashes(dataset, folder, progress)
    seconds["hashes"] = time.monotonic() - t
    labels = np.array([i.label for i in dataset.items])

    t = time.monotonic()
    k = _folds(labels, folds)
    probs, head = out_of_fold(features, labels, len(dataset.classes), k, progress)
    seconds["folds"] = time.monotonic() - t

    t = time.monotonic()
    if progress:
        progress("Finding issues", 0, 1)
    report = _issues(dataset, features, hashes, labels, probs, splits)
    seconds["issues"] = time.monotonic() - t
    report.update(
        source=source,
        fingerprint=dataset.fingerprint,
        backbone=backbone,
        image_size=extractor.input_size,
        folds=k,
        split=split_name,
        classes=dataset.classes,
        num_images=len(dataset.items),
        oof_accuracy=float((probs.argmax(1) == labels).mean()),
        head_file=str(folder / f"{key}.npz"),
        version=_VERSION,
    )
    if run is not None:
        report["inflation"].update(_run_accuracy(run, source, report["leaks"]))
    seconds["total"] = time.monotonic() - t0
    report["seconds"] = {k: round(v, 3) for k, v in seconds.items()}
    rels = np.array([i.rel for i in dataset.items])
    atomic_write(folder / f"{key}.npz", lambda tmp: np.savez(tmp, rels=rels, **head))
    atomic_write(folder / f"{key}.json", lambda tmp: tmp.write_text(json.dumps(report)))
    if progress:
        progress("Finding issues", 1, 1)
    return _fresh(report, dataset, cached=False)


def out_of_fold(
    features: np.ndarray, labels: np.ndarray, classes: int, folds: int, progress: StageProgress | None = None
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Probabilities of every image from a head that did not see it.

    Args:
        features: (N, D) float32; labels: (N,) int in [0, classes).

    Returns:
        ((N, classes) float32 out-of-fold probabilities, the heads: "kernels" (K, D, classes),
        "biases" (K, classes) of logits, and "fold" (N,): which head held each image out).
    """
    from sklearn.exceptions import ConvergenceWarning  # heavy: scikit-learn loads in a second; only this pays
    from sklearn.linear_model import LogisticRegression  # heavy: as above
    from sklearn.model_selection import StratifiedKFold  # heavy: as above
    from threadpoolctl import threadpool_limits  # heavy: comes with scikit-learn, as above

    probs = np.zeros((len(labels), classes), np.float32)
    kernels = np.zeros((folds, features.shape[1], classes), np.float32)
    biases = np.zeros((folds, classes), np.float32)
    fold = np.zeros(len(labels), np.int32)
    # Standardised features: lbfgs then converges in tens of steps, not hundreds (pooled backbone
    # features differ in scale by orders of magnitude), and ranks flipped labels better. Mean and
    # scale are of all images: no label is used, so no held-out label leaks into a head.
    mean, scale = features.mean(axis=0), features.std(axis=0) + 1e-6
    x = (features - mean) / scale
    split = StratifiedKFold(folds, shuffle=True, random_state=0).split(x, labels)
    # One BLAS thread: these (N, D) x (D, C) products are too small to share, and OpenBLAS' threads
    # spin while waiting, which on a busy machine made the heads ten times slower (bench/data_health.py).
    with threadpool_limits(1, user_api="blas"):
        for n, (train, held) in enumerate(split):
            if progress:
                progress("Training the heads", n, folds)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)  # 300 steps are plenty for a ranking
                head = LogisticRegression(C=HEAD_C, max_iter=300).fit(x[train], labels[train])
            # every class is in every training part (folds <= the smallest class), so classes_ is 0..C-1
            probs[held] = head.predict_proba(x[held])
            # the same head on raw features: ((f - mean) / scale) W + b = f (W / scale) + (b - (mean / scale) W)
            coef = head.coef_ / scale
            intercept = head.intercept_ - head.coef_ @ (mean / scale)
            if classes == 2:  # one logit z for class 1: the pair [-z/2, z/2] has the same softmax
                coef, intercept = np.r_[-coef / 2, coef / 2], np.r_[-intercept / 2, intercept / 2]
            kernels[n], biases[n], fold[held] = coef.T, intercept, n
    if progress:
        progress("Training the heads", folds, folds)
    return probs, {"kernels": kernels, "biases": biases, "fold": fold}


def _folds(labels: np.ndarray, wanted: int) -> int:
    """As many folds as asked, at most the smallest class's size (each fold holds every class)."""
    if wanted < 2:
        raise DatasetError(f"--folds {wanted}: give 2 or more (5 is the default)")
    smallest = int(np.bincount(labels).min())
    if smallest < 2:
        raise DatasetError("every class needs at least 2 images for out-of-fold scores")
    return min(wanted, smallest)


def _issues(
    dataset: Dataset,
    features: np.ndarray,
    hashes: np.ndarray,
    labels: np.ndarray,
    probs: np.ndarray,
    splits: dict[str, list[Item]],
) -> dict:
    from cleanlab.filter import find_label_issues  # heavy: cleanlab loads in a second; only this pays
    from cleanlab.outlier import OutOfDistribution  # heavy: as above
    from cleanlab.rank import get_label_quality_scores  # heavy: as above
    from scipy.stats import iqr  # heavy: SciPy's stats load in a second

    items, classes = dataset.items, dataset.classes
    n = len(items)
    quality = get_label_quality_scores(labels, probs)
    # n_jobs=1: cleanlab's default forks a multiprocessing pool, and a fork of a threaded process (the dashboard's
    # server, TensorFlow loaded) can deadlock in the child: the Health tab hung on "Finding issues" for minutes.
    flagged = find_label_issues(labels, probs, return_indices_ranked_by="self_confidence", n_jobs=1)
    k = min(NEIGHBOURS, n - 1)
    ood = OutOfDistribution({"k": k})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Fitting OOD estimator..." is printed, not warned; others are noise here
        outlier_score = ood.fit_score(features=features, verbose=False)
    distances, neighbours = ood.params["knn"].kneighbors(features, n_neighbors=k + 1)
    distances, neighbours = _drop_self(distances, neighbours)
    mean_distance = distances.mean(axis=1)
    limit = np.percentile(mean_distance, 75) + (1 / OUTLIER_T - 1) * iqr(mean_distance)
    outliers = np.flatnonzero(mean_distance > limit)
    outliers = outliers[np.argsort(outlier_score[outliers])]

    def near(i: int) -> list[dict]:
        return [
            {"path": items[j].rel, "label": classes[labels[j]], "similarity": round(1 - float(d), 4)}
            for d, j in zip(distances[i][:SHOWN_NEIGHBOURS], neighbours[i][:SHOWN_NEIGHBOURS], strict=True)
        ]

    label_issues = [
        {
            "path": items[i].rel,
            "given": classes[labels[i]],
            "suggested": classes[int(probs[i].argmax())],
            "score": round(float(quality[i]), 4),
            "p_given": round(float(probs[i, labels[i]]), 4),
            "p_suggested": round(float(probs[i].max()), 4),
            "neighbours": near(i),
        }
        for i in flagged
    ]
    outlier_rows = [
        {
            "path": items[i].rel,
            "label": classes[labels[i]],
            "score": round(float(outlier_score[i]), 4),
            "neighbours": near(i),
        }
        for i in outliers
    ]
    split_of = {i.rel: s for s, part in splits.items() for i in part}
    groups = near_duplicate_groups(features, hashes, float(np.median(distances[:, 0])))
    duplicates = [
        {
            "paths": [items[i].rel for i in g],
            "labels": [classes[labels[i]] for i in g],
            "splits": [split_of.get(items[i].rel, "") for i in g],
        }
        for g in groups
    ]
    leaks = [d for d in duplicates if len(set(d["splits"]) - {""}) > 1]
    test = [s for s in split_of.values() if s == "test"]
    # a test image may be right only because its copy was trained on; a copy in validation was not
    leaked_test = sum(sum(s == "test" for s in d["splits"]) for d in leaks if "train" in d["splits"])
    flagged_paths = (
        {r["path"] for r in label_issues}
        | {r["path"] for r in outlier_rows}
        | {p for d in duplicates for p in d["paths"][1:]}  # the first of a group is the one to keep
    )
    return {
        "label_issues": label_issues,
        "label_ranking": [items[i].rel for i in np.argsort(quality, kind="stable")],
        "outliers": outlier_rows,
        "near_duplicates": duplicates,
        "leaks": leaks,
        "inflation": {
            "test_images": len(test),
            "leaked_test_images": leaked_test,
            # each leaked test image may be right only because its copy was trained on
            "at_most_points": round(100 * leaked_test / len(test), 2) if test else 0.0,
        },
        "counts": {
            "label_issues": len(label_issues),
            "outliers": len(outlier_rows),
            "near_duplicate_groups": len(duplicates),
            "leaks": len(leaks),
            "images_flagged": len(flagged_paths),
        },
        # share of images nothing is wrong with, in percent
        "score": round(100 * (1 - len(flagged_paths) / n), 1),
    }


def _drop_self(distances: np.ndarray, neighbours: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each row's k nearest others: (N, k+1) with the image itself (somewhere) -> (N, k)."""
    keep = neighbours != np.arange(len(neighbours))[:, None]
    rows = np.array([np.flatnonzero(r)[: keep.shape[1] - 1] for r in keep])
    return np.take_along_axis(distances, rows, 1), np.take_along_axis(neighbours, rows, 1)


def perceptual_hashes(dataset: Dataset, folder: Path, progress: StageProgress | None = None) -> np.ndarray:
    """(N, PHASH_SIZE**2) bool pHash of every image, in `dataset.items` order; kept per files in `folder`."""

    def one(item: Item) -> np.ndarray:
        import imagehash  # heavy: brings PyWavelets; only the health check pays

        rgb = imaging.load_rgb(dataset.path(item), name=item.rel)
        return imagehash.phash(PILImage.fromarray(rgb), hash_size=PHASH_SIZE).hash.reshape(-1)

    def compute(every: list[Item]) -> np.ndarray:
        out = []
        # decoding dominates and Pillow releases the GIL, so threads help (as at ingest)
        with ThreadPoolExecutor(min(4, os.cpu_count() or 1)) as pool:
            for n, h in enumerate(pool.map(one, every), start=1):
                out.append(h)
                if progress and (n % 50 == 0 or n == len(every)):
                    progress("Hashing images", n, len(every))
        return np.array(out, dtype=bool).reshape(len(every), PHASH_SIZE**2)

    path = folder / f"phash{PHASH_SIZE}-{dataset.files_fingerprint[:32]}.npy"
    return feature_cache.per_file(dataset, path, compute)[0]


def near_duplicate_groups(features: np.ndarray, hashes: np.ndarray, median_nn: float) -> list[list[int]]:
    """Groups (item indices, sorted) of images that are the same picture: close pHash and close features.

    Args:
        features: (N, D); hashes: (N, B) bool; median_nn: the median cosine distance to the nearest other image.
    """
    from scipy.sparse import coo_matrix  # heavy: as SciPy's stats
    from scipy.sparse.csgraph import connected_components  # heavy: as above

    n = len(hashes)
    bits = hashes.astype(np.float32)
    unit = features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
    pairs = []
    for start in range(0, n, 2048):  # (2048, N) blocks: memory stays small on large sets
        block = bits[start : start + 2048]
        differ = bits.shape[1] - (block @ bits.T + (1 - block) @ (1 - bits).T)  # Hamming distances
        rows, cols = np.nonzero(differ <= PHASH_BITS)
        rows += start
        keep = cols > rows
        pairs += list(zip(rows[keep].tolist(), cols[keep].tolist(), strict=True))
    same = [(i, j) for i, j in pairs if 1 - float(unit[i] @ unit[j]) < DUPLICATE_SHARE * max(median_nn, 1e-6)]
    if not same:
        return []
    a, b = np.array(same).T
    _, component = connected_components(coo_matrix((np.ones(len(same)), (a, b)), shape=(n, n)), directed=False)
    members: dict[int, list[int]] = {}
    for i in sorted(set(a.tolist()) | set(b.tolist())):
        members.setdefault(int(component[i]), []).append(int(i))
    return sorted(members.values(), key=lambda g: (-len(g), g))


def _splits(
    dataset: Dataset, source: str, run: Run | None, seed: int, val_frac: float, test_frac: float
) -> tuple[dict[str, list[Item]], str]:
    if run is None:
        own = "the source's own splits, " if dataset.has_splits else ""
        carved = f"seed {seed}, {val_frac:.0%} validation, {test_frac:.0%} test where carved"
        return split_dataset(dataset, seed, val_frac, test_frac), f"{own}{carved}"
    config = run.config()
    if (config.get("data") or {}).get("source") != source or not same_files(config, dataset):
        raise DatasetError(
            f"{run.name} was not trained on these files (its data: "
            f"{source_title(str((config.get('data') or {}).get('source', '')))!r}), so it has no split of them: "
            "leave the run out, or pick one trained on this data"
        )
    return splits_of(config, dataset), f"run {run.name}"


def _run_accuracy(run: Run, source: str, leaks: list[dict]) -> dict:
    """The run's test accuracy with and without its leaked test images (what the leaks can be worth)."""
    try:
        data = labelled_set(run, source, "test")
        logits, _ = cached_logits(run, data)
    except ConvScopeError as exc:  # e.g. the data changed since the run: only the bound is known
        return {"run": run.name, "accuracy_note": str(exc)}
    right = logits.argmax(1) == data.labels
    leaked = {
        p for d in leaks if "train" in d["splits"] for p, s in zip(d["paths"], d["splits"], strict=True) if s == "test"
    }
    clean = np.array([rel not in leaked for rel in data.rels])
    return {
        "run": run.name,
        "accuracy": round(float(right.mean()), 4),
        "accuracy_without_leaked": round(float(right[clean].mean()), 4) if clean.any() else None,
    }


def _key(dataset: Dataset, backbone: str, size: int, folds: int, split: str) -> str:
    payload = json.dumps([_VERSION, dataset.fingerprint, backbone, size, folds, split])
    return hashlib.sha256(payload.encode()).hexdigest()[:24]


def _read(path: Path) -> dict | None:
    try:
        report = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return report if report.get("version") == _VERSION and Path(report.get("head_file", "")).is_file() else None


def _fresh(report: dict, dataset: Dataset, cached: bool) -> dict:
    """The report with what may have changed since it was cached: reviewed images, the corrections."""
    kept = corrections.kept_paths(dataset)
    for kind in ("label_issues", "outliers"):
        for row in report[kind]:
            row["reviewed"] = row["path"] in kept
    summary = dataset.corrections
    return {**report, "cached": cached, "corrections": summary.to_json() if summary else None}
