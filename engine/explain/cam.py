"""CAM (Zhou et al. 2016): for global-average-pooling + Dense heads, the class's Dense weights.

The head may be a chain of linear Dense layers (Dropout between them does nothing outside
training): an imported single-logit model ends in its own Dense(1) and ConvScope's fixed
Dense(1 -> 2) `two_logits`. A chain of linear maps is one linear map, its kernels' product,
so the CAM weights are that product's columns (biases shift a class's score, not its map).
"""

import numpy as np

from engine.explain.base import BaseCAM
from engine.model.explainable import ExplainError

PASS_THROUGH = ("Dropout", "SpatialDropout1D", "GaussianDropout", "GaussianNoise", "AlphaDropout", "Identity")


class CAM(BaseCAM):
    name = "cam"
    title = "CAM"
    needs_gradients = False

    def weights(self, activations, grads, classes, images):
        channels = activations.shape[-1]
        kernel = head_kernel(self.model.model)
        if kernel.shape[0] != channels:
            raise ExplainError(
                f"CAM needs global average pooling of {self.layer!r} straight into the last Dense layer; "
                f"that layer takes {kernel.shape[0]} features but {self.layer!r} has {channels} channels. "
                "Use Grad-CAM, which works for any head."
            )
        return kernel[:, classes].T  # (N, C)


def head_kernel(model) -> np.ndarray:
    """(features, K): the kernel of the model's last Dense, times those of linear Dense layers right before it."""
    import keras  # heavy: TensorFlow loads in seconds; only what runs a model pays

    kernel = None
    for layer in reversed(model.layers):
        if isinstance(layer, keras.layers.Dense):
            if kernel is not None and getattr(layer.activation, "__name__", "") != "linear":
                break  # a nonlinear Dense before: the head is not one linear map; the last Dense alone decides
            w = np.asarray(layer.kernel, np.float64)
            kernel = w if kernel is None else w @ kernel
        elif kernel is not None and type(layer).__name__ not in PASS_THROUGH:
            break
    if kernel is None:
        raise ExplainError("CAM needs a Dense classification layer at the end of the model; use Grad-CAM")
    return kernel.astype(np.float32)
