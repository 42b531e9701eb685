"""Sample photos bundled with scikit-image, for trying ConvScope with no data."""

from __future__ import annotations

import numpy as np

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
    from skimage import data

    img = np.asarray(getattr(data, name)())
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    return np.ascontiguousarray(img[..., :3].astype(np.uint8))
