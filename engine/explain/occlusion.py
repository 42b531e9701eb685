"""Occlusion sensitivity (Zeiler & Fergus 2014): how much the class probability drops
when a grey patch hides each region. Gradient-free: works on any model, opaque ones too."""

import numpy as np

from engine.explain.base import BaseAttribution, predicted_where_negative
from engine.numerics import softmax


def patches(size: int) -> tuple[int, list[int]]:
    """(patch side, top-left offsets along one axis) for an image of `size` pixels."""
    patch = max(4, size // 7)
    stride = max(2, patch // 2)
    starts = list(range(0, size - patch + 1, stride))
    if starts[-1] != size - patch:
        starts.append(size - patch)
    return patch, starts


class Occlusion(BaseAttribution):
    name = "occlusion"
    title = "Occlusion sensitivity"
    predicts = True  # its first pass runs the images as they are, before any patch hides a part

    def passes(self, size):
        return 1 + len(patches(size)[1]) ** 2, 0

    def raw_maps_and_logits(self, images, classes, progress=None):
        n, size = images.shape[0], images.shape[1]
        patch, starts = patches(size)
        boxes = [(y, x) for y in starts for x in starts]
        logits = self.model.logits(images)
        classes = predicted_where_negative(classes, logits)
        base = softmax(logits)[np.arange(n), classes]
        out = np.zeros((n, size, size), np.float32)
        for i in range(n):
            batch = np.repeat(images[i][None], len(boxes), axis=0)
            for b, (y, x) in enumerate(boxes):
                batch[b, y : y + patch, x : x + patch] = 127.0

            def step(done, i=i):
                if progress:
                    progress((i + done) / n)

            drop = base[i] - self.model.probabilities(batch, step)[:, classes[i]]
            heat = np.zeros((size, size), np.float32)
            count = np.zeros((size, size), np.float32)
            for d, (y, x) in zip(drop, boxes, strict=True):
                heat[y : y + patch, x : x + patch] += d
                count[y : y + patch, x : x + patch] += 1
            out[i] = np.maximum(heat / np.maximum(count, 1), 0)
        return out, logits
