"""The pooled multi-subject contrastive model of one hemisphere and ROI (docs/method.md §2.5).

All subjects share the backbone, the image map ``W_x`` and the projection head ``g``; each
subject ``s`` has its own response map ``W_y^(s): Linear(n_s -> h)``, since ROI sizes differ.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

from torch import Tensor, nn

from cortexcl.errors import InputError
from cortexcl.models.backbones import feature_width, forward_to
from cortexcl.models.contrastive import check_pairs, check_temperature, info_nce
from cortexcl.models.freezing import freeze_layers
from cortexcl.models.heads import ProjectionHead

POOLED_Z_RATIO = 0.25
HIDDEN_SIZE_MODES = ("avg", "const")


def pooled_hidden_size(
    vertex_counts: Mapping[str, int],
    mode: str = "avg",
    all_roi_sizes: Iterable[int] | None = None,
    override: int | None = None,
) -> int:
    """Hidden size ``h`` of a pooled model.

    Parameters
    ----------
    vertex_counts : mapping of str to int
        ROI size ``n_s`` of each subject; subjects with ``n_s = 0`` are not part of the model.
    mode : {"avg", "const"}
        ``"avg"``: ``floor(mean n_s)`` over the subjects with ``n_s > 0``. ``"const"``: the
        largest of ``all_roi_sizes``, the ROI sizes over all subjects, hemispheres and ROIs of
        the study (5741 on Algonauts 2023), so that every pooled model has the same ``h``.
    all_roi_sizes : iterable of int, optional
        Required by ``"const"``.
    override : int, optional
        Explicit ``h``; wins over ``mode``.

    Returns
    -------
    int
        The hidden size.
    """
    if override is not None:
        if override < 1:
            raise InputError(f"pooled hidden size: expected a positive override, got {override}")
        return override
    if mode == "avg":
        sizes = [n for n in vertex_counts.values() if n > 0]
        if not sizes:
            raise InputError("pooled hidden size: no subject has vertices in this ROI")
        return sum(sizes) // len(sizes)
    if mode == "const":
        sizes = [] if all_roi_sizes is None else list(all_roi_sizes)
        if not sizes or max(sizes) < 1:
            raise InputError(
                "pooled hidden size: mode 'const' needs the ROI sizes of the whole study"
            )
        return max(sizes)
    raise InputError(
        f"pooled hidden size: unknown mode {mode!r}; expected one of {', '.join(HIDDEN_SIZE_MODES)}"
    )


class PooledContrastiveModel(nn.Module):
    """Contrastive model shared by several subjects, one response map per subject.

    Parameters
    ----------
    backbone : nn.Module
        Image network mapping images to ``(B, n_outputs)``; the full AlexNet (1000 logits).
    vertex_counts : mapping of str to int
        ROI size of each subject. Subjects with 0 vertices are left out; the others, in
        ascending name order, are :attr:`subjects`.
    h : int
        Hidden size, see :func:`pooled_hidden_size`.
    z : int, optional
        Embedding size; default ``floor(0.25 h)``.
    temperature : float
        InfoNCE temperature.
    symmetric : bool
        Use the symmetric InfoNCE loss.
    n_outputs : int
        Width of what the image branch reads (the backbone output, or ``image_layer``).
    image_layer : str, optional
        Module whose flattened output the image branch reads, e.g. the pooled penultimate
        features (`cortexcl.models.backbones.Backbone.penultimate`); default the backbone's
        output logits, as published.

    Attributes
    ----------
    backbone : nn.Module
    subjects : tuple of str
        The subjects of the model, ascending; a subject's branch index is its position here.
    w_x : nn.Linear
        Shared image map.
    w_y : nn.ModuleDict
        Response map of each subject, keyed by subject name.
    head : ProjectionHead
        Shared head, applied to each modality separately.
    """

    def __init__(
        self,
        backbone: nn.Module,
        vertex_counts: Mapping[str, int],
        h: int,
        z: int | None = None,
        temperature: float = 0.3,
        symmetric: bool = False,
        n_outputs: int = 1000,
        image_layer: str | None = None,
    ) -> None:
        super().__init__()
        for subject, n in vertex_counts.items():
            if n < 0 or "." in subject or not subject:
                raise InputError(f"pooled model: bad subject entry {subject!r}: {n} vertices")
        self.subjects = tuple(sorted(s for s, n in vertex_counts.items() if n > 0))
        if not self.subjects:
            raise InputError("pooled model: no subject has vertices in this ROI")
        check_temperature(temperature)
        self.vertex_counts = {s: vertex_counts[s] for s in self.subjects}
        self.h = h
        self.z = max(1, math.floor(POOLED_Z_RATIO * h)) if z is None else z
        self.temperature = temperature
        self.symmetric = symmetric
        self.backbone = backbone
        self.image_layer = image_layer
        self.w_x = nn.Linear(n_outputs, h, bias=False)
        self.w_y = nn.ModuleDict(
            {s: nn.Linear(n, h, bias=False) for s, n in self.vertex_counts.items()}
        )
        self.head = ProjectionHead(h, self.z)

    @classmethod
    def from_settings(
        cls,
        backbone: nn.Module,
        vertex_counts: Mapping[str, int],
        settings: Any,
        mode: str = "avg",
        all_roi_sizes: Iterable[int] | None = None,
        image_layer: str | None = None,
    ) -> PooledContrastiveModel:
        """Build the model from a settings object (the ``tuning.pooled`` section of a study).

        Parameters
        ----------
        backbone : nn.Module
            The shared image network.
        vertex_counts : mapping of str to int
            ROI size of each subject.
        settings : object
            With attributes ``temperature`` and ``hidden_override`` (and optionally
            ``symmetric`` and ``frozen``: backbone layers frozen in place).
        mode, all_roi_sizes
            How ``h`` is chosen, see :func:`pooled_hidden_size`.
        image_layer : str, optional
            What the image branch reads (see the class); default the output logits.

        Returns
        -------
        PooledContrastiveModel
        """
        h = pooled_hidden_size(vertex_counts, mode, all_roi_sizes, settings.hidden_override)
        freeze_layers(backbone, getattr(settings, "frozen", ()))
        return cls(
            backbone,
            vertex_counts,
            h,
            n_outputs=feature_width(backbone, image_layer),
            image_layer=image_layer,
            temperature=settings.temperature,
            symmetric=getattr(settings, "symmetric", False),
        )

    def _subject_map(self, subject: str) -> nn.Module:
        if subject not in self.w_y:
            raise InputError(
                f"pooled model: unknown subject {subject!r}; subjects: {', '.join(self.subjects)}"
            )
        return self.w_y[subject]

    def embed_images(self, images: Tensor) -> Tensor:
        """Image embeddings ``g(W_x backbone(x))``, ``(B, z)``."""
        return self.head(self.w_x(forward_to(self.backbone, images, self.image_layer)))

    def embed_responses(self, responses: Tensor, subject: str) -> Tensor:
        """Response embeddings ``g(W_y^(s) y)`` of one subject, ``(B, z)``."""
        return self.head(self._subject_map(subject)(responses))

    def loss(self, images: Tensor, responses: Tensor, subject: str) -> Tensor:
        """InfoNCE loss of a batch of one subject's (image, response) pairs.

        Parameters
        ----------
        images : Tensor
            ``(B, 3, S, S)`` normalised images.
        responses : Tensor
            ``(B, n_s)`` responses of ``subject``.
        subject : str
            The subject the batch comes from.

        Returns
        -------
        Tensor
            Scalar loss.
        """
        w_y = self._subject_map(subject)
        check_pairs(
            images, responses, self.vertex_counts[subject], min_pairs=2 if self.training else 1
        )
        z_x = self.embed_images(images)
        z_y = self.head(w_y(responses))
        return info_nce(z_x, z_y, self.temperature, self.symmetric)
