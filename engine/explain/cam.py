"""CAM (Zhou et al. 2016): for global-average-pooling + Dense heads, the class's Dense weights."""

import numpy as np

from engine.explain.base import BaseCAM
from engine.model.explainable import ExplainError


class CAM(BaseCAM):
    name = "cam"
    title = "CAM"
    needs_gradients = False

    def weights(self, activations, grads, classes, images):
        channels = activations.shape[-1]
        dense = _final_dense(self.model.model)
        kernel = np.asarray(dense.kernel)
        if kernel.shape[0] != channels:
            raise ExplainError(
                f"CAM needs global average pooling of {self.layer!r} straight into the last Dense layer; "
                f"that layer takes {kernel.shape[0]} features but {self.layer!r} has {channels} channels. "
                "Use Grad-CAM, which works for any head."
            )
        return kernel[:, classes].T  # (N, C)


def _final_dense(model):
    import keras  # heavy: TensorFlow loads in seconds; only what runs a model pays

    for layer in reversed(model.layers):
        if isinstance(layer, keras.layers.Dense):
            return layer
    raise ExplainError("CAM needs a Dense classification layer at the end of the model; use Grad-CAM")
