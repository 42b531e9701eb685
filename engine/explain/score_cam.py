"""Score-CAM (Wang et al. 2020): weight each activation map by the class score of the
image masked with it. Gradient-free; costs one forward pass per channel used."""

import numpy as np

from engine.explain.base import BaseCAM, normalise, upsample

MAX_CHANNELS = 64  # the most active channels only: all 1280 would take minutes on a CPU
BATCH = 32


class ScoreCAM(BaseCAM):
    name = "scorecam"
    title = "Score-CAM"
    needs_gradients = False

    def weights(self, activations, grads, classes, images):
        n, _, _, c = activations.shape
        size = images.shape[1]
        out = np.zeros((n, c), np.float32)
        for i in range(n):
            keep = np.argsort(-activations[i].max(axis=(0, 1)))[: min(MAX_CHANNELS, c)]
            masks = normalise(upsample(np.moveaxis(activations[i][..., keep], -1, 0), size))
            scores = []
            for start in range(0, len(keep), BATCH):
                m = masks[start : start + BATCH, ..., None]
                scores.append(self.model.logits(images[i][None] * m)[:, classes[i]])
            s = np.concatenate(scores)
            e = np.exp(s - s.max())
            out[i, keep] = e / e.sum()
        return out
