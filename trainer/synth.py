"""Synthetic Market-1501-style re-identification datasets, drawn with PIL.

Why: no real re-ID dataset can ship with this project, yet tests, benchmarks and demos need
one whose identity lies in the pixels and whose imaging statistics differ between domains,
so that SpCL's unsupervised adaptation has something to adapt to.

* Identity = what a person wears and looks like: upper/lower garment colours and patterns
  (plain, stripes, checks), sleeve and trouser kinds, bag (none, backpack, handbag) and its
  colour and side, hat, skin and hair tone, hair length and body shape.
* Camera = nuisance shared by all of its images: lighting (brightness, gamma), colour cast,
  saturation, blur, noise, JPEG quality, a textured background and a viewpoint bias
  (front/back/side), plus per-image jitter of pose, position, scale and partial occlusion.
* Style = a domain: the distributions cameras and body shapes are drawn from. All styles use
  the same attribute vocabulary (so adaptation is meaningful) but different imaging
  statistics (so that there is a domain gap).

Everything is derived from integer-keyed RNGs, ``(seed, style, kind, pid, cam, k)``, so the
output is byte-identical for the same arguments whatever the number of worker processes,
and two styles with the same seed hold different people, like two real datasets.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import re
import shutil
import zlib
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageChops, ImageDraw, ImageEnhance, ImageFilter

__all__ = [
    "FILENAME_RE",
    "SPLITS",
    "STYLES",
    "Identity",
    "Style",
    "generate_dataset",
    "parse_filename",
    "render_image",
]

RGB = tuple[int, int, int]
Point = tuple[float, float]

SPLITS = ("bounding_box_train", "query", "bounding_box_test")
#: ``PPPP_cCsS_FFFFFF_00.jpg``: person id, camera, sequence, frame, detection index.
FILENAME_RE = re.compile(r"^(\d{4})_c(\d+)s(\d+)_(\d{6})_(\d{2})\.jpg$")

_SS = 2  # supersampling factor: figures are drawn at twice the size, then box-reduced
_MAX_FRAME = 999_999
_MIN_IMAGES_PER_CAMERA = 2

# Integer tags that keep the RNG streams of different purposes apart.
_TAG_IDENTITY, _TAG_CAMERA, _TAG_IMAGE, _TAG_PLAN, _TAG_BACKGROUND = 1, 2, 3, 4, 5


# --------------------------------------------------------------------------------------
# Vocabulary shared by every style


_PALETTE: dict[str, RGB] = {
    "black": (28, 28, 32),
    "white": (236, 236, 230),
    "grey": (125, 125, 128),
    "light_grey": (185, 185, 188),
    "red": (205, 30, 38),
    "maroon": (118, 24, 36),
    "orange": (238, 122, 24),
    "yellow": (238, 212, 44),
    "green": (42, 152, 64),
    "olive": (108, 118, 44),
    "teal": (22, 140, 142),
    "light_blue": (122, 182, 232),
    "blue": (32, 72, 192),
    "navy": (26, 36, 92),
    "purple": (112, 52, 152),
    "pink": (236, 132, 172),
    "brown": (112, 72, 42),
    "beige": (212, 192, 152),
}
_DARK_COLOURS = ("black", "grey", "maroon", "olive", "navy", "brown")
_LOWER_COLOURS: dict[str, RGB] = {
    "denim": (58, 84, 132),
    "light_denim": (112, 142, 182),
    "black": (30, 30, 34),
    "grey": (110, 110, 114),
    "khaki": (170, 150, 102),
    "beige": (206, 188, 150),
    "navy": (28, 38, 88),
    "white": (230, 230, 226),
    "brown": (100, 66, 40),
    "red": (180, 34, 40),
    "green": (52, 110, 60),
}
_DARK_LOWER = ("denim", "black", "grey", "navy", "brown")
_SKIN: tuple[RGB, ...] = (
    (250, 218, 190),
    (238, 198, 164),
    (222, 178, 140),
    (196, 148, 108),
    (158, 110, 76),
    (112, 78, 54),
)
_HAIR: tuple[RGB, ...] = (
    (26, 22, 20),
    (62, 42, 28),
    (108, 72, 42),
    (208, 178, 110),
    (160, 158, 156),
    (148, 68, 34),
)
_PATTERNS = ("plain", "stripes", "checks")
_LOWER_KINDS = ("trousers", "shorts", "skirt")
_BAGS = ("none", "backpack", "handbag")
_VIEWS = ("front", "back", "side")


@dataclass(frozen=True)
class Style:
    """A domain: the distributions that cameras, framing and body shapes are drawn from."""

    name: str
    description: str
    background: str  # "outdoor", "night" or "indoor": the family of background drawings
    brightness: tuple[float, float]
    gamma: tuple[float, float]
    saturation: tuple[float, float]
    cast: tuple[float, float, float]  # mean per-channel gain of the light
    cast_spread: float  # how much each camera's gains deviate from ``cast``
    blur: tuple[float, float]  # Gaussian radius in output pixels
    noise: tuple[float, float]  # sigma in 8-bit levels
    jpeg_quality: tuple[int, int]
    occlusion: float  # probability that an image is partially occluded
    height_frac: tuple[float, float]  # figure height / image height
    width_scale: tuple[float, float]
    leg_ratio: tuple[float, float]
    dark_clothes: float  # probability that a garment colour comes from the dark subset
    shorts_or_skirt: float  # probability of shorts or a skirt instead of trousers


STYLES: dict[str, Style] = {
    s.name: s
    for s in (
        Style(
            name="market",
            description="summer daylight outdoors: saturated colours, sharp, bright",
            background="outdoor",
            brightness=(0.98, 1.12),
            gamma=(0.85, 1.0),
            saturation=(1.05, 1.3),
            cast=(1.0, 1.0, 1.0),
            cast_spread=0.05,
            blur=(0.0, 0.45),
            noise=(0.5, 2.5),
            jpeg_quality=(88, 95),
            occlusion=0.12,
            height_frac=(0.82, 0.95),
            width_scale=(0.82, 1.1),
            leg_ratio=(0.47, 0.54),
            dark_clothes=0.2,
            shorts_or_skirt=0.45,
        ),
        Style(
            name="night",
            description="winter night streets: dim, tinted, desaturated, blurry and noisy",
            background="night",
            brightness=(0.55, 0.75),
            gamma=(1.05, 1.3),
            saturation=(0.35, 0.6),
            cast=(1.12, 0.98, 0.78),
            cast_spread=0.12,
            blur=(0.9, 1.7),
            noise=(5.0, 11.0),
            jpeg_quality=(60, 78),
            occlusion=0.25,
            height_frac=(0.68, 0.86),
            width_scale=(0.98, 1.3),
            leg_ratio=(0.41, 0.48),
            dark_clothes=0.55,
            shorts_or_skirt=0.08,
        ),
        Style(
            name="indoor",
            description="indoor mall/campus: fluorescent green-white cast, moderate blur",
            background="indoor",
            brightness=(0.78, 0.95),
            gamma=(0.95, 1.15),
            saturation=(0.65, 0.85),
            cast=(0.93, 1.05, 0.97),
            cast_spread=0.06,
            blur=(0.45, 1.0),
            noise=(2.0, 5.0),
            jpeg_quality=(75, 88),
            occlusion=0.2,
            height_frac=(0.74, 0.9),
            width_scale=(0.9, 1.2),
            leg_ratio=(0.43, 0.5),
            dark_clothes=0.35,
            shorts_or_skirt=0.2,
        ),
    )
}


@dataclass(frozen=True)
class Identity:
    """Everything that makes a person recognisable across cameras."""

    pid: int
    skin: RGB
    hair: RGB
    long_hair: bool
    hat: RGB | None
    upper: RGB
    upper2: RGB  # second colour of stripes/checks
    upper_pattern: str
    pattern_count: int
    long_sleeves: bool
    lower: RGB
    lower_kind: str
    shoes: RGB
    bag: str
    bag_colour: RGB
    bag_side: int  # +1: the person's right-hand side, -1: left
    height_frac: float
    width_scale: float
    leg_ratio: float
    hip_ratio: float
    head_scale: float


@dataclass(frozen=True)
class _Camera:
    """Imaging conditions shared by all images of one camera."""

    cam: int
    brightness: float
    gamma: float
    gains: tuple[float, float, float]
    saturation: float
    blur: float
    noise: float
    jpeg_quality: int
    view_probs: tuple[float, float, float]
    scale: float  # typical distance: multiplies the figure height
    light_side: int  # which side of the body is shaded


# --------------------------------------------------------------------------------------
# Deterministic randomness


def _style_key(style: str) -> int:
    return zlib.crc32(style.encode())


def _rng(seed: int, style: str, tag: int, *keys: int) -> np.random.Generator:
    """A generator that depends only on its keys: per-image streams need no shared state."""
    return np.random.default_rng([seed, _style_key(style), tag, *keys])


def _uniform(rng: np.random.Generator, bounds: tuple[float, float]) -> float:
    return float(rng.uniform(bounds[0], bounds[1]))


def _jitter(rng: np.random.Generator, colour: RGB, amount: float) -> RGB:
    values = np.asarray(colour, dtype=np.float64) + rng.uniform(-amount, amount, size=3)
    return tuple(int(v) for v in np.clip(values, 0, 255))  # type: ignore[return-value]


def _shade(colour: RGB, factor: float) -> RGB:
    return tuple(min(255, max(0, int(c * factor))) for c in colour)  # type: ignore[return-value]


def _pick(rng: np.random.Generator, options: Sequence[Any]) -> Any:
    return options[int(rng.integers(len(options)))]


def _garment_colour(
    rng: np.random.Generator, palette: dict[str, RGB], dark: Sequence[str], p_dark: float
) -> RGB:
    names = list(dark) if rng.random() < p_dark else list(palette)
    return _jitter(rng, palette[_pick(rng, names)], 14)


@lru_cache(maxsize=4096)
def _identity(seed: int, style_name: str, pid: int) -> Identity:
    style = STYLES[style_name]
    rng = _rng(seed, style_name, _TAG_IDENTITY, pid)
    upper = _garment_colour(rng, _PALETTE, _DARK_COLOURS, style.dark_clothes)
    upper2 = upper
    while sum(abs(a - b) for a, b in zip(upper, upper2, strict=True)) < 150:
        upper2 = _jitter(rng, _PALETTE[_pick(rng, list(_PALETTE))], 10)
    pattern = _PATTERNS[int(rng.choice(3, p=[0.55, 0.25, 0.2]))]
    if rng.random() < style.shorts_or_skirt:
        lower_kind = "shorts" if rng.random() < 0.6 else "skirt"
    else:
        lower_kind = "trousers"
    bag = _BAGS[int(rng.choice(3, p=[0.4, 0.35, 0.25]))]
    return Identity(
        pid=pid,
        skin=_jitter(rng, _pick(rng, _SKIN), 8),
        hair=_jitter(rng, _pick(rng, _HAIR), 10),
        long_hair=bool(rng.random() < 0.35),
        hat=_garment_colour(rng, _PALETTE, _DARK_COLOURS, 0.5) if rng.random() < 0.2 else None,
        upper=upper,
        upper2=upper2,
        upper_pattern=pattern,
        pattern_count=int(rng.integers(3, 7)),
        long_sleeves=bool(rng.random() < (0.35 + 0.6 * style.dark_clothes)),
        lower=_garment_colour(rng, _LOWER_COLOURS, _DARK_LOWER, 0.3 + 0.5 * style.dark_clothes),
        lower_kind=lower_kind,
        shoes=_jitter(rng, _pick(rng, [(25, 25, 25), (230, 230, 230), (90, 60, 40)]), 12),
        bag=bag,
        bag_colour=_garment_colour(rng, _PALETTE, _DARK_COLOURS, 0.4),
        bag_side=1 if rng.random() < 0.5 else -1,
        height_frac=_uniform(rng, style.height_frac),
        width_scale=_uniform(rng, style.width_scale),
        leg_ratio=_uniform(rng, style.leg_ratio),
        hip_ratio=float(rng.uniform(0.72, 0.95)),
        head_scale=float(rng.uniform(0.9, 1.12)),
    )


@lru_cache(maxsize=256)
def _camera(seed: int, style_name: str, cam: int) -> _Camera:
    style = STYLES[style_name]
    rng = _rng(seed, style_name, _TAG_CAMERA, cam)
    gains = np.asarray(style.cast) * (1.0 + rng.uniform(-style.cast_spread, style.cast_spread, 3))
    views = rng.dirichlet([2.0, 2.0, 1.5])
    return _Camera(
        cam=cam,
        brightness=_uniform(rng, style.brightness),
        gamma=_uniform(rng, style.gamma),
        gains=(float(gains[0]), float(gains[1]), float(gains[2])),
        saturation=_uniform(rng, style.saturation),
        blur=_uniform(rng, style.blur),
        noise=_uniform(rng, style.noise),
        jpeg_quality=int(rng.integers(style.jpeg_quality[0], style.jpeg_quality[1] + 1)),
        view_probs=(float(views[0]), float(views[1]), float(views[2])),
        scale=float(rng.uniform(0.95, 1.03)),
        light_side=1 if rng.random() < 0.5 else -1,
    )


# --------------------------------------------------------------------------------------
# Backgrounds: one larger canvas per camera, cropped at a random offset per image


def _gradient(width: int, height: int, top: RGB, bottom: RGB) -> np.ndarray:
    t = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None, None]
    col = (1 - t) * np.asarray(top, np.float32) + t * np.asarray(bottom, np.float32)
    return np.broadcast_to(col, (height, width, 3)).copy()


def _ground(arr: np.ndarray, horizon: int, near: RGB, far: RGB) -> None:
    h = arr.shape[0]
    arr[horizon:] = _gradient(arr.shape[1], h - horizon, far, near)


def _textured(rng: np.random.Generator, arr: np.ndarray, sigma: float) -> Image.Image:
    """Fine grain plus blotches so that backgrounds are not flat colour."""
    h, w = arr.shape[:2]
    coarse = rng.normal(128.0, 40.0, (h // 24 + 2, w // 24 + 2)).clip(0, 255).astype(np.uint8)
    smooth = Image.fromarray(coarse).resize((w, h), Image.Resampling.BICUBIC)
    blotch = (np.asarray(smooth, np.float32)[:, :, None] - 128.0) / 40.0
    arr = arr + sigma * rng.standard_normal(arr.shape).astype(np.float32) + 2 * sigma * blotch
    img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    return img.filter(ImageFilter.GaussianBlur(3))


def _bg_outdoor(rng: np.random.Generator, w: int, h: int) -> Image.Image:
    horizon = int(h * rng.uniform(0.3, 0.55))
    facade = _jitter(
        rng,
        _pick(
            rng, [(176, 92, 70), (204, 198, 186), (122, 146, 170), (224, 204, 160), (96, 120, 96)]
        ),
        18,
    )
    arr = _gradient(w, h, _shade(facade, 1.1), _shade(facade, 0.85))
    pavement = _jitter(rng, _pick(rng, [(160, 158, 150), (186, 164, 140), (128, 128, 134)]), 12)
    _ground(arr, horizon, _shade(pavement, 1.08), _shade(pavement, 0.9))
    img = _textured(rng, arr, 5.0)
    draw = ImageDraw.Draw(img)
    if rng.random() < 0.5:  # sky strip above the buildings
        top = int(horizon * rng.uniform(0.15, 0.4))
        draw.rectangle((0, 0, w, top), fill=_jitter(rng, (150, 192, 236), 15))
    else:  # rows of windows
        ww, wh = int(w * rng.uniform(0.06, 0.1)), int(h * rng.uniform(0.04, 0.07))
        glass = _jitter(rng, (70, 90, 110), 25)
        for y in range(int(h * 0.03), horizon - wh, int(wh * 2.2)):
            for x in range(int(rng.integers(0, ww)), w - ww, int(ww * 2)):
                draw.rectangle(
                    (x, y, x + ww, y + wh), fill=glass, outline=_shade(facade, 0.6), width=3
                )
    for _ in range(int(rng.integers(1, 4))):  # shop signs and awnings
        x = int(rng.uniform(0, w * 0.8))
        y = int(rng.uniform(0, max(1, horizon - h * 0.08)))
        colour = _jitter(rng, _pick(rng, list(_PALETTE.values())), 10)
        draw.rectangle((x, y, x + int(w * rng.uniform(0.15, 0.4)), y + int(h * 0.05)), fill=colour)
    for _ in range(int(rng.integers(4, 9))):  # paving lines
        y = horizon + int((h - horizon) * rng.random() ** 0.7)
        draw.line((0, y, w, y + int(rng.uniform(-10, 10))), fill=_shade(pavement, 0.75), width=2)
    for _ in range(int(rng.integers(2, 6))):  # clutter on the ground
        kind = int(rng.integers(4))
        x = int(rng.uniform(0, w))
        y = int(rng.uniform(horizon, h))
        if kind == 0:  # tree
            r = int(h * rng.uniform(0.08, 0.14))
            trunk = (92, 64, 40)
            draw.rectangle((x - r // 6, y - 3 * r, x + r // 6, y), fill=trunk)
            draw.ellipse(
                (x - r, y - 5 * r, x + r, y - 2.6 * r), fill=_jitter(rng, (56, 128, 52), 20)
            )
        elif kind == 1:  # bollard
            draw.rectangle((x, y - int(h * 0.08), x + int(w * 0.05), y), fill=(70, 72, 78))
        elif kind == 2:  # bicycle
            r = int(h * 0.05)
            colour = _jitter(rng, _pick(rng, list(_PALETTE.values())), 10)
            draw.ellipse((x - 3 * r, y - 2 * r, x - r, y), outline=(30, 30, 30), width=4)
            draw.ellipse((x + r, y - 2 * r, x + 3 * r, y), outline=(30, 30, 30), width=4)
            draw.line((x - 2 * r, y - r, x, y - 2.5 * r, x + 2 * r, y - r), fill=colour, width=5)
        else:  # bin / planter
            colour = _jitter(rng, _pick(rng, [(60, 110, 60), (80, 80, 88), (40, 70, 120)]), 15)
            draw.rectangle((x, y - int(h * 0.1), x + int(w * 0.12), y), fill=colour)
    return img.filter(ImageFilter.GaussianBlur(1.2))


def _bg_night(rng: np.random.Generator, w: int, h: int) -> Image.Image:
    horizon = int(h * rng.uniform(0.35, 0.6))
    arr = _gradient(w, h, _jitter(rng, (12, 14, 30), 6), _jitter(rng, (38, 36, 46), 6))
    asphalt = _jitter(rng, (44, 42, 46), 6)
    _ground(arr, horizon, _shade(asphalt, 1.2), _shade(asphalt, 0.8))
    img = _textured(rng, arr, 4.0)
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(2, 5))):  # building silhouettes with lit windows
        x0 = int(rng.uniform(-0.2, 0.9) * w)
        x1 = x0 + int(w * rng.uniform(0.2, 0.5))
        y0 = int(horizon * rng.uniform(0.0, 0.5))
        draw.rectangle((x0, y0, x1, horizon), fill=_jitter(rng, (22, 22, 30), 5))
        step = max(8, int(w * 0.06))
        for y in range(y0 + step // 2, horizon - step, step):
            for x in range(x0 + step // 3, x1 - step // 2, step):
                if rng.random() < 0.3:
                    draw.rectangle((x, y, x + step // 2, y + step // 2), fill=(236, 196, 112))
    glow = Image.new("RGB", (w, h))
    gdraw = ImageDraw.Draw(glow)
    lamp_colour = _pick(rng, [(255, 196, 110), (230, 236, 255), (255, 226, 160)])
    for _ in range(int(rng.integers(1, 4))):  # street lamps and their light pools
        x, y = int(rng.uniform(0, w)), int(rng.uniform(0.02, 0.3) * h)
        r = int(h * rng.uniform(0.015, 0.03))
        gdraw.ellipse((x - 4 * r, y - 4 * r, x + 4 * r, y + 4 * r), fill=_shade(lamp_colour, 0.35))
        gdraw.ellipse((x - r, y - r, x + r, y + r), fill=lamp_colour)
        py = int(rng.uniform(horizon + 0.1 * h, h))
        gdraw.ellipse(
            (x - 0.3 * w, py - 0.06 * h, x + 0.3 * w, py + 0.06 * h), fill=_shade(lamp_colour, 0.2)
        )
        draw.line((x, y, x, horizon + 0.1 * h), fill=(20, 20, 24), width=5)
    img = ImageChops.add(img, glow.filter(ImageFilter.GaussianBlur(h * 0.02)))
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(0, 3))):  # parked cars with tail lights
        x, y = int(rng.uniform(-0.2, 0.8) * w), int(rng.uniform(horizon, h))
        cw, ch = int(w * rng.uniform(0.35, 0.6)), int(h * 0.09)
        draw.rounded_rectangle((x, y - ch, x + cw, y), radius=ch // 3, fill=(30, 32, 40))
        draw.rectangle((x + cw - 10, y - ch // 2, x + cw, y - ch // 3), fill=(210, 30, 30))
    return img.filter(ImageFilter.GaussianBlur(1.5))


def _bg_indoor(rng: np.random.Generator, w: int, h: int) -> Image.Image:
    floor_y = int(h * rng.uniform(0.45, 0.7))
    wall = _jitter(
        rng, _pick(rng, [(226, 214, 194), (208, 220, 226), (200, 212, 188), (236, 226, 212)]), 10
    )
    arr = _gradient(w, h, _shade(wall, 1.05), _shade(wall, 0.9))
    floor = _jitter(rng, _pick(rng, [(182, 176, 170), (164, 122, 82), (96, 96, 104)]), 10)
    _ground(arr, floor_y, _shade(floor, 1.05), _shade(floor, 0.88))
    img = _textured(rng, arr, 3.0)
    draw = ImageDraw.Draw(img)
    tile = int(w * rng.uniform(0.12, 0.22))
    for x in range(0, w, tile):  # floor tiles converging toward the back
        draw.line((x, floor_y, (x - w / 2) * 1.6 + w / 2, h), fill=_shade(floor, 0.8), width=2)
    y, step = floor_y, tile * 0.3
    while y < h:
        draw.line((0, y, w, y), fill=_shade(floor, 0.8), width=2)
        y, step = y + step, step * 1.35
    draw.rectangle((0, floor_y - 8, w, floor_y), fill=_shade(wall, 0.6))  # skirting board
    for _ in range(int(rng.integers(2, 5))):
        kind = int(rng.integers(4))
        x = int(rng.uniform(-0.1, 0.9) * w)
        if kind == 0:  # door
            dw = int(w * rng.uniform(0.2, 0.3))
            top = int(floor_y * rng.uniform(0.1, 0.3))
            colour = _jitter(rng, _pick(rng, [(150, 110, 72), (180, 186, 192), (90, 110, 140)]), 10)
            draw.rectangle(
                (x, top, x + dw, floor_y), fill=colour, outline=_shade(colour, 0.6), width=3
            )
            draw.ellipse(
                (x + dw - 14, (top + floor_y) // 2, x + dw - 6, (top + floor_y) // 2 + 8),
                fill=(200, 190, 120),
            )
        elif kind == 1:  # shelf with goods
            sw = int(w * rng.uniform(0.3, 0.5))
            top = int(floor_y * rng.uniform(0.2, 0.5))
            draw.rectangle((x, top, x + sw, floor_y), fill=(120, 100, 80))
            for sy in range(top + 6, floor_y - 10, 22):
                for sx in range(x + 4, x + sw - 10, 12):
                    colour = _jitter(rng, _pick(rng, list(_PALETTE.values())), 20)
                    draw.rectangle((sx, sy, sx + 9, sy + 16), fill=colour)
        elif kind == 2:  # poster
            pw = int(w * rng.uniform(0.15, 0.25))
            top = int(floor_y * rng.uniform(0.1, 0.5))
            colour = _jitter(rng, _pick(rng, list(_PALETTE.values())), 20)
            draw.rectangle((x, top, x + pw, top + int(pw * 1.4)), fill=colour)
            draw.ellipse(
                (x + pw // 4, top + pw // 4, x + 3 * pw // 4, top + 3 * pw // 4),
                fill=_jitter(rng, (240, 240, 240), 15),
            )
        else:  # pillar
            pw = int(w * rng.uniform(0.08, 0.15))
            draw.rectangle((x, 0, x + pw, floor_y + 6), fill=_shade(wall, 0.8))
    for _ in range(int(rng.integers(1, 3))):  # ceiling light bars
        x = int(rng.uniform(0, 0.8) * w)
        draw.rectangle((x, 0, x + int(w * 0.25), int(h * 0.025)), fill=(250, 252, 246))
    return img.filter(ImageFilter.GaussianBlur(1.3))


_BACKGROUNDS = {"outdoor": _bg_outdoor, "night": _bg_night, "indoor": _bg_indoor}


@lru_cache(maxsize=64)
def _background(seed: int, style_name: str, cam: int, width: int, height: int) -> Image.Image:
    """The camera's scene at supersampled size, 1.5x wider and 1.25x taller than an image."""
    rng = _rng(seed, style_name, _TAG_BACKGROUND, cam)
    draw_fn = _BACKGROUNDS[STYLES[style_name].background]
    return draw_fn(rng, int(width * _SS * 1.5), int(height * _SS * 1.25))


