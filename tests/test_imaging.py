"""engine.imaging: cases 7-11 of RELIABILITY.md, each on a file generated here."""

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from engine import imaging
from engine.imaging import ImageLoadError


def _png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def _declare_size(png: bytes, width: int, height: int) -> bytes:
    """Rewrite a PNG's IHDR to claim another size (a decompression bomb header)."""
    assert png[12:16] == b"IHDR"
    ihdr = struct.pack(">II", width, height) + png[24:29]
    crc = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr) & 0xFFFFFFFF)
    return png[:16] + ihdr + crc + png[33:]


# --- 7. decompression bombs -------------------------------------------------


def test_bomb_png_far_over_pillows_limit_is_refused():
    bomb = _declare_size(_png_bytes(Image.new("L", (1, 1))), 20000, 20000)
    with pytest.raises(ImageLoadError) as info:
        imaging.load_rgb(bomb, name="bomb.png")
    assert info.value.reason == imaging.TOO_MANY_PIXELS and "bomb.png" in str(info.value)


def test_image_over_our_limit_but_under_pillows_is_refused():
    big = _declare_size(_png_bytes(Image.new("L", (1, 1))), 10000, 5000)  # 50 MP > 40 MP
    with pytest.raises(ImageLoadError, match="megapixel limit") as info:
        imaging.load_rgb(big)
    assert info.value.reason == imaging.TOO_MANY_PIXELS


def test_pillow_pixel_limit_is_never_disabled():
    assert Image.MAX_IMAGE_PIXELS is not None


# --- 8. truncated files -----------------------------------------------------


def test_truncated_jpeg_is_found_at_load(tmp_path):
    noise = np.random.default_rng(0).integers(0, 256, (128, 128, 3), dtype=np.uint8)
    path = tmp_path / "cut.jpg"
    Image.fromarray(noise).save(path, "JPEG", quality=95)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ImageLoadError) as info:
        imaging.load_rgb(path)
    assert info.value.reason == imaging.TRUNCATED and "cut.jpg" in str(info.value)


