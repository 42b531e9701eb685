"""SmoothGrad (Smilkov et al. 2017): gradients averaged over noisy copies of the image."""

import numpy as np

from engine.explain.base import BaseAttribution

SAMPLES = 16
NOISE = 0.15  # standard deviation as a fraction of the 0-255 range


class SmoothGrad(BaseAttribution):
    name = "smoothgrad"
    title = "SmoothGrad"

    def raw_maps(self, images, classes):
        rng = np.random.default_rng(0)  # the same noise every time: reproducible maps
        out = []
        for image, cls in zip(images, classes, strict=True):
            noisy = image[None] + rng.normal(0, NOISE * 255, (SAMPLES, *image.shape)).astype(np.float32)
            grads = self.input_gradients(noisy, [cls] * SAMPLES)
            out.append(np.abs(grads).max(axis=-1).mean(axis=0))
        return np.stack(out)
