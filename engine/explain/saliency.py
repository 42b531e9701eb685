"""Vanilla gradients (Simonyan et al. 2014): |dScore/dPixel|, the largest over colour channels."""

import numpy as np

from engine.explain.base import BaseAttribution


class VanillaGradients(BaseAttribution):
    name = "saliency"
    title = "Vanilla gradients"

    def raw_maps(self, images, classes, progress=None):
        return np.abs(self.input_gradients(images, classes, progress)).max(axis=-1)