def test_truncated_png_is_found_at_load():
    noise = np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    data = _png_bytes(Image.fromarray(noise))
    with pytest.raises(ImageLoadError) as info:
        imaging.load_rgb(data[: len(data) // 2])
    assert info.value.reason == imaging.TRUNCATED


# --- 9. colour modes and EXIF ---------------------------------------------


def _roundtrip(img: Image.Image, fmt: str, **save) -> np.ndarray:
    buf = io.BytesIO()
    img.save(buf, fmt, **save)
    out = imaging.load_rgb(buf.getvalue())
    assert out.dtype == np.uint8 and out.ndim == 3 and out.shape[2] == 3
    return out


def test_cmyk_jpeg_becomes_rgb():
    out = _roundtrip(Image.new("CMYK", (16, 16), (0, 255, 255, 0)), "JPEG", quality=95)  # red ink
    r, g, b = out[8, 8].astype(int)
    assert r > 200 and g < 60 and b < 60


def test_ycck_jpeg_becomes_rgb():
    # Pillow writes CMYK JPEGs only; an Adobe APP14 transform of 2 makes the same bytes YCCK. Stored
    # (inverted) as Y, Cb, Cr, K = (179, 171, 0, 255), which is red ink once converted back.
    buf = io.BytesIO()
    Image.new("CMYK", (16, 16), (76, 84, 255, 0)).save(buf, "JPEG", quality=95)
    data = bytearray(buf.getvalue())
    adobe = data.index(b"Adobe")
    assert data[adobe + 11] == 0  # the transform flag: 0 = CMYK, 2 = YCCK
    data[adobe + 11] = 2
    assert Image.open(io.BytesIO(bytes(data))).info["adobe_transform"] == 2
    out = imaging.load_rgb(bytes(data))
    assert out.dtype == np.uint8 and out.shape == (16, 16, 3)
    r, g, b = out[8, 8].astype(int)
    assert r > 200 and g < 60 and b < 60


def test_rgba_is_composited_on_white():
    img = Image.new("RGBA", (8, 8), (255, 0, 0, 0))  # fully transparent red
    assert (_roundtrip(img, "PNG") == 255).all()
    img = Image.new("RGBA", (8, 8), (0, 0, 255, 255))
    assert tuple(_roundtrip(img, "PNG")[0, 0]) == (0, 0, 255)


def test_la_and_grayscale_and_bilevel():
    assert tuple(_roundtrip(Image.new("LA", (4, 4), (100, 255)), "PNG")[0, 0]) == (100, 100, 100)
    assert tuple(_roundtrip(Image.new("L", (4, 4), 37), "PNG")[0, 0]) == (37, 37, 37)
    assert tuple(_roundtrip(Image.new("1", (4, 4), 1), "PNG")[0, 0]) == (255, 255, 255)


def test_palette_with_and_without_transparency():
    p = Image.new("RGB", (4, 4), (0, 128, 0)).convert("P", palette=Image.Palette.ADAPTIVE)
    assert tuple(_roundtrip(p, "PNG")[0, 0]) == (0, 128, 0)
    p.info["transparency"] = p.getpixel((0, 0))
    assert tuple(_roundtrip(p, "PNG", transparency=p.getpixel((0, 0)))[0, 0]) == (255, 255, 255)


def test_16_bit_grayscale_is_scaled_not_clipped():
    a = np.full((4, 4), 32896, dtype=np.uint16)  # mid-grey in 16 bits
    img = Image.fromarray(a)
    assert img.mode.startswith("I;16")
    assert tuple(_roundtrip(img, "PNG")[0, 0]) == (128, 128, 128)


def test_32_bit_integer_image_is_rescaled():
    a = np.array([[0, 70000]], dtype=np.int32)
    out = _roundtrip(Image.fromarray(a, mode="I"), "TIFF")
    assert out[0, 0, 0] == 0 and out[0, 1, 0] == 255


def test_exif_orientation_is_applied(tmp_path):
    img = Image.new("RGB", (40, 20), (0, 0, 255))
    img.paste((255, 0, 0), (0, 0, 20, 20))  # left half red
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    path = tmp_path / "phone.jpg"
    img.save(path, "JPEG", exif=exif.tobytes(), quality=95)
    out = imaging.load_rgb(path)
    assert out.shape == (40, 20, 3)
    assert out[2, 10, 0] > 200  # red is now on top


def test_exif_orientation_is_the_same_in_training_prediction_and_overlays(tmp_path):
    """Training decodes files (pipeline), Predict and Inside decode uploaded bytes: both see the image upright."""
    from engine.data.pipeline import load_resized
    from engine.explain.overlay import overlay

    img = Image.new("RGB", (40, 20), (0, 0, 255))
    img.paste((255, 0, 0), (0, 0, 20, 20))  # left half red: on top once EXIF orientation 6 is applied
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "phone.jpg"
    img.save(path, "JPEG", exif=exif.tobytes(), quality=95)
    uploaded = imaging.load_rgb(path.read_bytes(), name="phone.jpg")  # what Predict and Inside get
    assert uploaded.shape == (40, 20, 3) and uploaded[2, 10, 0] > 200
    for policy in imaging.RESIZE_POLICIES:
        trained = load_resized(str(path), 32, policy)  # what a training batch holds
        np.testing.assert_array_equal(trained, imaging.resize(uploaded, 32, policy))
    drawn = overlay(uploaded, np.zeros((8, 8), np.float32), opacity=0.0)  # a CAM is drawn over the upright image
    np.testing.assert_array_equal(drawn, uploaded)


# --- 10. animations and multi-page files ------------------------------------


@pytest.mark.parametrize("fmt", ["GIF", "TIFF"])
def test_first_frame_of_animations_and_multipage(fmt):
    frames = [Image.new("RGB", (8, 8), c) for c in ((255, 0, 0), (0, 0, 255), (0, 255, 0))]
    buf = io.BytesIO()
    frames[0].save(buf, fmt, save_all=True, append_images=frames[1:])
    out = imaging.load_rgb(buf.getvalue())
    r, g, b = out[4, 4].astype(int)
    assert r > 200 and g < 60 and b < 60


# --- 11. formats decided by content ----------------------------------------


def test_png_named_jpg_is_decoded(tmp_path):
    path = tmp_path / "really_a_png.jpg"
    Image.new("RGB", (5, 3), (1, 2, 3)).save(path, "PNG")
    assert imaging.load_rgb(path).shape == (3, 5, 3)


@pytest.mark.parametrize(
    "content",
    [
        b"just some text, not an image\n",
        b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\n%%EOF\n",
        b"<!DOCTYPE html><html><body><img src='cat.jpg'></body></html>",
        b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n",  # never run Ghostscript
        b"",
    ],
    ids=["text", "pdf", "html", "eps", "empty"],
)
def test_non_images_named_jpg_are_refused(tmp_path, content):
    path = tmp_path / "photo.jpg"
    path.write_bytes(content)
    with pytest.raises(ImageLoadError) as info:
        imaging.load_rgb(path)
    assert info.value.reason == imaging.NOT_AN_IMAGE and "photo.jpg" in str(info.value)


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(ImageLoadError, match="no such file"):
        imaging.load_rgb(tmp_path / "nope.png")
    with pytest.raises(ImageLoadError, match="folder"):
        imaging.load_rgb(tmp_path)


def test_upload_over_the_size_limit_is_refused(monkeypatch):
    monkeypatch.setenv("CONVSCOPE_MAX_UPLOAD_MB", "1")
    with pytest.raises(ImageLoadError, match="over the 1 MB limit") as info:
        imaging.load_rgb(b"\0" * (2 * 1024 * 1024), name="huge.png")
    assert info.value.reason == imaging.TOO_LARGE


@pytest.mark.parametrize("policy", imaging.RESIZE_POLICIES)
def test_resize_policies(policy):
    rgb = np.zeros((30, 60, 3), np.uint8)
    rgb[:, :30] = 255
    out = imaging.resize(rgb, 32, policy)
    assert out.shape == (32, 32, 3) and out.dtype == np.uint8
    if policy == "pad":
        assert out[0, 16].sum() == 0 and out[16, 0].sum() > 0  # black bars top and bottom


def test_unknown_resize_policy():
    with pytest.raises(ValueError, match="stretch"):
        imaging.resize(np.zeros((4, 4, 3), np.uint8), 2, "squash")
