"""Grad-CAM++ (Chattopadhay et al. 2018): positive gradients weighted per position."""

import numpy as np

from engine.explain.base import BaseCAM


class GradCAMPlusPlus(BaseCAM):
    name = "gradcam++"
    title = "Grad-CAM++"

    def weights(self, activations, grads, classes, images):
        g2, g3 = grads**2, grads**3
        total = activations.sum(axis=(1, 2), keepdims=True)
        alpha = g2 / (2 * g2 + total * g3 + 1e-7)
        alpha = np.where(grads != 0, alpha, 0)
        return (np.maximum(grads, 0) * alpha).sum(axis=(1, 2))