# --------------------------------------------------------------------------------------
# The figure


def _lerp(a: Point, b: Point, t: float) -> Point:
    return (a[0] + (b[0] - a[0]) * t, a[1] + (b[1] - a[1]) * t)


def _limb(p0: Point, p1: Point, w0: float, w1: float, t0: float = 0.0, t1: float = 1.0) -> list:
    """The quad covering the part [t0, t1] of a tapered limb from p0 to p1."""
    dx, dy = p1[0] - p0[0], p1[1] - p0[1]
    norm = math.hypot(dx, dy) or 1.0
    nx, ny = -dy / norm, dx / norm
    a, b = _lerp(p0, p1, t0), _lerp(p0, p1, t1)
    ha, hb = (w0 + (w1 - w0) * t0) / 2, (w0 + (w1 - w0) * t1) / 2
    return [
        (a[0] + nx * ha, a[1] + ny * ha),
        (b[0] + nx * hb, b[1] + ny * hb),
        (b[0] - nx * hb, b[1] - ny * hb),
        (a[0] - nx * ha, a[1] - ny * ha),
    ]


def _bilinear(quad: Sequence[Point], u: float, v: float) -> Point:
    """Point (u across, v down) inside the quad TL, TR, BR, BL."""
    top = _lerp(quad[0], quad[1], u)
    bottom = _lerp(quad[3], quad[2], u)
    return _lerp(top, bottom, v)


