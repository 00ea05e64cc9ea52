"""Procedural stimulus images with natural-image statistics, and their annotations.

A scene is a background (1/f coloured noise, a texture, or a "place": an outdoor view with a
horizon, a road and buildings in perspective, or a room seen from inside) with 0-3 objects on
top: schematic faces, bodies (silhouettes, clothed figures or stick figures), words rendered with
Pillow's default font, generic shapes and grating patches.

Coordinates (annotations and the voxel models): normalised image coordinates, ``x`` from -1 at
the left edge to +1 at the right edge (right-positive) and ``y`` from -1 at the bottom to +1 at
the top (up-positive); the image is 2 units wide. An object's ``size`` is the larger side of its
bounding box as a fraction of the image width, so its half-extent in these units equals
``size``. Objects drawn later may occlude earlier ones.
"""

from __future__ import annotations

import functools
import math
import threading

import numpy as np
from PIL import Image, ImageDraw, ImageFont

BACKGROUNDS = ("noise", "texture", "place")
BACKGROUND_PROBABILITIES = (0.3, 0.3, 0.4)
CATEGORIES = ("face", "body", "text", "shape", "grating")
CATEGORY_PROBABILITIES = (0.25, 0.25, 0.2, 0.15, 0.15)
N_OBJECTS_PROBABILITIES = (0.15, 0.35, 0.3, 0.2)  # 0, 1, 2, 3 objects
SIZE_RANGE = (0.12, 0.55)

WORDS = (
    "the", "and", "stop", "open", "exit", "cafe", "hotel", "bank", "taxi", "park", "police",
    "station", "market", "city", "house", "garden", "river", "north", "south", "street",
    "welcome", "sale", "menu", "pizza", "coffee", "bus", "train", "school", "library", "music",
    "hello", "world", "water", "light", "summer", "winter", "paper", "table", "window", "door",
    "apple", "bread", "green", "yellow", "orange", "museum", "theatre", "cinema", "airport",
    "no parking", "one way", "speed", "tennis", "soccer", "baseball", "kitchen", "office", "zoo",
)
_SKIN = ((0.98, 0.85, 0.72), (0.9, 0.72, 0.56), (0.76, 0.57, 0.42), (0.55, 0.38, 0.26),
         (0.36, 0.24, 0.16))
_HAIR = ((0.1, 0.08, 0.06), (0.3, 0.2, 0.1), (0.55, 0.4, 0.2), (0.8, 0.7, 0.45), (0.5, 0.5, 0.5))
_GROUND = ((0.3, 0.5, 0.2), (0.7, 0.6, 0.4), (0.45, 0.35, 0.25), (0.5, 0.5, 0.48),
           (0.85, 0.87, 0.9))


def _rgb(colour: np.ndarray | tuple[float, ...]) -> tuple[int, int, int]:
    values = np.clip(np.asarray(colour, dtype=np.float64), 0.0, 1.0) * 255.0
    return tuple(int(round(v)) for v in values)  # type: ignore[return-value]


def _jitter(rng: np.random.Generator, colour: tuple[float, ...], amount: float = 0.06):
    return np.clip(np.asarray(colour) + rng.normal(0.0, amount, 3), 0.0, 1.0)


def _random_colour(rng: np.random.Generator, saturation: float = 1.0) -> np.ndarray:
    grey = rng.uniform(0.15, 0.85)
    return np.clip(grey + saturation * rng.normal(0.0, 0.2, 3), 0.0, 1.0)


