"""Occlusion sensitivity (Zeiler & Fergus 2014): how much the class probability drops
when a grey patch hides each region. Gradient-free: works on any model, opaque ones too."""

import numpy as np

from engine.explain.base import BaseAttribution

BATCH = 32


class Occlusion(BaseAttribution):
    name = "occlusion"
    title = "Occlusion sensitivity"

    def raw_maps(self, images, classes):
        n, size = images.shape[0], images.shape[1]
        patch = max(4, size // 7)
        stride = max(2, patch // 2)
        starts = list(range(0, size - patch + 1, stride))
        if starts[-1] != size - patch:
            starts.append(size - patch)
        out = np.zeros((n, size, size), np.float32)
        for i in range(n):
            base = self.model.probabilities(images[i][None])[0, classes[i]]
            boxes = [(y, x) for y in starts for x in starts]
            drops = []
            for start in range(0, len(boxes), BATCH):
                batch = np.repeat(images[i][None], len(boxes[start : start + BATCH]), axis=0)
                for b, (y, x) in enumerate(boxes[start : start + BATCH]):
                    batch[b, y : y + patch, x : x + patch] = 127.0
                drops.append(base - self.model.probabilities(batch)[:, classes[i]])
            drop = np.concatenate(drops)
            heat = np.zeros((size, size), np.float32)
            count = np.zeros((size, size), np.float32)
            for d, (y, x) in zip(drop, boxes, strict=True):
                heat[y : y + patch, x : x + patch] += d
                count[y : y + patch, x : x + patch] += 1
            out[i] = np.maximum(heat / np.maximum(count, 1), 0)
        return out