def _cell(quad: Sequence[Point], u0: float, u1: float, v0: float, v1: float) -> list:
    return [
        _bilinear(quad, u0, v0),
        _bilinear(quad, u1, v0),
        _bilinear(quad, u1, v1),
        _bilinear(quad, u0, v1),
    ]


def _draw_leg(
    draw: ImageDraw.ImageDraw,
    ident: Identity,
    hip: Point,
    ankle: Point,
    w_top: float,
    w_bottom: float,
    shade: float,
    unit: float,
    facing: int,
) -> None:
    skin, lower = _shade(ident.skin, shade), _shade(ident.lower, shade)
    draw.polygon(_limb(hip, ankle, w_top, w_bottom), fill=skin)
    cover = {"trousers": 1.0, "shorts": 0.42, "skirt": 0.0}[ident.lower_kind]
    if cover > 0:
        quad = _limb(hip, ankle, w_top * 1.04, w_bottom * 1.1, 0.0, cover)
        draw.polygon(quad, fill=lower, outline=_shade(lower, 0.7), width=_SS)
    sw, sh = w_bottom * 1.5, unit * 0.035
    sx = ankle[0] + facing * sw * 0.25
    draw.ellipse(
        (sx - sw / 2, ankle[1] - sh * 0.6, sx + sw / 2, ankle[1] + sh * 0.6),
        fill=_shade(ident.shoes, shade),
    )


