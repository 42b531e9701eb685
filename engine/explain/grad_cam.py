"""Grad-CAM (Selvaraju et al. 2017): channel weights are the spatially averaged gradients."""

from engine.explain.base import BaseCAM


class GradCAM(BaseCAM):
    name = "gradcam"
    title = "Grad-CAM"

    def weights(self, activations, grads, classes, images):
        return grads.mean(axis=(1, 2))
