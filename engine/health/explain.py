"""Where the model looked at a suspect image: Grad-CAM for its given and its suggested label.

Asked of the health report's own model: the backbone it took features from, global average
pooling and the out-of-fold linear heads (`analysis.out_of_fold`), all K of them side by side
in one Dense layer of K x C logits, so one compiled model serves every image, and each image
is explained by the head that never saw it (the one behind the report's probabilities).
For such a head Grad-CAM at the last convolution equals CAM (Zhou et al. 2016): the class's
weights over the feature maps. A trained run can be asked instead (Explainable.from_run).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from engine import backbones, imaging
from engine.data.ingest import Dataset
from engine.errors import ExplainError
from engine.explain.maps import Explanation, explain_image
from engine.model.explainable import Explainable
from engine.numerics import softmax


class HeadsModel(Explainable):
    """A backbone with K held-out heads: (N, S, S, 3) [0, 255] -> (N, K * C) logits.

    Output k * C + c is class c's logit from head k (`labels` reads "class (head k)").
    """

    classes: list[str]
    fold_of: dict[str, int]  # image path -> the head that never saw it

    def index(self, rel: str, label: str) -> int:
        """The output of `label` from the head that held `rel` out."""
        return self.fold_of[rel] * len(self.classes) + self.classes.index(label)

    def held_out_probabilities(self, image: np.ndarray, rel: str) -> np.ndarray:
        """(S, S, 3) prepared image -> (C,) probabilities from the head that held `rel` out."""
        c = len(self.classes)
        k = self.fold_of[rel]
        return softmax(self.logits(image[None])[0, k * c : (k + 1) * c])


def head_model(report: dict) -> HeadsModel:
    """The report's backbone with its K heads.

    Args:
        report: from engine.health.analysis.analyse (backbone, image_size, classes, head_file).
    """
    import keras  # heavy: TensorFlow loads in seconds; only what runs a model pays

    name, classes = report["backbone"], list(report["classes"])
    spec = backbones.get_spec(name)
    base = backbones.load(name, include_top=False, image_size=report["image_size"])
    if len(base.output.shape) != 4 or not spec.last_conv_layer:
        raise ExplainError(f"{spec.title} gives no feature map here; choose a trained run to see where it looked")
    with np.load(report["head_file"]) as heads:
        kernels, biases = heads["kernels"], heads["biases"]  # (K, D, C), (K, C)
        fold_of = dict(zip(heads["rels"].tolist(), heads["fold"].tolist(), strict=True))
    pooled = keras.layers.GlobalAveragePooling2D(name="health_pool")(base.output)
    dense = keras.layers.Dense(kernels.shape[0] * len(classes), name="health_heads")
    logits = dense(pooled)
    dense.set_weights([np.concatenate(list(kernels), axis=1), biases.reshape(-1)])
    model = keras.Model(base.input, logits, name=f"health_{name}")
    labels = [f"{c} (head {k})" for k in range(len(kernels)) for c in classes]
    out = HeadsModel(model, spec.preprocess, labels, f"{spec.title} + held-out heads", spec.last_conv_layer)
    out.classes, out.fold_of = classes, fold_of
    return out


def where_it_looked(
    model: Explainable, dataset: Dataset, rel: str, labels: list[str], method: str = "gradcam"
) -> list[Explanation]:
    """One map per label (given, suggested) for the image at `rel`: (S, S) heatmaps in [0, 1].

    `model`: a `head_model` (the head that held `rel` out answers, with its own probabilities),
    or a trained run's Explainable (labels it does not know are left out).
    """
    item = next((i for i in dataset.items if i.rel == rel), None)
    if item is None:
        raise ExplainError(f"{rel}: not an image of {dataset.source} (excluded, or gone)")
    rgb = imaging.load_rgb(dataset.path(item), name=rel)
    if not isinstance(model, HeadsModel):
        return [explain_image(model, rgb, method, model.labels.index(c)) for c in labels if c in model.labels]
    probs = model.held_out_probabilities(model.prepare(rgb), rel)
    out = []
    for label in labels:
        c = model.classes.index(label)
        ex = explain_image(model, rgb, method, model.index(rel, label))
        out.append(replace(ex, class_index=c, label=label, probability=float(probs[c])))
    return out
