"""Sample photos bundled with scikit-image, for trying ConvScope with no data."""

from __future__ import annotations

import numpy as np
from skimage import data

# skimage.data function -> caption. All ship inside the scikit-image wheel.
SAMPLE_PHOTOS = {
    "chelsea": "Chelsea the cat",
    "coffee": "A cup of coffee",
    "astronaut": "Astronaut Eileen Collins",
    "rocket": "A rocket on the launch pad",
}


def sample_photo(name: str) -> np.ndarray:
    """A bundled sample photo as (H, W, 3) uint8 RGB."""
    if name not in SAMPLE_PHOTOS:
        raise ValueError(f"unknown sample photo {name!r}; choose one of {', '.join(SAMPLE_PHOTOS)}")
    return skimage_photo(name)


def skimage_photo(name: str) -> np.ndarray:
    """Any photo of skimage.data by function name as (H, W, 3) uint8 RGB; grey ones get three equal channels."""
    img = np.asarray(getattr(data, name)())
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    return np.ascontiguousarray(img[..., :3].astype(np.uint8))
