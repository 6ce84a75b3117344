"""Decoding dataset images into RGB, defensively.

The readers in ``trainer.data.readers`` only list files; this module is the costly step that
decodes them. ``probe_image`` is meant for validating an upload once (every image decoded,
so corrupt or truncated files are found before training starts); ``load_rgb`` is what the
data loader calls for every sample. Both raise ``ImageError`` (a ``ValueError``) with the
file name for anything that cannot be decoded, never a bare Pillow exception.

Choices:

- Only JPEG (including the multi-picture MPO variant some cameras write, of which the
  first picture is used), PNG, BMP and WebP are decoded, whatever the file extension says:
  it keeps Pillow's rarer decoders out of reach of uploaded files.
- Images above ``max_pixels`` are refused before decoding (decompression bombs); re-id
  crops are tiny, so the default of 40 megapixels is generous.
- The EXIF orientation is applied (phone crops are often stored rotated); broken EXIF data
  is ignored rather than failing the image.
- Transparency (RGBA, LA, PA, palette with a transparent colour) is composited on a white
  background by default. A plain ``convert("RGB")`` would expose whatever colour the
  transparent pixels happen to hold, usually black, which differs between tools.
- 16-bit greyscale is scaled to 8 bits (Pillow would clip it); CMYK and YCbCr go through
  Pillow's conversion.
"""

from __future__ import annotations

import contextlib
import os
from typing import IO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

__all__ = ["ALLOWED_FORMATS", "DEFAULT_MAX_PIXELS", "ImageError", "load_rgb", "probe_image"]

ALLOWED_FORMATS = ("JPEG", "PNG", "BMP", "WEBP")
DEFAULT_MAX_PIXELS = 40_000_000
_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})

ImageSource = str | os.PathLike[str] | IO[bytes]


class ImageError(ValueError):
    """An image file that cannot be decoded into RGB; the message names the file."""


def _name(source: ImageSource) -> str:
    if isinstance(source, str | os.PathLike):
        return os.fspath(source)
    return str(getattr(source, "name", "<stream>"))


def _to_rgb(img: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    """Convert any decoded mode to 8-bit RGB (see the module docstring for the choices)."""
    if img.mode == "RGB":
        return img
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
        if img.mode == "RGB":
            return img
    elif img.mode in ("L", "1") and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in _ALPHA_MODES:
        rgba = img.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (*background, 255))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    if img.mode.startswith("I") or img.mode == "F":
        values = np.asarray(img, dtype=np.float64)
        if img.mode != "F" and values.size and values.max() > 255:
            values = values / 256.0  # 16-bit samples
        gray = np.clip(np.rint(values), 0, 255).astype(np.uint8)
        return Image.fromarray(gray).convert("RGB")
    return img.convert("RGB")


def load_rgb(
    source: ImageSource,
    *,
    background: tuple[int, int, int] = (255, 255, 255),
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> Image.Image:
    """Decode an image file (path or binary stream) into an 8-bit RGB PIL image.

    Raises ``ImageError`` for unreadable, unsupported, corrupt, truncated or oversized files.
    """
    name = _name(source)
    try:
        with Image.open(source, formats=ALLOWED_FORMATS) as img:
            width, height = img.size
            if width <= 0 or height <= 0:
                raise ImageError(f"{name}: image has no pixels ({width}x{height})")
            if width * height > max_pixels:
                raise ImageError(
                    f"{name}: image too large ({width}x{height}, limit {max_pixels} pixels)"
                )
            img.load()
            # Broken EXIF data must not cost a good image its pixels.
            with contextlib.suppress(Exception):
                ImageOps.exif_transpose(img, in_place=True)
            return _to_rgb(img, background)
    except ImageError:
        raise
    except FileNotFoundError as err:
        raise ImageError(f"{name}: file not found") from err
    except UnidentifiedImageError as err:
        allowed = ", ".join(ALLOWED_FORMATS)
        raise ImageError(f"{name}: not a recognised image (allowed formats: {allowed})") from err
    except Exception as err:  # Pillow raises many types on corrupt input
        reason = str(err) or type(err).__name__
        raise ImageError(f"{name}: cannot decode image ({reason})") from err


def probe_image(source: ImageSource, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[int, int]:
    """(width, height) after fully decoding the image as ``load_rgb`` would.

    Decoding every pixel once is what catches truncated files; converting as well guarantees
    that a probed image will load later.
    """
    return load_rgb(source, max_pixels=max_pixels).size
