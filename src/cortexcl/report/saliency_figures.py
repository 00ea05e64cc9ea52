"""Salience overlays (docs/method.md §7.2): rows = models, columns = images and their mirror images.

Each panel shows the image with its map overlaid (the map is scaled to its own maximum for
display only; the lateralisation index in the title is computed on the raw map), titled with
the index and the softmax probability of the target class.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from cortexcl.errors import InputError
from cortexcl.evaluation.saliency import SaliencyExamples, lateralization_index
from cortexcl.report.figures import save_figure

PANEL_INCHES = 1.9
_MIRROR_AXES = {"horizontal": 1, "vertical": 0}


def draw_saliency_overlays(images: np.ndarray, models: Sequence[SaliencyExamples],
                           path: str | Path, *, alpha: float = 0.5,
                           image_labels: Sequence[str] | None = None,
                           cmap: str = "jet") -> Path:
    """Draw CAM overlays of a few images, original and mirrored, for several models.

    Parameters
    ----------
    images : numpy.ndarray
        uint8 ``(n, H, W, 3)`` images as shown (the originals; mirrors are drawn from them).
    models : sequence of SaliencyExamples
        One row each (e.g. untuned, lh model, rh model), maps at the images' size.
    path : path
        The PNG written (atomically).
    alpha : float
        Opacity of the map over the image.
    image_labels : sequence of str, optional
        Column headings, one per image.
    cmap : str
        Matplotlib colour map of the overlay.

    Returns
    -------
    pathlib.Path
        ``path``.

    Raises
    ------
    InputError
        If there are no models or the maps do not match the images.
    """
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3 or not models:
        raise InputError("saliency figure: expected (n, H, W, 3) images and at least one model")
    n_images = len(images)
    labels = list(image_labels) if image_labels is not None else [
        f"image {i + 1}" for i in range(n_images)]
    for model in models:
        expected = (n_images, *images.shape[1:3])
        if model.maps.shape != expected or model.maps_flipped.shape != expected:
            raise InputError(f"saliency figure: {model.name}: maps {model.maps.shape} do not "
                             f"match images {images.shape}")
    fig = Figure(figsize=(PANEL_INCHES * 2 * n_images, PANEL_INCHES * 1.15 * len(models)))
    axes = fig.subplots(len(models), 2 * n_images, squeeze=False)
    for row, model in enumerate(models):
        mirror = _MIRROR_AXES[model.axis]
        li = lateralization_index(model.maps, model.axis)
        li_flipped = lateralization_index(model.maps_flipped, model.axis)
        for i in range(n_images):
            shown = (
                (images[i], model.maps[i], li[i], model.probability[i], labels[i]),
                (np.flip(images[i], mirror), model.maps_flipped[i], li_flipped[i],
                 model.probability_flipped[i], f"{labels[i]} (flipped)"),
            )
            for column, (image, cam, index, probability, label) in enumerate(shown):
                ax = axes[row, 2 * i + column]
                ax.imshow(image)
                peak = float(cam.max())
                ax.imshow(cam / peak if peak > 0 else cam, cmap=cmap, alpha=alpha,
                          vmin=0.0, vmax=1.0)
                ax.set_xticks([])
                ax.set_yticks([])
                ax.set_title(f"LI {index:+.2f}  P(class) {probability:.2f}", fontsize=8)
                if row == 0:
                    ax.text(0.5, 1.22, label, transform=ax.transAxes, ha="center", fontsize=8)
                if 2 * i + column == 0:
                    ax.set_ylabel(model.name, fontsize=9)
    fig.tight_layout()
    return save_figure(fig, Path(path))
