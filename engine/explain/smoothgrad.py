"""SmoothGrad (Smilkov et al. 2017): gradients averaged over noisy copies of the image."""

import numpy as np

from engine.explain.base import BaseAttribution

SAMPLES = 16
NOISE = 0.15  # standard deviation as a fraction of the 0-255 range


class SmoothGrad(BaseAttribution):
    name = "smoothgrad"
    title = "SmoothGrad"

    def passes(self, size):
        return 0, SAMPLES

    def raw_maps_and_logits(self, images, classes, progress=None):
        rng = np.random.default_rng(0)  # the same noise every time: reproducible maps
        n = len(images)
        # Every image's noisy copies in one batched gradient call: (N * SAMPLES, S, S, 3).
        noisy = np.repeat(images, SAMPLES, axis=0)
        noisy += rng.standard_normal(noisy.shape, dtype=np.float32) * np.float32(NOISE * 255)
        grads = self.input_gradients(noisy, np.repeat(classes, SAMPLES).tolist(), progress)
        return np.abs(grads).max(axis=-1).reshape(n, SAMPLES, *images.shape[1:3]).mean(axis=1), None