def _draw_arm(
    draw: ImageDraw.ImageDraw,
    ident: Identity,
    shoulder: Point,
    hand: Point,
    width: float,
    shade: float,
) -> None:
    upper, skin = _shade(ident.upper, shade), _shade(ident.skin, shade)
    sleeve = 1.0 if ident.long_sleeves else 0.38
    draw.polygon(_limb(shoulder, hand, width * 0.9, width * 0.7), fill=skin)
    draw.polygon(
        _limb(shoulder, hand, width, width * (0.85 if sleeve == 1.0 else 0.95), 0.0, sleeve),
        fill=upper,
        outline=_shade(upper, 0.7),
        width=_SS,
    )
    r = width * 0.45
    draw.ellipse((hand[0] - r, hand[1] - r, hand[0] + r, hand[1] + r * 1.2), fill=skin)


def _draw_torso(
    draw: ImageDraw.ImageDraw, ident: Identity, quad: list, light_side: int, view: str
) -> None:
    draw.polygon(quad, fill=ident.upper)
    n = ident.pattern_count
    if ident.upper_pattern == "stripes":
        for i in range(n):
            v0 = (i + 0.5) / (n + 0.5)
            draw.polygon(_cell(quad, 0, 1, v0, v0 + 0.5 / (n + 0.5)), fill=ident.upper2)
    elif ident.upper_pattern == "checks":
        cols = max(2, n - 1)
        for i in range(n):
            for j in range(cols):
                if (i + j) % 2 == 0:
                    draw.polygon(
                        _cell(quad, j / cols, (j + 1) / cols, i / n, (i + 1) / n),
                        fill=ident.upper2,
                    )
    if view != "back":  # collar / neckline
        c = _bilinear(quad, 0.5, 0.0)
        r = abs(quad[1][0] - quad[0][0]) * 0.16
        draw.chord((c[0] - r, c[1] - r, c[0] + r, c[1] + r), 0, 180, fill=ident.skin)
    # Shading on the side away from the light gives the body some volume.
    u0, u1 = (0.78, 1.0) if light_side > 0 else (0.0, 0.22)
    draw.polygon(_cell(quad, u0, u1, 0.02, 1.0), fill=(0, 0, 0, 50))
    draw.polygon(quad, outline=_shade(ident.upper, 0.6), width=_SS)