def pink_noise(rng: np.random.Generator, size: int, n_fields: int, exponent: float) -> np.ndarray:
    """Gaussian noise fields with amplitude spectrum ``1 / f**exponent``, unit variance.

    Returns
    -------
    numpy.ndarray
        float32 (n_fields, size, size).
    """
    amplitude = _radial_frequency(size) ** np.float32(-exponent)
    amplitude[0, 0] = 0.0
    shape = (2, n_fields, size, size // 2 + 1)
    parts = rng.standard_normal(shape, dtype=np.float32)
    spectrum = (parts[0] + 1j * parts[1]) * amplitude
    fields = np.fft.irfft2(spectrum, s=(size, size))
    return fields / (fields.std(axis=(1, 2), keepdims=True) + 1e-12)


@functools.lru_cache(maxsize=4)
def _radial_frequency(size: int) -> np.ndarray:
    radius = np.hypot(np.fft.rfftfreq(size)[None, :], np.fft.fftfreq(size)[:, None])
    radius[0, 0] = 1.0
    return radius.astype(np.float32)


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    centres = (np.arange(size) + 0.5) / size * 2.0 - 1.0
    return centres[None, :], -centres[:, None]  # x right-positive, y up-positive


def _coloured_noise(rng: np.random.Generator, size: int) -> np.ndarray:
    exponent = rng.uniform(0.8, 1.4)
    luminance, chroma_a, chroma_b = pink_noise(rng, size, 3, exponent)
    base = rng.uniform(0.25, 0.75, 3)
    contrast = rng.uniform(0.08, 0.22)
    directions = rng.normal(0.0, 0.5, (2, 3))
    image = (
        luminance[..., None]
        + chroma_a[..., None] * directions[0]
        + chroma_b[..., None] * directions[1]
    )
    return base + contrast * image


def _texture(rng: np.random.Generator, size: int) -> tuple[np.ndarray, str]:
    x, y = _grid(size)
    kind = str(rng.choice(["stripes", "plaid", "checker", "dots", "waves"]))
    frequency = math.exp(rng.uniform(math.log(2.0), math.log(16.0)))  # cycles per unit
    theta = rng.uniform(0.0, math.pi)
    phase = rng.uniform(0.0, 2.0 * math.pi)
    along = 2.0 * math.pi * frequency * (x * math.cos(theta) + y * math.sin(theta)) + phase
    across = 2.0 * math.pi * frequency * (-x * math.sin(theta) + y * math.cos(theta))
    if kind == "stripes":
        pattern = np.tanh(rng.choice([1.0, 6.0]) * np.sin(along))
    elif kind == "plaid":
        other = theta + rng.uniform(math.pi / 4, math.pi / 2)
        second = 2.0 * math.pi * frequency * (x * math.cos(other) + y * math.sin(other))
        pattern = 0.5 * (np.sin(along) + np.sin(second))
    elif kind == "checker":
        pattern = np.tanh(4.0 * np.sin(along) * np.sin(across))
    elif kind == "dots":
        pattern = np.tanh(8.0 * (np.sin(along) * np.sin(across) - 0.4))
    else:
        warp = pink_noise(rng, size, 1, 1.8)[0]
        pattern = np.sin(along + rng.uniform(1.0, 4.0) * warp)
    low, high = _random_colour(rng), _random_colour(rng)
    image = low + (high - low) * ((pattern + 1.0) / 2.0)[..., None]
    shading = rng.uniform(-0.15, 0.15) * (x * math.cos(phase) + y * math.sin(phase))
    noise = pink_noise(rng, size, 1, 1.0)[0]
    return image + (shading + 0.04 * noise)[..., None], kind


def _px(x: float, y: float, size: int) -> tuple[float, float]:
    return (x + 1.0) / 2.0 * size, (1.0 - y) / 2.0 * size


def _outdoor(rng: np.random.Generator, size: int) -> Image.Image:
    x, y = _grid(size)
    horizon = rng.uniform(-0.35, 0.35)
    vanish_x = rng.uniform(-0.5, 0.5)
    sky_top = _jitter(rng, (0.35, 0.55, 0.85), 0.08)
    sky_low = _jitter(rng, (0.8, 0.86, 0.93), 0.05)
    ground = _jitter(rng, _GROUND[rng.integers(len(_GROUND))], 0.05)
    clouds, texture = pink_noise(rng, size, 2, 1.2)
    height = np.clip((y - horizon) / (1.0 - horizon), 0.0, 1.0)[..., None]
    sky = sky_low + (sky_top - sky_low) * height + 0.06 * np.clip(clouds, 0, None)[..., None]
    nearness = np.clip(horizon - y, 0.0, None)[..., None]
    land = ground * (1.0 + 0.25 * texture[..., None] * np.sqrt(nearness)) - 0.1 * nearness
    image = np.where(y[..., None] > horizon, sky, land)
    canvas = Image.fromarray(np.uint8(np.clip(image, 0, 1) * 255 + 0.5))
    draw = ImageDraw.Draw(canvas)
    vanish = _px(vanish_x, horizon, size)
    for side in (-1.0, 1.0):  # buildings along both sides, their edges converging on the horizon
        if rng.random() < 0.75:
            top = rng.uniform(horizon + 0.3, 1.6)
            colour = _jitter(rng, (0.6, 0.55, 0.5), 0.12)
            near_x = side * rng.uniform(0.9, 1.3)
            far = rng.uniform(0.25, 0.6)
            corners = []
            for depth in (0.0, far):
                bx = near_x + (vanish_x - near_x) * depth
                corners.append((bx, -1.0 + (horizon + 1.0) * depth, top + (horizon - top) * depth))
            polygon = [
                _px(corners[0][0], corners[0][1], size),
                _px(corners[1][0], corners[1][1], size),
                _px(corners[1][0], corners[1][2], size),
                _px(corners[0][0], corners[0][2], size),
            ]
            draw.polygon(polygon, fill=_rgb(colour), outline=_rgb(colour * 0.6))
            for depth in np.linspace(0.0, far, int(rng.integers(3, 8)))[1:-1]:
                bx = near_x + (vanish_x - near_x) * depth
                bottom = -1.0 + (horizon + 1.0) * depth
                upper = top + (horizon - top) * depth
                draw.line([_px(bx, bottom, size), _px(bx, upper, size)], fill=_rgb(colour * 0.7),
                          width=max(1, size // 128))
    road_half = rng.uniform(0.3, 0.9)
    road = [vanish, _px(vanish_x + 0.01, horizon, size), _px(road_half, -1.0, size),
            _px(-road_half, -1.0, size)]
    if rng.random() < 0.7:
        draw.polygon(road, fill=_rgb(_jitter(rng, (0.35, 0.35, 0.37), 0.05)))
        for start in np.geomspace(0.05, 0.9, 7):  # dashes shrink towards the vanishing point
            stop = start * 1.25
            a = _px(vanish_x * (1 - start), horizon - (horizon + 1.0) * start, size)
            b = _px(vanish_x * (1 - stop), horizon - (horizon + 1.0) * stop, size)
            draw.line([a, b], fill=(235, 235, 220), width=max(1, int(size * 0.012 * stop)))
    return canvas


def _indoor(rng: np.random.Generator, size: int) -> Image.Image:
    vx, vy = rng.uniform(-0.3, 0.3, 2)
    half_w, half_h = rng.uniform(0.2, 0.5), rng.uniform(0.2, 0.45)
    bl, br = (vx - half_w, vy - half_h), (vx + half_w, vy - half_h)
    tl, tr = (vx - half_w, vy + half_h), (vx + half_w, vy + half_h)
    wall = _random_colour(rng, 0.4) * 0.5 + 0.45
    canvas = Image.new("RGB", (size, size))
    draw = ImageDraw.Draw(canvas)

    def poly(points, colour):
        draw.polygon([_px(px, py, size) for px, py in points], fill=_rgb(colour))

    poly([(-1, 1), (1, 1), tr, tl], wall * 1.1)  # ceiling
    poly([(-1, -1), (1, -1), br, bl], _jitter(rng, (0.45, 0.32, 0.2), 0.1))  # floor
    poly([(-1, 1), (-1, -1), bl, tl], wall * 0.85)
    poly([(1, 1), (1, -1), br, tr], wall * 0.9)
    poly([bl, br, tr, tl], wall)
    line = _rgb(wall * 0.5)
    width = max(1, size // 200)
    for t in np.linspace(-1.0, 1.0, int(rng.integers(4, 10))):  # boards toward the vanishing point
        start = (vx + t * half_w, vy - half_h)
        scale = (-1.0 - start[1]) / (start[1] - vy) if start[1] != vy else 1.0
        end = (start[0] + (start[0] - vx) * scale, -1.0)
        draw.line([_px(*start, size), _px(*end, size)], fill=line, width=width)
    for depth in np.geomspace(0.1, 1.0, 5)[:-1]:  # floor seams, denser with distance
        left = (bl[0] + (-1.0 - bl[0]) * depth, bl[1] + (-1.0 - bl[1]) * depth)
        right = (br[0] + (1.0 - br[0]) * depth, br[1] + (-1.0 - br[1]) * depth)
        draw.line([_px(*left, size), _px(*right, size)], fill=line, width=width)
    if rng.random() < 0.7:  # a window or picture on the back wall
        cx = vx + rng.uniform(-0.5, 0.5) * half_w
        w, h = half_w * rng.uniform(0.3, 0.6), half_h * rng.uniform(0.3, 0.6)
        poly([(cx - w, vy - h), (cx + w, vy - h), (cx + w, vy + h), (cx - w, vy + h)],
             _random_colour(rng))
    if rng.random() < 0.7:  # a door on a side wall, drawn in perspective
        side_x, near = (bl[0], -1.0) if rng.random() < 0.5 else (br[0], 1.0)
        a, b = sorted(rng.uniform(0.2, 0.8, 2))
        xs = [side_x + (near - side_x) * t for t in (a, b)]
        floor_y = [vy - half_h + (-1.0 - (vy - half_h)) * t for t in (a, b)]
        top_y = [vy + 0.2 * half_h + (0.7 - (vy + 0.2 * half_h)) * t for t in (a, b)]
        poly([(xs[0], floor_y[0]), (xs[1], floor_y[1]), (xs[1], top_y[1]), (xs[0], top_y[0])],
             _jitter(rng, (0.4, 0.25, 0.15), 0.1))
    return canvas


def _place(rng: np.random.Generator, size: int) -> tuple[np.ndarray, str]:
    kind = "outdoor" if rng.random() < 0.5 else "indoor"
    canvas = _outdoor(rng, size) if kind == "outdoor" else _indoor(rng, size)
    image = np.asarray(canvas, dtype=np.float64) / 255.0
    grain = pink_noise(rng, size, 1, 1.0)[0]
    return image * (1.0 + 0.06 * grain[..., None]), kind


def _draw_face(draw: ImageDraw.ImageDraw, rng: np.random.Generator, cx: float, cy: float,
               height: float) -> str:
    width = height * rng.uniform(0.68, 0.8)
    skin = _jitter(rng, _SKIN[rng.integers(len(_SKIN))], 0.04)
    hair = _HAIR[rng.integers(len(_HAIR))]
    box = [cx - width / 2, cy - height / 2, cx + width / 2, cy + height / 2]
    has_hair = rng.random() < 0.75
    if has_hair:
        draw.ellipse([box[0] - 0.04 * width, box[1] - 0.05 * height, box[2] + 0.04 * width,
                      cy + 0.1 * height], fill=_rgb(hair))
    for side in (-1, 1):  # ears
        ex = cx + side * width * 0.5
        draw.ellipse([ex - 0.07 * width, cy - 0.1 * height, ex + 0.07 * width, cy + 0.08 * height],
                     fill=_rgb(skin * 0.92))
    draw.ellipse([box[0], box[1] + (0.08 * height if has_hair else 0), box[2], box[3]],
                 fill=_rgb(skin))
    eye_y = cy - height * rng.uniform(0.02, 0.1)
    eye_dx, eye_w, eye_h = width * 0.2, width * 0.13, height * 0.06
    gaze = rng.uniform(-0.3, 0.3) * eye_w
    iris = _jitter(rng, (0.25, 0.2, 0.15), 0.1)
    line = max(1, int(height / 40))
    for side in (-1, 1):
        ex = cx + side * eye_dx
        draw.ellipse([ex - eye_w, eye_y - eye_h, ex + eye_w, eye_y + eye_h], fill=(245, 245, 245))
        radius = eye_h * 0.9
        draw.ellipse([ex + gaze - radius, eye_y - radius, ex + gaze + radius, eye_y + radius],
                     fill=_rgb(iris))
        brow_y = eye_y - eye_h * rng.uniform(1.8, 2.6)
        draw.line([ex - eye_w, brow_y + side * rng.uniform(-1, 1) * eye_h * 0.4, ex + eye_w,
                   brow_y], fill=_rgb(np.asarray(hair) * 0.8), width=line * 2)
    nose = _rgb(skin * 0.75)
    draw.line([cx, eye_y + eye_h, cx - width * 0.05, cy + height * 0.15, cx, cy + height * 0.17],
              fill=nose, width=line)
    mouth_y = cy + height * rng.uniform(0.24, 0.3)
    smile = rng.uniform(-0.4, 1.0) * height * 0.06
    mouth_w = width * rng.uniform(0.18, 0.28)
    box_y = sorted([mouth_y - abs(smile) - 1, mouth_y + abs(smile) + 1])
    start, end = (20, 160) if smile >= 0 else (200, 340)
    draw.arc([cx - mouth_w, box_y[0], cx + mouth_w, box_y[1]], start, end,
             fill=_rgb(_jitter(rng, (0.65, 0.25, 0.25), 0.05)), width=line * 2)
    return "schematic"


def _draw_body(draw: ImageDraw.ImageDraw, rng: np.random.Generator, cx: float, cy: float,
               height: float) -> str:
    kind = str(rng.choice(["silhouette", "clothed", "stick"]))
    top = cy - height / 2
    head_r = 0.075 * height
    neck = (cx, top + 2 * head_r + 0.02 * height)
    hip = (cx + rng.normal(0, 0.02) * height, top + 0.55 * height)
    shoulder_w = 0.12 * height
    dark = _rgb(_random_colour(rng, 0.3) * 0.4)
    shirt, trousers = _rgb(_random_colour(rng)), _rgb(_random_colour(rng) * 0.7)
    skin = _rgb(_jitter(rng, _SKIN[rng.integers(len(_SKIN))], 0.04))
    limb = max(1, int(height * (0.025 if kind == "stick" else 0.075)))

    def segment(origin, angle, length):
        return (origin[0] + length * math.sin(angle), origin[1] + length * math.cos(angle))

    limbs = []
    for side in (-1, 1):
        spread = 0.2 if kind == "stick" else 1.0
        shoulder = (cx + side * shoulder_w * spread, neck[1] + 0.03 * height)
        elbow = segment(shoulder, side * rng.uniform(0.1, 2.6), 0.17 * height)
        hand = segment(elbow, side * rng.uniform(-0.3, 2.8), 0.16 * height)
        leg_root = (hip[0] + side * 0.05 * height, hip[1])
        knee = segment(leg_root, side * rng.uniform(0.0, 0.5), 0.23 * height)
        foot = segment(knee, side * rng.uniform(-0.3, 0.3), 0.22 * height)
        limbs.append(([shoulder, elbow, hand], "arm"))
        limbs.append(([leg_root, knee, foot], "leg"))
    for points, part in limbs:
        clothes = shirt if part == "arm" else trousers
        colour = clothes if kind == "clothed" else dark
        draw.line(points, fill=colour, width=limb, joint="curve")
    if kind == "stick":
        draw.line([neck, hip], fill=dark, width=limb)
        draw.ellipse([cx - head_r, top, cx + head_r, top + 2 * head_r], outline=dark, width=limb)
    else:
        torso = [(cx - shoulder_w, neck[1]), (cx + shoulder_w, neck[1]),
                 (hip[0] + 0.09 * height, hip[1]), (hip[0] - 0.09 * height, hip[1])]
        draw.polygon(torso, fill=dark if kind == "silhouette" else shirt)
        head = dark if kind == "silhouette" else skin
        draw.line([(cx, top + head_r), neck], fill=head, width=limb)
        draw.ellipse([cx - head_r, top, cx + head_r, top + 2 * head_r], fill=head)
    return kind


_FONTS = threading.local()  # FreeType faces must not be shared between threads


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    cache = _FONTS.__dict__.setdefault("by_size", {})
    if size not in cache:
        cache[size] = ImageFont.load_default(size=size)
    return cache[size]


def _draw_text(canvas: Image.Image, rng: np.random.Generator, cx: float, cy: float,
               width: float) -> tuple[str, str, float]:
    word = str(WORDS[rng.integers(len(WORDS))])
    if rng.random() < 0.4:
        word = word.upper()
    draw = ImageDraw.Draw(canvas)
    reference = draw.textbbox((0, 0), word, font=_font(100))
    font_size = max(6, int(100 * width / max(1, reference[2] - reference[0])))
    font = _font(font_size)
    left, top, right, bottom = draw.textbbox((0, 0), word, font=font)
    origin = (cx - (left + right) / 2, cy - (top + bottom) / 2)
    ink = _random_colour(rng)
    sign = rng.random() < 0.5
    if sign:
        pad = 0.25 * (bottom - top)
        plate = _rgb(1.0 - ink) if abs(float(np.mean(ink)) - 0.5) > 0.15 else _rgb(ink * 0.3)
        draw.rounded_rectangle([origin[0] + left - pad, origin[1] + top - pad,
                                origin[0] + right + pad, origin[1] + bottom + pad],
                               radius=pad, fill=plate)
    draw.text(origin, word, font=font, fill=_rgb(ink))
    extent = max(right - left, bottom - top) / canvas.width
    return word, "sign" if sign else "plain", extent


def _draw_shape(draw: ImageDraw.ImageDraw, rng: np.random.Generator, cx: float, cy: float,
                extent: float) -> str:
    kind = str(rng.choice(["ellipse", "rectangle", "triangle", "polygon", "star"]))
    radius = extent / 2
    fill = _rgb(_random_colour(rng))
    outline = _rgb(_random_colour(rng) * 0.5) if rng.random() < 0.5 else None
    width = max(1, int(extent / 30))
    rotation = rng.uniform(0, 2 * math.pi)
    if kind == "ellipse":
        ratio = rng.uniform(0.5, 1.0)
        draw.ellipse([cx - radius, cy - radius * ratio, cx + radius, cy + radius * ratio],
                     fill=fill, outline=outline, width=width)
        return kind
    if kind == "rectangle":
        corners = 4
        radii = np.full(corners, radius)
    elif kind == "triangle":
        corners = 3
        radii = np.full(corners, radius)
    elif kind == "polygon":
        corners = int(rng.integers(5, 9))
        radii = np.full(corners, radius)
    else:
        corners = 2 * int(rng.integers(4, 7))
        radii = np.where(np.arange(corners) % 2 == 0, radius, radius * rng.uniform(0.35, 0.6))
    angles = rotation + 2 * math.pi * np.arange(corners) / corners
    points = [
        (cx + r * math.cos(a), cy + r * math.sin(a)) for r, a in zip(radii, angles, strict=True)
    ]
    draw.polygon(points, fill=fill, outline=outline, width=width)
    return kind


def _draw_grating(image: np.ndarray, rng: np.random.Generator, cx: float, cy: float,
                  extent: float) -> str:
    kind = "disk" if rng.random() < 0.5 else "gabor"
    size = image.shape[0]
    radius = extent / 2
    top, bottom = max(0, int(cy - radius) - 1), min(size, int(cy + radius) + 2)
    left, right = max(0, int(cx - radius) - 1), min(size, int(cx + radius) + 2)
    rows, cols = np.mgrid[top:bottom, left:right] + 0.5
    dx, dy = cols - cx, cy - rows
    distance = np.hypot(dx, dy)
    if kind == "disk":
        alpha = np.clip(radius - distance + 0.5, 0.0, 1.0)
    else:
        alpha = np.exp(-(distance**2) / (2 * (radius / 2) ** 2))
    theta = rng.uniform(0, math.pi)
    cycles = rng.uniform(1.5, 8.0) / extent  # cycles per pixel
    wave = np.sin(2 * math.pi * cycles * (dx * math.cos(theta) + dy * math.sin(theta))
                  + rng.uniform(0, 2 * math.pi))
    mean = _random_colour(rng, 0.5)
    contrast = rng.uniform(0.3, 1.0) * min(mean.min(), 1 - mean.max(), 0.5)
    tint = np.clip(1.0 + rng.normal(0, 0.3, 3), 0.2, 1.8)
    patch = mean + contrast * wave[..., None] * tint
    region = image[top:bottom, left:right]
    region[:] = region * (1 - alpha[..., None]) + patch * alpha[..., None]
    return kind


def _place_objects(rng: np.random.Generator, n_objects: int) -> list[tuple[float, float, float]]:
    placed: list[tuple[float, float, float]] = []
    for _ in range(n_objects):
        extent = math.exp(rng.uniform(math.log(SIZE_RANGE[0]), math.log(SIZE_RANGE[1])))
        for _attempt in range(20):
            limit = 1.0 - 0.8 * extent
            x, y = rng.uniform(-limit, limit, 2)
            if all(math.hypot(x - px, y - py) > 0.8 * (extent + pe) for px, py, pe in placed):
                break
        placed.append((x, y, extent))
    return placed


def render_scene(rng: np.random.Generator, size: int = 256) -> tuple[np.ndarray, dict]:
    """Render one random scene.

    Parameters
    ----------
    rng : numpy.random.Generator
        Source of every random choice (the image is a pure function of its state).
    size : int
        Width and height in pixels.

    Returns
    -------
    image : numpy.ndarray
        uint8 (size, size, 3) RGB.
    annotation : dict
        ``background`` (noise | texture | place), ``background_kind`` and ``objects``: a list of
        ``{"category", "kind", "x", "y", "size"}`` (plus ``"word"`` for text) in drawing order,
        coordinates as in the module docstring, rounded to 4 decimals.
    """
    background = str(rng.choice(BACKGROUNDS, p=BACKGROUND_PROBABILITIES))
    if background == "noise":
        image, kind = _coloured_noise(rng, size), str(background)
    elif background == "texture":
        image, kind = _texture(rng, size)
    else:
        image, kind = _place(rng, size)
    image = np.clip(image, 0.0, 1.0)
    objects = []
    n_objects = int(rng.choice(len(N_OBJECTS_PROBABILITIES), p=N_OBJECTS_PROBABILITIES))
    for x, y, extent in _place_objects(rng, n_objects):
        category = str(rng.choice(CATEGORIES, p=CATEGORY_PROBABILITIES))
        x, y = round(float(x), 4), round(float(y), 4)
        cx, cy = _px(x, y, size)
        pixels = extent * size
        entry: dict = {"category": category}
        if category == "grating":
            entry["kind"] = _draw_grating(image, rng, cx, cy, pixels)
        else:
            canvas = Image.fromarray(np.uint8(image * 255 + 0.5))
            draw = ImageDraw.Draw(canvas)
            if category == "face":
                entry["kind"] = _draw_face(draw, rng, cx, cy, pixels)
            elif category == "body":
                entry["kind"] = _draw_body(draw, rng, cx, cy, pixels)
            elif category == "text":
                entry["word"], entry["kind"], extent = _draw_text(canvas, rng, cx, cy, pixels)
            else:
                entry["kind"] = _draw_shape(draw, rng, cx, cy, pixels)
            image = np.asarray(canvas, dtype=np.float64) / 255.0
        entry.update(x=x, y=y, size=round(float(extent), 4))
        objects.append(entry)
    image = np.clip(image, 0.0, 1.0)
    annotation = {"background": background, "background_kind": kind, "objects": objects}
    return np.uint8(image * 255 + 0.5), annotation
