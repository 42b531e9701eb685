"""Eigen-CAM (Muhammad & Yeasin 2020): the first principal component of the activations.

Gradient-free and class-agnostic: it shows what the layer responds to most, whatever the class.
"""

import numpy as np

from engine.explain.base import BaseCAM


class EigenCAM(BaseCAM):
    name = "eigencam"
    title = "Eigen-CAM (class-agnostic)"
    needs_gradients = False

    def raw_maps_and_logits(self, images, classes, progress=None):
        a, _, y = self.activations_and_grads(images, classes)
        out = []
        for act in a:
            h, w, c = act.shape
            flat = act.reshape(h * w, c)
            centred = flat - flat.mean(axis=0)
            _, _, vt = np.linalg.svd(centred, full_matrices=False)
            proj = (centred @ vt[0]).reshape(h, w)
            # An eigenvector's sign is arbitrary: point it where the activations are strong.
            if np.corrcoef(proj.ravel(), flat.sum(axis=1))[0, 1] < 0:
                proj = -proj
            out.append(np.maximum(proj, 0))
        return np.stack(out), y