def _draw_head(
    draw: ImageDraw.ImageDraw,
    ident: Identity,
    cx: float,
    top: float,
    head_h: float,
    shoulder_y: float,
    unit: float,
    view: str,
    facing: int,
) -> None:
    head_w = head_h * (0.86 if view == "side" else 0.78)
    neck_w = head_w * 0.42
    neck = (cx - neck_w / 2, top + head_h * 0.8, cx + neck_w / 2, shoulder_y + unit * 0.01)
    if view != "back":  # seen from the front or side, the neck hides long hair behind it
        draw.rectangle(neck, fill=_shade(ident.skin, 0.9))
    if ident.long_hair:
        hx = head_w * (0.52 if view != "side" else 0.4)
        off = -facing * head_w * 0.15 if view == "side" else 0.0
        bottom = shoulder_y + unit * (0.09 if view == "back" else 0.05)
        if view == "front":  # two strands framing the face, the neck between them
            for sgn in (-1, 1):
                draw.rounded_rectangle(
                    (
                        min(cx + sgn * hx, cx + sgn * head_w * 0.28),
                        top + head_h * 0.35,
                        max(cx + sgn * hx, cx + sgn * head_w * 0.28),
                        bottom,
                    ),
                    radius=head_w * 0.1,
                    fill=ident.hair,
                )
        else:
            draw.rounded_rectangle(
                (cx + off - hx, top + head_h * 0.35, cx + off + hx, bottom),
                radius=hx * 0.5,
                fill=ident.hair,
            )
    if view == "front" or (view == "back" and not ident.long_hair):
        draw.rectangle(neck, fill=_shade(ident.skin, 0.9))
    box = (cx - head_w / 2, top, cx + head_w / 2, top + head_h)
    if view == "back":
        draw.ellipse(box, fill=ident.hair)
    else:
        draw.ellipse(box, fill=ident.skin)
        if view == "front":
            draw.chord(
                (box[0] - 1, box[1] - 1, box[2] + 1, box[1] + head_h * 0.75),
                180,
                360,
                fill=ident.hair,
            )
            ey = top + head_h * 0.5
            for ex in (cx - head_w * 0.18, cx + head_w * 0.18):
                draw.ellipse((ex - 2, ey - 2, ex + 2, ey + 2), fill=(40, 30, 30))
        else:
            # Side: hair covers the top and the back of the head.
            back_x = cx - facing * head_w * 0.5
            draw.chord(
                (box[0] - 1, box[1] - 1, box[2] + 1, box[1] + head_h * 0.7),
                180,
                360,
                fill=ident.hair,
            )
            draw.ellipse(
                (
                    back_x - head_w * 0.35,
                    top + head_h * 0.1,
                    back_x + head_w * 0.35,
                    top + head_h * 0.8,
                ),
                fill=ident.hair,
            )
    if ident.hat is not None:
        draw.chord(
            (box[0] - 2, box[1] - head_h * 0.08, box[2] + 2, box[1] + head_h * 0.75),
            180,
            360,
            fill=ident.hat,
        )
        brim_y = box[1] + head_h * 0.3
        if view == "front":
            draw.ellipse(
                (box[0] - 3, brim_y - 3, box[2] + 3, brim_y + 5), fill=_shade(ident.hat, 0.8)
            )
        elif view == "side":
            bx = cx + facing * head_w * 0.5
            draw.polygon(
                [
                    (bx - facing * head_w * 0.3, brim_y - 2),
                    (bx + facing * head_w * 0.35, brim_y),
                    (bx - facing * head_w * 0.3, brim_y + 5),
                ],
                fill=_shade(ident.hat, 0.8),
            )


