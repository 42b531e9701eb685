"""Builders for the bad and awkward files of RELIABILITY.md cases 1-11.

Everything is generated on the fly, small, and deterministic.
"""

from __future__ import annotations

import io
import shutil
import struct
import tarfile
import zipfile
import zlib
from pathlib import Path

import numpy as np
from PIL import Image


def rgb(seed: int, size: int = 32) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


def png_bytes(seed: int, size: int = 32) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb(seed, size)).save(buf, format="PNG")
    return buf.getvalue()


def jpeg_bytes(seed: int, size: int = 32, mode: str = "RGB", **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb(seed, size)).convert(mode).save(buf, format="JPEG", **kw)
    return buf.getvalue()


def bomb_png(width: int = 20000, height: int = 20000) -> bytes:
    """A tiny PNG whose header declares width x height pixels (case 7)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def exif_rotated_jpeg() -> bytes:
    """A 40x20 (wide) JPEG with EXIF orientation 6: shown as 20x40 (tall)."""
    img = Image.fromarray(rgb(7, 20).repeat(2, axis=1))  # (20, 40, 3)
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    img.save(buf, format="JPEG", exif=exif.tobytes())
    return buf.getvalue()


def animated_gif() -> bytes:
    frames = [Image.new("RGB", (16, 16), c) for c in ((255, 0, 0), (0, 0, 255))]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    return buf.getvalue()


def multipage_tiff() -> bytes:
    frames = [Image.new("RGB", (16, 16), c) for c in ((0, 255, 0), (255, 0, 0))]
    buf = io.BytesIO()
    frames[0].save(buf, format="TIFF", save_all=True, append_images=frames[1:])
    return buf.getvalue()


def mode_png(mode: str) -> bytes:
    base = Image.fromarray(rgb(11, 24))
    if mode == "I;16":
        img = Image.fromarray(np.arange(24 * 24, dtype=np.uint16).reshape(24, 24) * 100)  # uint16 -> I;16
    elif mode == "P":
        img = base.convert("P", palette=Image.Palette.ADAPTIVE)
    else:
        img = base.convert(mode)
    buf = io.BytesIO()
    img.save(buf, format="TIFF" if mode == "CMYK" else "PNG")
    return buf.getvalue()


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def messy_folder(root: Path) -> dict[str, str]:
    """A class-per-folder tree with every kind of awkward file.

    Returns:
        {relative path: expected reason} for each file ingest must skip
        (reason "" for files that must be kept).
    """
    expect = {}

    def put(rel: str, data: bytes, reason: str = "") -> None:
        write(root / rel, data)
        expect[rel] = reason

    for i in range(4):
        put(f"cats/cat{i}.png", png_bytes(i))
        put(f"dogs/dog{i}.jpg", jpeg_bytes(100 + i))
    put("cats/cmyk.jpg", jpeg_bytes(20, mode="CMYK"))
    put("cats/gray16.png", mode_png("I;16"))
    put("cats/palette.png", mode_png("P"))
    put("cats/rgba.png", mode_png("RGBA"))
    put("cats/la.png", mode_png("LA"))
    put("cats/gray.png", mode_png("L"))
    put("dogs/animated.gif", animated_gif())
    put("dogs/pages.tiff", multipage_tiff())
    put("dogs/rotated.jpg", exif_rotated_jpeg())
    put("dogs/really_a_png.jpg", png_bytes(30))  # case 11
    put("dogs/notes.jpg", b"these are my notes, not a photo\n" * 4, "not an image")
    put("dogs/paper.jpg", b"%PDF-1.4\n1 0 obj << >> endobj\ntrailer << >>\n%%EOF\n", "not an image")
    put("cats/page.jpg", b"<!DOCTYPE html><html><body><img src='cat.jpg'></body></html>", "not an image")
    put("cats/truncated.jpg", jpeg_bytes(40, size=64)[:300], "truncated or corrupt")
    put("dogs/bomb.png", bomb_png(), "too many pixels")
    put("cats/cat0_copy.png", png_bytes(0), "duplicate")  # same bytes as cats/cat0.png
    put("dogs/dog_or_cat.png", png_bytes(1), "duplicate")  # same bytes as cats/cat1.png: conflicting label
    put("cats/.DS_Store", b"\0\0\0\1Bud1", "hidden or system file")
    put("cats/._cat0.png", b"\0\5\26\7 Mac OS X resource fork", "hidden or system file")
    put("dogs/Thumbs.db", b"\xd0\xcf\x11\xe0", "hidden or system file")
    put(".ipynb_checkpoints/cat0-checkpoint.png", png_bytes(0), "hidden or system file")
    put("__MACOSX/cats/._cat1.png", b"\0\5\26\7", "hidden or system file")
    put("README.txt", b"my dataset\n", "not in a class folder")
    return expect


def zip_folder(folder: Path, out: Path, prefix: str = "") -> Path:
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
        for p in sorted(folder.rglob("*")):
            if p.is_file():
                zf.write(p, prefix + p.relative_to(folder).as_posix())
    return out


def evil_zip(out: Path) -> Path:
    """Two classes of good images plus members that try to escape (case 1)."""
    with zipfile.ZipFile(out, "w") as zf:
        for i in range(3):
            zf.writestr(f"data/a/a{i}.png", png_bytes(200 + i))
            zf.writestr(f"data/b/b{i}.png", png_bytes(300 + i))
        zf.writestr("../evil.png", png_bytes(1))
        zf.writestr("data/../../evil2.png", png_bytes(2))
        zf.writestr("/tmp/abs_evil.png", png_bytes(3))
        zf.writestr("C:\\windows\\evil.png", png_bytes(4))
        link = zipfile.ZipInfo("data/a/link.png")
        link.external_attr = 0o120777 << 16  # a symlink member pointing at /etc/passwd
        zf.writestr(link, "/etc/passwd")
        zf.writestr("__MACOSX/data/a/._a0.png", b"\0\5\26\7")
    return out


def ratio_bomb_zip(out: Path, megabytes: int = 50) -> Path:
    """One member that expands ~1000x (case 2)."""
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("a/a0.png", png_bytes(1))
        zf.writestr("b/zeros.png", b"\0" * (megabytes << 20))
    return out


def overlapping_zip(out: Path) -> Path:
    """Central-directory entries that share one local file (the overlapped bomb)."""
    with zipfile.ZipFile(out, "w") as zf:
        zf.writestr("a/x.png", png_bytes(1))
        zf.writestr("b/y.png", png_bytes(2))
    data = bytearray(out.read_bytes())
    second = data.index(b"PK\x01\x02", data.index(b"PK\x01\x02") + 4)
    data[second + 42 : second + 46] = struct.pack("<I", 0)  # point entry 2 at entry 1's bytes
    out.write_bytes(bytes(data))
    return out


def lying_zip(out: Path) -> Path:
    """A member whose header claims fewer bytes than it holds."""
    payload = b"\0" * 4096
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("a/a.png", png_bytes(1))
        zf.writestr("b/b.png", payload)
    data = bytearray(out.read_bytes())
    # Patch the uncompressed size in the central directory of member 2 (offset 24).
    second = data.index(b"PK\x01\x02", data.index(b"PK\x01\x02") + 4)
    data[second + 24 : second + 28] = struct.pack("<I", 10)
    out.write_bytes(bytes(data))
    return out


def many_entries_zip(out: Path, n: int) -> Path:
    with zipfile.ZipFile(out, "w") as zf:
        for i in range(n):
            zf.writestr(f"c{i % 2}/f{i}.png", b"x")
    return out


def evil_tar(out: Path) -> Path:
    """Good class folders plus symlink, hard link, device and ../ members (case 1)."""
    with tarfile.open(out, "w:gz") as tf:
        for cls in ("a", "b"):
            for i in range(2):
                data = png_bytes(hash((cls, i)) % 1000)
                info = tarfile.TarInfo(f"{cls}/{i}.png")
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
        for name, kind, target in (
            ("a/sym.png", tarfile.SYMTYPE, "/etc/passwd"),
            ("a/hard.png", tarfile.LNKTYPE, "/etc/passwd"),
            ("b/dev.png", tarfile.CHRTYPE, ""),
        ):
            info = tarfile.TarInfo(name)
            info.type, info.linkname = kind, target
            tf.addfile(info)
        data = png_bytes(5)
        info = tarfile.TarInfo("../../escape.png")
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))
    return out


def copy_tree(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst
