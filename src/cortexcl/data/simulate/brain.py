"""Voxel models of visual cortex: the ground truth of simulated subjects.

Every vertex mixes two components, each z-scored over the images before mixing:

* a low-level component, a compressive spatial summation (CSS) model: a Gaussian population
  receptive field (pRF) weights Gabor-energy features, ``L = (sum_k w_k sum_g pRF_g F_gk) ** n``
  with exponent ``n < 1``. Features are computed once per image: a quadrature Gabor bank (4
  orientations x 4 spatial frequencies, 4-32 cycles per image) on a 128-px grayscale copy, its
  amplitude averaged on a 16 x 16 grid, plus second-order (texture) features: the local spatial
  variability of the energy and its variability across orientations, per spatial frequency.
  Retinotopic vertices use the 16 x 16 grid with a per-vertex orientation and spatial-frequency
  preference; other vertices use an 8 x 8 grid and orientation-invariant features.
* a category component: evidence for faces, bodies, places and words from the image
  annotations (the fraction of the receptive field an object covers; places = the part of a
  place background not covered by objects), weighted by a large receptive field and by the
  vertex's category preferences, then compressed, ``C = (sum_c b_c E_c) ** m``.

The signal is ``sqrt(s) z(L) + sqrt(1 - s) z(C)``, z-scored, with ``s`` the low-level share.
The model of a vertex follows its ROIs with the priority prf-visualrois > floc-* > streams >
none: pRF vertices are purely low-level, category vertices mostly category-driven with a small
low-level share, streams vertices mix both as their member areas do and vertices in no ROI mix
both weakly (low noise ceiling). Each vertex has a noise-ceiling SNR (``ncsnr``): trial
responses are the standardised signal plus Gaussian noise of standard deviation ``1 / ncsnr``.

Visual-field coordinates are those of :mod:`cortexcl.data.simulate.stimuli`: ``x`` right-positive
and ``y`` up-positive, the image spanning [-1, 1] in both (1 unit = half the image width).
Left-hemisphere retinotopic vertices see the right visual field (``x > 0``), right-hemisphere
ones the left; ventral ROIs (``...v``, hV4) the upper field (``y > 0``), dorsal ones the lower.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.fft
from PIL import Image
from scipy.ndimage import uniform_filter
from scipy.special import ndtr

from cortexcl.data.rois import ROI_CLASSES

ANALYSIS_SIZE = 128
GRID = 16
COARSE_GRID = 8
ORIENTATIONS = tuple(i * math.pi / 4 for i in range(4))  # wave-vector direction, radians
SPATIAL_FREQUENCIES = (4.0, 8.0, 16.0, 32.0)  # cycles per image width
N_FINE_FEATURES = 24  # 16 first-order (orientation-major) + 4 texture + 4 orientation contrast
N_COARSE_FEATURES = 12  # 4 first-order (orientations averaged) + 4 texture + 4 orientation contrast
CATEGORIES = ("faces", "bodies", "places", "words")
OBJECT_CATEGORY = {"face": "faces", "body": "bodies", "text": "words"}
# Scene (places) evidence of a background, by kind or type: surfaces and layouts drive scene
# areas in proportion to how much they look like navigable space.
SCENE_EVIDENCE = {"outdoor": 1.0, "indoor": 0.8, "texture": 0.25, "noise": 0.0}

_PAD = 32  # reflection padding; keeps the widest filter from wrapping around
_BANDWIDTH = 0.35  # Gaussian radius of a filter in the Fourier plane, relative to its frequency
_SF_TUNING_OCTAVES = 1.0
# Second-order channels are about half as large as first-order ones on the simulated scenes;
# this fixed gain puts them on the same scale, so a vertex's second-order share means what it says.
_SECOND_ORDER_GAIN = 2.0
_IMAGE_BLOCK = 512

# Retinotopic areas: pRF size = (a + b * eccentricity) in image half-widths, CSS exponent,
# second-order share and orientation-tuning depth ranges. Sizes grow V1 < V2 < V3 < hV4 and
# compression strengthens along the hierarchy.
PRF_AREAS = {
    "V1": {"size": (0.03, 0.10), "exponent": 0.5, "second_order": (0.0, 0.0), "ori": (0.1, 0.5)},
    "V2": {"size": (0.05, 0.15), "exponent": 0.4, "second_order": (0.1, 0.3), "ori": (0.08, 0.4)},
    "V3": {"size": (0.07, 0.22), "exponent": 0.33, "second_order": (0.25, 0.45),
           "ori": (0.05, 0.3)},
    "hV4": {"size": (0.12, 0.35), "exponent": 0.25, "second_order": (0.45, 0.7), "ori": (0.0, 0.2)},
}
_ECC_RANGE = (0.01, 1.2)
_ECC_SEMI_SATURATION = 0.18  # cortical magnification ~ 1 / (e + e2)

# Category ROIs: category preference (faces, bodies, places, words) and receptive field
# (contralateral shift, vertical centre, centre scatter, size range).
CATEGORY_TEMPLATES = {
    "floc-faces": (1.0, 0.3, 0.0, 0.15),
    "floc-bodies": (0.3, 1.0, 0.0, 0.1),
    "floc-places": (0.0, 0.0, 1.0, 0.05),
    "floc-words": (0.2, 0.0, 0.0, 1.0),
}
CATEGORY_RF = {
    "floc-faces": {"x": 0.1, "y": 0.0, "scatter": 0.15, "size": (0.35, 0.7)},
    "floc-bodies": {"x": 0.15, "y": -0.05, "scatter": 0.25, "size": (0.4, 0.9)},
    "floc-places": {"x": 0.35, "y": 0.0, "scatter": 0.3, "size": (0.6, 1.2)},
    "floc-words": {"x": 0.05, "y": 0.0, "scatter": 0.12, "size": (0.3, 0.6)},
}
PLACE_ROI_ELEVATION = {"OPA": -0.25, "PPA": 0.15, "RSC": 0.0}

# Vertices only in a streams ROI (or in none): low-level share, Dirichlet concentration of the
# category preferences, receptive-field centre (contralateral shift, elevation), size range and
# noise-ceiling SNR range.
STREAM_MODELS = {
    "midventral": {"share": (0.5, 0.8), "categories": (1.0, 0.5, 0.5, 1.0), "elevation": 0.15,
                   "size": (0.25, 0.6), "ncsnr": (0.2, 0.8)},
    "midlateral": {"share": (0.4, 0.7), "categories": (1.0, 1.5, 0.3, 0.5), "elevation": 0.0,
                   "size": (0.3, 0.7), "ncsnr": (0.2, 0.8)},
    "midparietal": {"share": (0.6, 0.9), "categories": (0.2, 0.3, 1.0, 0.2), "elevation": -0.25,
                    "size": (0.3, 0.8), "ncsnr": (0.2, 0.8)},
    "ventral": {"share": (0.15, 0.4), "categories": (1.0, 1.0, 1.0, 1.0), "elevation": 0.1,
                "size": (0.4, 1.0), "ncsnr": (0.15, 0.7)},
    "lateral": {"share": (0.2, 0.5), "categories": (1.0, 1.5, 0.3, 0.5), "elevation": 0.0,
                "size": (0.4, 1.0), "ncsnr": (0.15, 0.7)},
    "parietal": {"share": (0.5, 0.8), "categories": (0.2, 0.3, 1.0, 0.2), "elevation": -0.2,
                 "size": (0.5, 1.2), "ncsnr": (0.15, 0.6)},
    "none": {"share": (0.3, 0.7), "categories": (1.0, 1.0, 1.0, 1.0), "elevation": 0.0,
             "size": (0.4, 1.2), "ncsnr": (0.0, 0.3)},
}
NCSNR_RANGES = {"prf": (0.4, 1.2), "floc": (0.2, 0.8), "early": (0.3, 1.0)}


# --------------------------------------------------------------------------------------------
# Image features


@functools.lru_cache(maxsize=1)
def _gabor_bank() -> np.ndarray:
    """Analytic (one-sided) Morlet-Gabor filters in the Fourier plane of the padded image."""
    n = ANALYSIS_SIZE + 2 * _PAD
    fx = np.fft.fftfreq(n)[None, :] * ANALYSIS_SIZE  # cycles per image width
    fy = -np.fft.fftfreq(n)[:, None] * ANALYSIS_SIZE  # up-positive
    bank = np.empty((len(ORIENTATIONS), len(SPATIAL_FREQUENCIES), n, n), dtype=np.complex64)
    for o, theta in enumerate(ORIENTATIONS):
        for s, frequency in enumerate(SPATIAL_FREQUENCIES):
            centre_x, centre_y = frequency * math.cos(theta), frequency * math.sin(theta)
            width2 = 2 * (_BANDWIDTH * frequency) ** 2
            gaussian = np.exp(-((fx - centre_x) ** 2 + (fy - centre_y) ** 2) / width2)
            # Morlet correction: no response to uniform luminance (zero gain at DC).
            bank[o, s] = gaussian - math.exp(-(frequency**2) / width2) * np.exp(
                -(fx**2 + fy**2) / width2
            )
    return bank


def _block_mean(array: np.ndarray, factor: int) -> np.ndarray:
    *lead, h, w = array.shape
    return array.reshape(*lead, h // factor, factor, w // factor, factor).mean(axis=(-3, -1))


def image_features(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Gabor-energy features of one image.

    Parameters
    ----------
    image : numpy.ndarray
        uint8 (H, W, 3) RGB.

    Returns
    -------
    fine : numpy.ndarray
        float32 (24, 256): channels x 16 x 16 grid positions (row-major, top row first).
        Channels 0-15 are the Gabor amplitude for orientation ``o`` and spatial frequency ``s``
        at index ``4 o + s``; 16-19 the local spatial variability of the orientation-summed
        energy per spatial frequency (texture); 20-23 its variability across orientations.
    coarse : numpy.ndarray
        float32 (12, 64) on an 8 x 8 grid: orientation-averaged amplitude per spatial
        frequency, then the 8 second-order channels.
    """
    luminance = image.astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    gray = Image.fromarray(luminance / 255.0, mode="F").resize(
        (ANALYSIS_SIZE, ANALYSIS_SIZE), Image.Resampling.BILINEAR
    )
    gray = np.asarray(gray, dtype=np.float32)
    padded = np.pad(gray - gray.mean(), _PAD, mode="reflect")
    spectrum = scipy.fft.fft2(padded).astype(np.complex64)
    responses = scipy.fft.ifft2(spectrum * _gabor_bank(), axes=(-2, -1))
    crop = slice(_PAD, _PAD + ANALYSIS_SIZE)
    amplitude = np.abs(responses[..., crop, crop])  # (4 orientations, 4 SFs, 128, 128)
    step = ANALYSIS_SIZE // GRID
    first = _block_mean(amplitude, step)  # (4, 4, 16, 16)
    middle = _block_mean(amplitude, step // 2)  # (4, 4, 32, 32)
    pooled = middle.sum(axis=0)
    mean = uniform_filter(pooled, size=(1, 3, 3), mode="reflect")
    mean2 = uniform_filter(pooled**2, size=(1, 3, 3), mode="reflect")
    texture = _SECOND_ORDER_GAIN * _block_mean(np.sqrt(np.maximum(mean2 - mean**2, 0.0)), 2)
    contrast = _SECOND_ORDER_GAIN * _block_mean(middle.std(axis=0), 2)
    fine = np.concatenate([first.reshape(16, GRID, GRID), texture, contrast])
    coarse = np.concatenate([first.mean(axis=0), texture, contrast])
    coarse = _block_mean(coarse, GRID // COARSE_GRID)
    return (
        fine.reshape(N_FINE_FEATURES, -1).astype(np.float32),
        coarse.reshape(N_COARSE_FEATURES, -1).astype(np.float32),
    )


def _coverage(low: float, high: float, edges: np.ndarray) -> np.ndarray:
    """Fraction of each interval between ``edges`` covered by [low, high]."""
    overlap = np.clip(np.minimum(high, edges[1:]) - np.maximum(low, edges[:-1]), 0.0, None)
    return overlap / np.diff(edges)


def category_maps(annotation: dict, grid: int = COARSE_GRID) -> np.ndarray:
    """Category evidence maps of one image from its annotation.

    Each object adds the fraction of every grid cell covered by its bounding square (half-side
    ``size``) to its category's map (faces, bodies, words; shapes and gratings count for none);
    maps are capped at 1. The places map is the background's scene evidence
    (:data:`SCENE_EVIDENCE`: outdoor views 1, rooms 0.8, textures 0.25, noise 0) where no
    object covers it.

    Returns
    -------
    numpy.ndarray
        float32 (4, grid * grid) in the order of :data:`CATEGORIES`, row-major, top row first.
    """
    edges = np.linspace(-1.0, 1.0, grid + 1)
    maps = np.zeros((len(CATEGORIES), grid, grid))
    occupied = np.zeros((grid, grid))
    for item in annotation["objects"]:
        x, y, half = item["x"], item["y"], item["size"]
        cover_x = _coverage(x - half, x + half, edges)
        cover_y = _coverage(y - half, y + half, edges)[::-1]  # rows run top to bottom
        cover = cover_y[:, None] * cover_x[None, :]
        occupied += cover
        category = OBJECT_CATEGORY.get(item["category"])
        if category is not None:
            maps[CATEGORIES.index(category)] += cover
    kind, background = annotation["background_kind"], annotation["background"]
    scene = SCENE_EVIDENCE.get(kind, SCENE_EVIDENCE.get(background, 0.0))
    maps[CATEGORIES.index("places")] = scene * (1.0 - np.minimum(occupied, 1.0))
    return np.minimum(maps, 1.0).reshape(len(CATEGORIES), -1).astype(np.float32)


# --------------------------------------------------------------------------------------------
# Vertex models


@dataclass
class VertexModels:
    """Parameters of every vertex of one hemisphere (arrays of length n_vertices).

    ``x, y, size``: low-level pRF centre and standard deviation; ``exponent``: CSS exponent;
    ``pref_sf`` (cycles per image width), ``ori_pref`` (radians, wave-vector direction) and
    ``ori_strength``: feature preferences; ``second_order``: share of texture features;
    ``fine``: 16 x 16 grid with orientation tuning (retinotopic) or 8 x 8 orientation-invariant;
    ``cat_x, cat_y, cat_size, cat_exponent`` and ``cat_weights`` (n, 4): category component;
    ``lowlevel_share``; ``ncsnr``; ``roi`` and ``model`` describe where the model came from.
    """

    roi: np.ndarray
    model: np.ndarray
    x: np.ndarray
    y: np.ndarray
    size: np.ndarray
    exponent: np.ndarray
    pref_sf: np.ndarray
    ori_pref: np.ndarray
    ori_strength: np.ndarray
    second_order: np.ndarray
    fine: np.ndarray
    cat_x: np.ndarray
    cat_y: np.ndarray
    cat_size: np.ndarray
    cat_exponent: np.ndarray
    cat_weights: np.ndarray
    lowlevel_share: np.ndarray
    ncsnr: np.ndarray

    def __len__(self) -> int:
        return len(self.roi)

    def to_frame(self) -> pd.DataFrame:
        """One row per vertex (column index ``vertex``); category weights as ``w_<category>``."""
        frame = pd.DataFrame({"vertex": np.arange(len(self))})
        for name, values in vars(self).items():
            if name == "cat_weights":
                for c, category in enumerate(CATEGORIES):
                    frame[f"w_{category}"] = values[:, c]
            else:
                frame[name] = values
        return frame


def _empty_models(n: int) -> VertexModels:
    nan = np.full(n, np.nan)
    return VertexModels(
        roi=np.full(n, "", dtype=object), model=np.full(n, "none", dtype=object),
        x=nan.copy(), y=nan.copy(), size=nan.copy(), exponent=nan.copy(), pref_sf=nan.copy(),
        ori_pref=np.zeros(n), ori_strength=np.zeros(n), second_order=np.zeros(n),
        fine=np.zeros(n, dtype=bool), cat_x=nan.copy(), cat_y=nan.copy(), cat_size=nan.copy(),
        cat_exponent=nan.copy(), cat_weights=np.zeros((n, len(CATEGORIES))),
        lowlevel_share=np.ones(n), ncsnr=np.zeros(n),
    )


def _sample_eccentricity(rng: np.random.Generator, n: int, low: float, high: float) -> np.ndarray:
    """Eccentricities with density ~ e / (e + e2)**2 (areal cortical magnification)."""
    grid = np.linspace(low, high, 2048)
    density = grid / (grid + _ECC_SEMI_SATURATION) ** 2
    cdf = np.concatenate([[0.0], np.cumsum((density[1:] + density[:-1]) / 2)])
    return np.interp(rng.random(n), cdf / cdf[-1], grid)


def _retinotopic(
    models: VertexModels, idx: np.ndarray, area: str, ventral: np.ndarray, side: float,
    rng: np.random.Generator, eccentricity: tuple[float, float] = _ECC_RANGE,
) -> None:
    """Draw pRF parameters of retinotopic vertices ``idx`` of ``area`` (V1, V2, V3, hV4)."""
    n = len(idx)
    params = PRF_AREAS[area]
    ecc = _sample_eccentricity(rng, n, *eccentricity)
    margin = 0.03
    polar = rng.uniform(margin, math.pi / 2 - margin, n) * np.where(ventral, 1.0, -1.0)
    x, y = side * ecc * np.cos(polar), ecc * np.sin(polar)
    a, b = params["size"]
    size = (a + b * ecc) * np.exp(rng.normal(0.0, 0.15, n))
    models.x[idx], models.y[idx], models.size[idx] = x, y, size
    models.exponent[idx] = params["exponent"] * np.exp(rng.normal(0.0, 0.1, n))
    models.pref_sf[idx] = np.clip(1.6 / size * 2.0 ** rng.normal(0.0, 0.4, n), 2.5, 48.0)
    models.ori_pref[idx] = np.mod(np.arctan2(y, x) + rng.normal(0.0, 0.6, n), math.pi)
    models.ori_strength[idx] = rng.uniform(*params["ori"], n)
    models.second_order[idx] = rng.uniform(*params["second_order"], n)
    models.fine[idx] = True
    models.lowlevel_share[idx] = 1.0


def _coarse_lowlevel(
    models: VertexModels, idx: np.ndarray, centre_x: np.ndarray, centre_y: np.ndarray,
    size: np.ndarray, rng: np.random.Generator,
) -> None:
    n = len(idx)
    models.x[idx], models.y[idx], models.size[idx] = centre_x, centre_y, size
    models.exponent[idx] = rng.uniform(0.2, 0.35, n)
    models.pref_sf[idx] = np.exp(rng.uniform(math.log(3.0), math.log(16.0), n))
    models.second_order[idx] = rng.uniform(0.4, 0.8, n)


def _category_rf(
    models: VertexModels, idx: np.ndarray, shift: float, elevation: float | np.ndarray,
    scatter: float, size: tuple[float, float], side: float, rng: np.random.Generator,
) -> None:
    n = len(idx)
    models.cat_x[idx] = side * shift + rng.normal(0.0, scatter, n)
    models.cat_y[idx] = elevation + rng.normal(0.0, scatter, n)
    models.cat_size[idx] = rng.uniform(*size, n)
    models.cat_exponent[idx] = rng.uniform(0.4, 0.7, n)


def draw_vertex_models(
    labels: dict[str, np.ndarray], hemisphere: str, rng: np.random.Generator
) -> VertexModels:
    """Draw the model of every vertex of a hemisphere from its ROI labels.

    Parameters
    ----------
    labels : dict of str to numpy.ndarray
        Per ROI class (the six Algonauts classes), the label of every challenge-space column.
    hemisphere : {"lh", "rh"}
        Left-hemisphere vertices see the right visual field and vice versa.
    rng : numpy.random.Generator

    Returns
    -------
    VertexModels
    """
    side = 1.0 if hemisphere == "lh" else -1.0
    n = len(labels["prf-visualrois"])
    models = _empty_models(n)
    prf = labels["prf-visualrois"]
    assigned = prf > 0
    for label, name in ROI_CLASSES["prf-visualrois"].items():
        idx = np.flatnonzero(prf == label)
        area = "hV4" if name == "hV4" else name[:2]
        ventral = np.full(len(idx), name.endswith("v") or name == "hV4")
        _retinotopic(models, idx, area, ventral, side, rng)
        models.roi[idx], models.model[idx] = name, "prf"
        models.ncsnr[idx] = rng.uniform(*NCSNR_RANGES["prf"], len(idx))

    floc_classes = [c for c in ROI_CLASSES if c.startswith("floc-")]
    in_floc = np.stack([labels[c] > 0 for c in floc_classes])
    floc = ~assigned & in_floc.any(axis=0)
    for c, class_name in enumerate(floc_classes):
        primary = floc & in_floc[c] & ~in_floc[:c].any(axis=0)
        idx = np.flatnonzero(primary)
        rf = CATEGORY_RF[class_name]
        table = ROI_CLASSES[class_name]
        by_label = np.array([PLACE_ROI_ELEVATION.get(table.get(lab, ""), rf["y"])
                             for lab in range(max(table) + 1)])
        elevation = by_label[labels[class_name][idx]]
        _category_rf(models, idx, rf["x"], elevation, rf["scatter"], rf["size"], side, rng)
    floc_idx = np.flatnonzero(floc)
    for c, class_name in enumerate(floc_classes):
        member = floc_idx[in_floc[c, floc]]
        jitter = np.exp(rng.normal(0.0, 0.3, (len(member), len(CATEGORIES))))
        models.cat_weights[member] += np.asarray(CATEGORY_TEMPLATES[class_name]) * jitter
    names = [
        "+".join(ROI_CLASSES[c][labels[c][v]] for c in floc_classes if labels[c][v] > 0)
        for v in floc_idx
    ]
    models.roi[floc_idx], models.model[floc_idx] = np.array(names, dtype=object), "floc"
    models.lowlevel_share[floc_idx] = rng.uniform(0.1, 0.3, len(floc_idx))
    models.ncsnr[floc_idx] = rng.uniform(*NCSNR_RANGES["floc"], len(floc_idx))
    _coarse_lowlevel(models, floc_idx, models.cat_x[floc_idx], models.cat_y[floc_idx],
                     0.8 * models.cat_size[floc_idx], rng)
    assigned |= floc

    streams = labels["streams"]
    for label, name in [(0, "none"), *ROI_CLASSES["streams"].items()]:
        idx = np.flatnonzero(~assigned & (streams == label))
        if name == "early":  # peripheral retinotopic cortex outside the pRF ROIs
            areas = rng.choice(["V1", "V2", "V3"], len(idx))
            ventral = rng.random(len(idx)) < 0.5
            for area in ("V1", "V2", "V3"):
                member = areas == area
                _retinotopic(models, idx[member], area, ventral[member], side, rng,
                             eccentricity=(0.6, 1.4))
            models.roi[idx], models.model[idx] = "early", "streams"
            models.ncsnr[idx] = rng.uniform(*NCSNR_RANGES["early"], len(idx))
            continue
        spec = STREAM_MODELS[name]
        _category_rf(models, idx, 0.2, spec["elevation"], 0.3, spec["size"], side, rng)
        _coarse_lowlevel(models, idx, models.cat_x[idx], models.cat_y[idx],
                         0.8 * models.cat_size[idx], rng)
        models.cat_weights[idx] = rng.dirichlet(spec["categories"], len(idx))
        models.lowlevel_share[idx] = rng.uniform(*spec["share"], len(idx))
        models.ncsnr[idx] = rng.uniform(*spec["ncsnr"], len(idx))
        models.roi[idx] = "" if name == "none" else name
        models.model[idx] = "none" if name == "none" else "streams"
    return models


# --------------------------------------------------------------------------------------------
# Responses


def rf_weights(x: np.ndarray, y: np.ndarray, sigma: np.ndarray, grid: int) -> np.ndarray:
    """Integral of each isotropic Gaussian RF over each cell of a ``grid x grid`` image grid.

    The Gaussians have unit volume over the whole visual field, so an RF that extends beyond
    the image has weights summing to less than 1.

    Returns
    -------
    numpy.ndarray
        float32 (n, grid * grid), cells row-major with the top row first.
    """
    edges = np.linspace(-1.0, 1.0, grid + 1)
    sigma = np.asarray(sigma, dtype=np.float64)[:, None]
    cdf_x = ndtr((edges[None, :] - np.asarray(x)[:, None]) / sigma)
    cdf_y = ndtr((edges[None, ::-1] - np.asarray(y)[:, None]) / sigma)  # top edge first
    along_x = np.diff(cdf_x, axis=1)
    along_y = -np.diff(cdf_y, axis=1)
    return (along_y[:, :, None] * along_x[:, None, :]).reshape(len(sigma), -1).astype(np.float32)


def feature_weights(models: VertexModels, idx: np.ndarray, fine: bool) -> np.ndarray:
    """Per-vertex weights over the fine (24) or coarse (12) feature channels; each row sums to 1."""
    log_ratio = np.log2(np.asarray(SPATIAL_FREQUENCIES)[None, :] / models.pref_sf[idx][:, None])
    tuning = np.exp(-(log_ratio**2) / (2 * _SF_TUNING_OCTAVES**2))
    tuning /= tuning.sum(axis=1, keepdims=True)
    if fine:
        angles = np.asarray(ORIENTATIONS)[None, :] - models.ori_pref[idx][:, None]
        orientation = 1.0 + models.ori_strength[idx][:, None] * np.cos(2 * angles)
        first = (orientation[:, :, None] * tuning[:, None, :]).reshape(len(idx), -1)
        first /= first.sum(axis=1, keepdims=True)
    else:
        first = tuning
    share = models.second_order[idx][:, None]
    weights = np.concatenate([(1 - share) * first, share / 2 * tuning, share / 2 * tuning], axis=1)
    return weights.astype(np.float32)


def _pooled_drive(features: np.ndarray, rf: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """``sum_k weights[v, k] * sum_g features[i, k, g] * rf[v, g]`` for all images i and RFs v."""
    n_images, n_channels, n_cells = features.shape
    weights = weights.astype(np.float32)
    drive = np.zeros((n_images, len(rf)), dtype=np.float32)
    for start in range(0, n_images, _IMAGE_BLOCK):
        block = features[start : start + _IMAGE_BLOCK]
        pooled = (block.reshape(-1, n_cells) @ rf.T).reshape(len(block), n_channels, len(rf))
        target = drive[start : start + len(block)]
        for k in range(n_channels):
            target += pooled[:, k] * weights[:, k]
    return drive


def zscore(values: np.ndarray) -> np.ndarray:
    """Standardise columns (population sd, float64 accumulation); constant columns become 0."""
    mean = values.mean(axis=0, dtype=np.float64)
    sd = values.std(axis=0, dtype=np.float64)
    varies = (sd > 0) & (sd > 1e-6 * np.abs(mean))  # rounding noise of a constant is not signal
    scale = np.divide(1.0, sd, out=np.zeros_like(sd), where=varies)
    return ((values - mean.astype(values.dtype)) * scale.astype(values.dtype)).astype(values.dtype)


def compute_signal(
    models: VertexModels,
    idx: np.ndarray,
    fine_features: np.ndarray,
    coarse_features: np.ndarray,
    maps: np.ndarray,
) -> np.ndarray:
    """Noiseless standardised responses of vertices ``idx`` to every image.

    Parameters
    ----------
    models : VertexModels
    idx : numpy.ndarray
        Vertex (column) indices.
    fine_features, coarse_features : numpy.ndarray
        float32 (n_images, 24, 256) and (n_images, 12, 64), from :func:`image_features`.
    maps : numpy.ndarray
        float32 (n_images, 4, 64), from :func:`category_maps`.

    Returns
    -------
    numpy.ndarray
        float64 (n_images, len(idx)), each column z-scored (a constant column is all 0).
    """
    n_images = len(fine_features)
    lowlevel = np.zeros((n_images, len(idx)), dtype=np.float32)
    category = np.zeros((n_images, len(idx)), dtype=np.float32)
    pathways = ((True, fine_features, GRID), (False, coarse_features, COARSE_GRID))
    for fine, features, grid in pathways:
        local = np.flatnonzero(models.fine[idx] == fine)
        if len(local):
            v = idx[local]
            rf = rf_weights(models.x[v], models.y[v], models.size[v], grid)
            drive = _pooled_drive(features, rf, feature_weights(models, v, fine))
            lowlevel[:, local] = np.maximum(drive, 0.0) ** models.exponent[v].astype(np.float32)
    local = np.flatnonzero(models.lowlevel_share[idx] < 1.0)
    if len(local):
        v = idx[local]
        rf = rf_weights(models.cat_x[v], models.cat_y[v], models.cat_size[v], COARSE_GRID)
        evidence = _pooled_drive(maps, rf, models.cat_weights[v])
        category[:, local] = np.maximum(evidence, 0.0) ** models.cat_exponent[v].astype(np.float32)
    share = models.lowlevel_share[idx].astype(np.float32)
    mixed = np.sqrt(share) * zscore(lowlevel) + np.sqrt(1.0 - share) * zscore(category)
    return zscore(mixed.astype(np.float64))