def _draw_figure(
    draw: ImageDraw.ImageDraw,
    ident: Identity,
    rng: np.random.Generator,
    cx: float,
    top: float,
    unit: float,
    view: str,
    facing: int,
    light_side: int,
) -> None:
    """A pedestrian of height ``unit`` whose top of head is at ``top``."""
    head_h = 0.125 * unit * ident.head_scale
    shoulder_y = top + head_h * 1.08
    hip_y = top + unit * (1.0 - ident.leg_ratio)
    foot_y = top + unit * 0.985
    stride = float(rng.uniform(-1.0, 1.0))
    side = view == "side"
    sh_w = 0.25 * unit * ident.width_scale * (0.58 if side else 1.0)
    hip_w = sh_w * (1.05 if side else ident.hip_ratio)
    lean = facing * unit * 0.015 if side else 0.0
    arm_w = 0.06 * unit * ident.width_scale
    leg_top_w = (hip_w * 0.82) if side else hip_w * 0.5
    leg_bot_w = unit * 0.045 * ident.width_scale

    # Bags seen from the side that faces the camera.
    bag_img_side = ident.bag_side if view == "front" else -ident.bag_side
    handbag_visible = ident.bag == "handbag" and (not side or rng.random() < 0.5)

    if side and ident.bag == "backpack":
        bx = cx + lean - facing * sh_w * 0.5
        draw.rounded_rectangle(
            (
                min(bx, bx - facing * unit * 0.1),
                shoulder_y + unit * 0.02,
                max(bx, bx - facing * unit * 0.1),
                hip_y - unit * 0.03,
            ),
            radius=unit * 0.02,
            fill=ident.bag_colour,
            outline=_shade(ident.bag_colour, 0.6),
            width=_SS,
        )

    # Legs and arms that are further from the camera are drawn first, a little darker.
    if side:
        swing = stride * unit * 0.17
        hip = (cx, hip_y - unit * 0.02)
        back_leg = (cx - facing * swing, foot_y - abs(stride) * unit * 0.01)
        front_leg = (cx + facing * swing, foot_y)
        _draw_arm(
            draw,
            ident,
            (cx + lean, shoulder_y + unit * 0.03),
            (cx + lean + facing * swing * 0.8, hip_y + unit * 0.02),
            arm_w,
            0.78,
        )
        _draw_leg(draw, ident, hip, back_leg, leg_top_w, leg_bot_w, 0.82, unit, facing)
        _draw_leg(draw, ident, hip, front_leg, leg_top_w, leg_bot_w, 1.0, unit, facing)
    else:
        spread = unit * 0.03 * (1 + abs(stride))
        lift = stride * unit * 0.02
        for sgn in (-1, 1):
            hip = (cx + sgn * hip_w * 0.24, hip_y - unit * 0.02)
            ankle = (cx + sgn * (hip_w * 0.2 + spread * 0.5), foot_y - max(0.0, sgn * lift))
            _draw_leg(draw, ident, hip, ankle, leg_top_w, leg_bot_w, 1.0, unit, 0)
    if ident.lower_kind == "skirt":
        sk_w = hip_w * (1.0 if side else 1.05)
        y0, y1 = hip_y - unit * 0.03, hip_y + unit * 0.16
        draw.polygon(
            [
                (cx - sk_w / 2, y0),
                (cx + sk_w / 2, y0),
                (cx + sk_w * 0.78, y1),
                (cx - sk_w * 0.78, y1),
            ],
            fill=ident.lower,
            outline=_shade(ident.lower, 0.7),
            width=_SS,
        )
    else:
        draw.polygon(
            [
                (cx - hip_w / 2, hip_y - unit * 0.03),
                (cx + hip_w / 2, hip_y - unit * 0.03),
                (cx + hip_w * 0.45, hip_y + unit * 0.05),
                (cx - hip_w * 0.45, hip_y + unit * 0.05),
            ],
            fill=ident.lower,
        )

    hem = hip_y + unit * 0.015
    torso = [
        (cx + lean - sh_w / 2, shoulder_y),
        (cx + lean + sh_w / 2, shoulder_y),
        (cx + hip_w / 2, hem),
        (cx - hip_w / 2, hem),
    ]
    _draw_torso(draw, ident, torso, light_side, view)

    if ident.bag == "backpack" and view == "back":
        draw.rounded_rectangle(
            (
                cx - sh_w * 0.36,
                shoulder_y + unit * 0.03,
                cx + sh_w * 0.36,
                shoulder_y + (hip_y - shoulder_y) * 0.88,
            ),
            radius=unit * 0.025,
            fill=ident.bag_colour,
            outline=_shade(ident.bag_colour, 0.6),
            width=_SS,
        )
        draw.rectangle(
            (
                cx - sh_w * 0.25,
                shoulder_y + (hip_y - shoulder_y) * 0.55,
                cx + sh_w * 0.25,
                shoulder_y + (hip_y - shoulder_y) * 0.8,
            ),
            fill=_shade(ident.bag_colour, 0.8),
        )
    elif ident.bag == "backpack" and view == "front":
        for sgn in (-1, 1):
            x = cx + sgn * sh_w * 0.3
            draw.line(
                (x, shoulder_y, x + sgn * sh_w * 0.05, shoulder_y + (hip_y - shoulder_y) * 0.65),
                fill=ident.bag_colour,
                width=max(2, int(unit * 0.022)),
            )

    if not side:
        swing = stride * unit * 0.015
        for sgn in (-1, 1):
            shoulder = (cx + sgn * sh_w * 0.47, shoulder_y + arm_w * 0.45)
            hand = (cx + sgn * (sh_w * 0.5 + unit * 0.03), hip_y + unit * 0.03 + sgn * swing)
            _draw_arm(draw, ident, shoulder, hand, arm_w, 0.95)
    else:
        _draw_arm(
            draw,
            ident,
            (cx + lean, shoulder_y + unit * 0.03),
            (cx + lean - facing * stride * unit * 0.13, hip_y + unit * 0.02),
            arm_w,
            1.0,
        )

    if handbag_visible:
        bx = cx + (0 if side else bag_img_side * (sh_w * 0.5 + unit * 0.05))
        bw, bh = unit * 0.1, unit * 0.085
        by = hip_y + unit * 0.01
        strap_x = cx - (0 if side else bag_img_side * sh_w * 0.3)
        draw.line(
            (strap_x, shoulder_y + 2, bx, by), fill=_shade(ident.bag_colour, 0.7), width=_SS * 2
        )
        draw.rounded_rectangle(
            (bx - bw / 2, by, bx + bw / 2, by + bh),
            radius=unit * 0.012,
            fill=ident.bag_colour,
            outline=_shade(ident.bag_colour, 0.6),
            width=_SS,
        )

    _draw_head(draw, ident, cx + lean, top, head_h, shoulder_y, unit, view, facing)


