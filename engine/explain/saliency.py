"""Vanilla gradients (Simonyan et al. 2014): |dScore/dPixel|, the largest over colour channels."""

import numpy as np

from engine.explain.base import BaseAttribution


class VanillaGradients(BaseAttribution):
    name = "saliency"
    title = "Vanilla gradients"

    predicts = True

    def raw_maps_and_logits(self, images, classes, progress=None):
        grads, logits = self.model.compiled.input_gradients(images, classes, progress)  # class -1: the predicted one
        return np.abs(grads).max(axis=-1), logits
