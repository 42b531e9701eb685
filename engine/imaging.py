"""The one safe way to turn a path or uploaded bytes into an RGB uint8 array.

Decoding is by content, never by file name, and only for a fixed set of
raster formats (no EPS/PostScript, which would run Ghostscript). Images
declaring more pixels than the limit are refused before decoding; the whole
image is decoded, so truncated files fail here and not in epoch 3. Every
mode (CMYK, YCCK, RGBA, LA, P, I;16, I, F, 1, L) becomes (H, W, 3) uint8 RGB,
with EXIF orientation applied, and animations give their first frame.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from engine import settings
from engine.errors import ImageLoadError

_WANTED_FORMATS = ("JPEG", "PNG", "GIF", "BMP", "TIFF", "WEBP", "MPO", "PPM")
Image.init()  # register every plugin, so formats= below can name them
ALLOWED_FORMATS = tuple(f for f in _WANTED_FORMATS if f in Image.OPEN)
RESIZE_POLICIES = ("stretch", "crop", "pad")

# Never let Pillow half-decode: a truncated file must raise (case 8).
ImageFile.LOAD_TRUNCATED_IMAGES = False

# Reasons, so an ingest report can count them per class.
NOT_AN_IMAGE = "not an image"
TRUNCATED = "truncated or corrupt"
TOO_MANY_PIXELS = "too many pixels"
TOO_LARGE = "file too large"
UNREADABLE_MODE = "unreadable mode"


def _open(source: str | Path | bytes | BinaryIO, label: str) -> Image.Image:
    if isinstance(source, bytes | bytearray):
        limit = settings.max_upload_bytes()
        if len(source) > limit:
            raise ImageLoadError(
                f"{label}: {len(source) / 1e6:.1f} MB is over the {limit / 1e6:.0f} MB limit "
                "(CONVSCOPE_MAX_UPLOAD_MB); use a smaller file",
                TOO_LARGE,
            )
        source = io.BytesIO(source)
    try:
        with warnings.catch_warnings():
            # Pillow warns between 1x and 2x its own limit; we check explicitly below.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return Image.open(source, formats=ALLOWED_FORMATS)
    except FileNotFoundError as exc:
        raise ImageLoadError(f"{label}: no such file", NOT_AN_IMAGE) from exc
    except IsADirectoryError as exc:
        raise ImageLoadError(f"{label}: is a folder, not an image", NOT_AN_IMAGE) from exc
    except Image.DecompressionBombError as exc:
        raise ImageLoadError(
            f"{label}: declares over {2 * (Image.MAX_IMAGE_PIXELS or 0) / 1e6:.0f} megapixels, "
            "a decompression bomb; refused before decoding",
            TOO_MANY_PIXELS,
        ) from exc
    except UnidentifiedImageError as exc:
        raise ImageLoadError(
            f"{label}: not an image Pillow can decode as {'/'.join(ALLOWED_FORMATS[:6])} (checked by content)",
            NOT_AN_IMAGE,
        ) from exc
    except OSError as exc:
        if "truncat" in str(exc).lower():  # cut off so early that even the header is incomplete
            raise ImageLoadError(f"{label}: truncated image data ({exc})", TRUNCATED) from exc
        raise ImageLoadError(f"{label}: could not be read ({exc})", NOT_AN_IMAGE) from exc


def _to_uint8_rgb(img: Image.Image, label: str) -> np.ndarray:
    mode = img.mode
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in img.info):
        # Composite on white: hidden RGB under alpha=0 is often garbage.
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.asarray(Image.alpha_composite(background, rgba).convert("RGB"))
    if mode in ("RGB", "L", "P", "CMYK", "YCbCr", "1", "LAB", "HSV"):
        return np.asarray(img.convert("RGB"))
    if mode.startswith("I;16") or mode in ("I", "F"):
        a = np.asarray(img, dtype=np.float64)
        if mode.startswith("I;16"):
            a = a / 257.0  # full 16-bit range -> 8 bits
        elif a.size and (a.max() > 255 or a.min() < 0):
            lo, hi = float(a.min()), float(a.max())
            a = (a - lo) * (255.0 / (hi - lo or 1.0))
        gray = np.clip(np.rint(a), 0, 255).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    raise ImageLoadError(f"{label}: unsupported colour mode {mode}", UNREADABLE_MODE)


def load_rgb(
    source: str | Path | bytes | BinaryIO, *, name: str | None = None, max_pixels: int | None = None
) -> np.ndarray:
    """Decode an image fully into RGB.

    Args:
        source: a path, the file's bytes, or a binary file object.
        name: how to call the image in error messages (default: the path).
        max_pixels: refuse images declaring more pixels (default from settings).

    Returns:
        uint8 array (H, W, 3), EXIF orientation applied, first frame only.

    Raises:
        ImageLoadError: with `.reason`, for anything that is not a usable image.
    """
    label = name or (str(source) if isinstance(source, str | Path) else "uploaded image")
    limit = max_pixels or settings.max_image_pixels()
    img = _open(source, label)
    try:
        w, h = img.size
        if w * h > limit:
            raise ImageLoadError(
                f"{label}: {w}x{h} = {w * h / 1e6:.0f} megapixels is over the {limit / 1e6:.0f} "
                "megapixel limit (a decompression bomb, or just too big); downscale it first",
                TOO_MANY_PIXELS,
            )
        if getattr(img, "n_frames", 1) > 1:
            img.seek(0)  # animated GIF / multi-page TIFF: the first frame
        try:
            img.load()  # decode everything now, so truncation shows up here
            img = ImageOps.exif_transpose(img)
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
            raise ImageLoadError(f"{label}: truncated or corrupt image data ({exc})", TRUNCATED) from exc
        return np.ascontiguousarray(_to_uint8_rgb(img, label))
    finally:
        img.close()


def resize(rgb: np.ndarray, size: int, policy: str = "stretch") -> np.ndarray:
    """Resize (H, W, 3) uint8 to (size, size, 3) uint8.

    Policies: `stretch` ignores the aspect ratio; `crop` scales the short side
    to `size` and cuts the centre; `pad` fits the long side and pads with black.
    """
    if policy not in RESIZE_POLICIES:
        raise ValueError(f"resize policy must be one of {RESIZE_POLICIES}, got {policy!r}")
    img = Image.fromarray(rgb)
    if policy == "stretch":
        out = img.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=3.0)
    elif policy == "crop":
        out = ImageOps.fit(img, (size, size), Image.Resampling.BILINEAR)
    else:
        out = ImageOps.pad(img, (size, size), Image.Resampling.BILINEAR, color=(0, 0, 0))
    return np.asarray(out.convert("RGB"))