def _draw_occluder(
    draw: ImageDraw.ImageDraw, rng: np.random.Generator, style: Style, w: int, h: int
) -> None:
    """Something between the camera and the person: a pole, a car, a passer-by, a sign."""
    kind = int(rng.integers(4))
    dark = style.background == "night"
    if kind == 0:
        x = rng.uniform(0.0, 0.85) * w
        pw = w * rng.uniform(0.06, 0.14)
        draw.rectangle(
            (x, 0, x + pw, h), fill=(40, 40, 46) if dark else _jitter(rng, (96, 98, 104), 20)
        )
    elif kind == 1:
        y = h * rng.uniform(0.62, 0.82)
        colour = _jitter(rng, _pick(rng, list(_PALETTE.values())), 20)
        draw.rounded_rectangle(
            (-w * 0.1, y, w * 1.1, h * 1.05),
            radius=h * 0.05,
            fill=_shade(colour, 0.5 if dark else 1.0),
        )
    elif kind == 2:
        sgn = 1 if rng.random() < 0.5 else -1
        x = w * (1.0 if sgn > 0 else 0.0) - sgn * w * rng.uniform(0.12, 0.3)
        colour = _jitter(rng, _pick(rng, list(_PALETTE.values())), 20)
        colour = _shade(colour, 0.45 if dark else 0.85)
        draw.ellipse((x - w * 0.35, h * 0.25, x + w * 0.35, h * 1.1), fill=colour)
        draw.ellipse(
            (x - w * 0.13, h * 0.06, x + w * 0.13, h * 0.24), fill=_shade((220, 180, 150), 0.8)
        )
    else:
        y = h * rng.uniform(0.3, 0.6)
        draw.rectangle(
            (w * rng.uniform(-0.2, 0.4), y, w * rng.uniform(0.6, 1.2), y + h * 0.15),
            fill=_jitter(rng, (230, 230, 220) if not dark else (60, 60, 70), 20),
        )


# --------------------------------------------------------------------------------------
# One image


def _photometric(
    img: Image.Image, cam: _Camera, noise: np.ndarray | None, rng: np.random.Generator
) -> Image.Image:
    """Apply the camera's light, colour cast, saturation, blur and sensor noise."""
    sat = cam.saturation * float(rng.uniform(0.95, 1.05))
    if abs(sat - 1.0) > 0.01:
        img = ImageEnhance.Color(img).enhance(sat)
    brightness = cam.brightness * float(rng.uniform(0.9, 1.1))
    gamma = cam.gamma * float(rng.uniform(0.97, 1.03))
    x = np.arange(256, dtype=np.float64) / 255.0
    lut: list[int] = []
    for gain in cam.gains:
        lut.extend(
            np.clip(255.0 * np.clip(x * gain * brightness, 0, 1) ** gamma, 0, 255)
            .round()
            .astype(int)
            .tolist()
        )
    img = img.point(lut)
    radius = max(0.0, cam.blur + float(rng.uniform(-0.25, 0.25)))
    if radius > 0.15:
        # One box pass is a third of the cost of PIL's Gaussian (three box passes) and
        # looks the same at these radii once JPEG has had its say.
        img = img.filter(ImageFilter.BoxBlur(radius))
    if noise is not None:
        h, w = img.height, img.width
        oy = int(rng.integers(0, noise.shape[0] - h + 1))
        ox = int(rng.integers(0, noise.shape[1] - w + 1))
        arr = np.asarray(img, dtype=np.int16) + noise[oy : oy + h, ox : ox + w]
        img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    return img


@lru_cache(maxsize=64)
def _noise_bank(seed: int, style_name: str, cam: int, width: int, height: int) -> np.ndarray | None:
    """The camera's sensor noise, int16, larger than an image: each image crops it at random.

    Drawing fresh Gaussian noise per image would cost more than rendering the figure.
    """
    sigma = _camera(seed, style_name, cam).noise
    if sigma < 0.3:
        return None
    rng = _rng(seed, style_name, _TAG_BACKGROUND, cam, 1)
    noise = rng.standard_normal((height + 48, width + 48, 3), dtype=np.float32) * sigma
    return noise.round().astype(np.int16)


def render_image(
    seed: int,
    style: str,
    pid: int,
    cam: int,
    k: int,
    height: int = 256,
    width: int = 128,
) -> tuple[Image.Image, int]:
    """Image ``k`` of person ``pid`` seen by camera ``cam``, and its JPEG quality.

    Depends only on its arguments, so images can be rendered in any order or process.
    """
    sty = STYLES[style]
    ident = _identity(seed, style, pid)
    camera = _camera(seed, style, cam)
    rng = _rng(seed, style, _TAG_IMAGE, pid, cam, k)

    bg = _background(seed, style, cam, width, height)
    w2, h2 = width * _SS, height * _SS
    ox = int(rng.integers(0, bg.width - w2 + 1))
    oy = int(rng.integers(0, bg.height - h2 + 1))
    canvas = bg.crop((ox, oy, ox + w2, oy + h2))
    draw = ImageDraw.Draw(canvas, "RGBA")

    view = _VIEWS[int(rng.choice(3, p=camera.view_probs))]
    facing = 1 if rng.random() < 0.5 else -1
    unit = min(0.99, ident.height_frac * camera.scale * float(rng.uniform(0.94, 1.05))) * h2
    top = (h2 - unit) * float(rng.uniform(0.2, 0.8))
    cx = w2 * (0.5 + float(rng.uniform(-0.07, 0.07)))
    _draw_figure(draw, ident, rng, cx, top, unit, view, facing, camera.light_side)
    if rng.random() < sty.occlusion:
        _draw_occluder(draw, rng, sty, w2, h2)

    img = canvas.reduce(_SS)
    img = _photometric(img, camera, _noise_bank(seed, style, cam, width, height), rng)
    quality = camera.jpeg_quality + int(rng.integers(-3, 4))
    return img, max(30, min(98, quality))


