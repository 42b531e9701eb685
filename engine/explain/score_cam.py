"""Score-CAM (Wang et al. 2020): weight each activation map by the class probability of the
image masked with it (as jacobgil/pytorch-grad-cam does). Gradient-free; one forward pass per
channel used. Probabilities keep the weights comparable across classes: an unlikely class gets
small weights, so its map stays dark on the predicted class's scale."""

import numpy as np

from engine.explain.base import BaseCAM, normalise, predicted_where_negative, upsample

MAX_CHANNELS = 64  # the most active channels only: all 1280 would take minutes on a CPU


class ScoreCAM(BaseCAM):
    name = "scorecam"
    title = "Score-CAM"
    needs_gradients = False

    def passes(self, size):
        return 1 + MAX_CHANNELS, 0

    def raw_maps_and_logits(self, images, classes, progress=None):
        a, _, y = self.activations_and_grads(images, classes)
        w = self.weights(a, None, predicted_where_negative(classes, y), images, progress)
        return np.maximum((w[:, None, None, :] * a).sum(-1), 0), y

    def weights(self, activations, grads, classes, images, progress=None):
        n, _, _, c = activations.shape
        size = images.shape[1]
        out = np.zeros((n, c), np.float32)
        for i in range(n):
            keep = np.argsort(-activations[i].max(axis=(0, 1)))[: min(MAX_CHANNELS, c)]
            masks = normalise(upsample(np.moveaxis(activations[i][..., keep], -1, 0), size))

            def step(done, i=i):
                if progress:
                    progress((i + done) / n)

            # All masked copies of image i in one batched call: (len(keep), S, S, 3).
            out[i, keep] = self.model.probabilities(images[i][None] * masks[..., None], step)[:, classes[i]]
        return out
