"""Layer-CAM (Jiang et al. 2021): each position weighted by its own positive gradient."""

import numpy as np

from engine.explain.base import BaseCAM


class LayerCAM(BaseCAM):
    name = "layercam"
    title = "Layer-CAM"

    def weights(self, activations, grads, classes, images):
        return np.maximum(grads, 0)  # (N, h, w, C): per position, so it works on early layers too