# --------------------------------------------------------------------------------------
# The dataset


def parse_filename(name: str) -> tuple[int, int, int, int]:
    """``(pid, cam, sequence, frame)`` of a Market-1501-style file name."""
    match = FILENAME_RE.match(name)
    if match is None:
        raise ValueError(f"not a Market-1501-style file name: {name!r}")
    pid, cam, seq, frame, _ = (int(g) for g in match.groups())
    return pid, cam, seq, frame


_Task = tuple[str, int, int, int, int]  # split, pid, cam, k, frame


def _plan(
    identities: int, cameras: int, style: str, seed: int, images_per_camera: int
) -> list[_Task]:
    """Which images exist and where they go; cheap, so it runs in the parent process."""
    n_train = identities // 2
    tasks: list[_Task] = []
    frame = 0
    frame_rng = _rng(seed, style, _TAG_PLAN, 0)
    for pid in range(1, identities + 1):
        rng = _rng(seed, style, _TAG_PLAN, pid)
        n_cams = int(rng.integers(2, cameras + 1))
        cams = sorted(int(c) + 1 for c in rng.choice(cameras, size=n_cams, replace=False))
        base = int(rng.integers(_MIN_IMAGES_PER_CAMERA, images_per_camera + 1))
        for cam in cams:
            count = int(
                np.clip(base + rng.integers(-1, 2), _MIN_IMAGES_PER_CAMERA, images_per_camera)
            )
            for k in range(count):
                frame += 1 + int(frame_rng.integers(0, 3))
                # Train ids go to train; a test id's first image per camera is its query.
                split = SPLITS[0] if pid <= n_train else SPLITS[1] if k == 0 else SPLITS[2]
                tasks.append((split, pid, cam, k, frame))
    if frame > _MAX_FRAME:
        raise ValueError(f"too many images for 6-digit frame numbers ({frame} > {_MAX_FRAME})")
    return tasks


def _render_batch(
    out: str, style: str, seed: int, height: int, width: int, tasks: list[_Task]
) -> None:
    for split, pid, cam, k, frame in tasks:
        img, quality = render_image(seed, style, pid, cam, k, height, width)
        name = f"{pid:04d}_c{cam}s1_{frame:06d}_00.jpg"
        img.save(os.path.join(out, split, name), "JPEG", quality=quality)


def _check_args(
    identities: int,
    cameras: int,
    style: str,
    height: int,
    width: int,
    images_per_camera: int,
    seed: int,
) -> None:
    if identities < 2:
        raise ValueError(f"identities must be >= 2 (one train and one test), got {identities}")
    if identities > 9999:
        raise ValueError(f"identities must be <= 9999 (4-digit ids), got {identities}")
    if cameras < 2:
        raise ValueError(f"cameras must be >= 2 (re-ID matches across cameras), got {cameras}")
    if cameras > 9:
        raise ValueError(f"cameras must be <= 9 (one-digit camera ids), got {cameras}")
    if style not in STYLES:
        raise ValueError(f"unknown style {style!r}; known styles: {', '.join(STYLES)}")
    if height < 32 or width < 16:
        raise ValueError(f"image size must be at least 16 wide x 32 high, got {width}x{height}")
    if images_per_camera < _MIN_IMAGES_PER_CAMERA:
        raise ValueError(
            f"images_per_camera must be >= {_MIN_IMAGES_PER_CAMERA} (one query and one gallery "
            f"image per camera), got {images_per_camera}"
        )
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")


def generate_dataset(
    out: Path | str,
    identities: int,
    cameras: int,
    style: str,
    seed: int,
    height: int = 256,
    width: int = 128,
    images_per_camera: int = 6,
    overwrite: bool = False,
    workers: int = 1,
) -> dict[str, int]:
    """Write a Market-1501-style dataset under ``out`` and return its counts.

    The first half of the identities goes to ``bounding_box_train``; for every test identity
    the first image of each of its cameras goes to ``query`` and the others to
    ``bounding_box_test``, so every query has a true match from another camera. ``workers``
    > 1 renders in that many processes (0: one per CPU); the output does not depend on it.
    """
    _check_args(identities, cameras, style, height, width, images_per_camera, seed)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise FileExistsError(
                f"{out} exists and is not empty "
                "(use --overwrite, or overwrite=True, to replace its splits)"
            )
        for split in SPLITS:
            shutil.rmtree(out / split, ignore_errors=True)
        (out / "synth.json").unlink(missing_ok=True)
    for split in SPLITS:
        (out / split).mkdir(parents=True, exist_ok=True)

    tasks = _plan(identities, cameras, style, seed, images_per_camera)
    if workers == 0:
        workers = os.cpu_count() or 1
    workers = max(1, min(workers, len(tasks) // 50 or 1))
    if workers == 1:
        _render_batch(str(out), style, seed, height, width, tasks)
    else:
        chunk = math.ceil(len(tasks) / (workers * 4))
        batches = [tasks[i : i + chunk] for i in range(0, len(tasks), chunk)]
        # Fork, like torch's DataLoader: no re-import of the caller's __main__ (spawn would
        # need an ``if __name__ == "__main__"`` guard in every calling script).
        methods = multiprocessing.get_all_start_methods()
        ctx = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
        with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
            futures = [
                pool.submit(_render_batch, str(out), style, seed, height, width, b) for b in batches
            ]
            for f in futures:
                f.result()

    counts = {split: sum(1 for t in tasks if t[0] == split) for split in SPLITS}
    n_train = identities // 2
    summary: dict[str, int] = {
        "identities": identities,
        "train_identities": n_train,
        "test_identities": identities - n_train,
        "cameras": cameras,
        "train": counts[SPLITS[0]],
        "query": counts[SPLITS[1]],
        "gallery": counts[SPLITS[2]],
        "images": len(tasks),
    }
    meta = {
        "generator": "trainer.synth",
        "style": style,
        "seed": seed,
        "height": height,
        "width": width,
        "images_per_camera": images_per_camera,
        **summary,
    }
    (out / "synth.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return summary
