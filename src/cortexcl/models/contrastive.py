"""The contrastive (CL) tuning model and its InfoNCE loss (docs/method.md §2.1, §2.2).

An image ``x`` and the response ``y`` of one ROI to it are embedded by two branches that share a
projection head::

    a   = backbone(x)                (AlexNet: 1000 logits)
    z_x = g(W_x a)                   W_x: Linear(1000 -> h), no bias
    z_y = g(W_y y)                   W_y: Linear(n -> h), no bias

and trained so that each image's embedding is most similar to the embedding of its own response.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cortexcl.errors import InputError
from cortexcl.models.backbones import feature_width, forward_to
from cortexcl.models.freezing import freeze_layers
from cortexcl.models.heads import ProjectionHead, head_dims


def single_vertex_count(vertex_counts: Mapping[str, int]) -> int:
    """The ROI size of a single-subject model, given as ``{subject: n_vertices}``."""
    if len(vertex_counts) != 1:
        raise InputError(
            f"single-subject model: expected one subject, got {len(vertex_counts)} "
            f"({', '.join(vertex_counts)})"
        )
    return next(iter(vertex_counts.values()))


def check_temperature(temperature: float) -> None:
    """Raise :class:`InputError` unless the InfoNCE temperature is positive."""
    if not temperature > 0:
        raise InputError(f"temperature: expected a positive number, got {temperature}")


def check_pairs(images: Tensor, responses: Tensor, n_vertices: int, min_pairs: int = 1) -> None:
    """Check that a batch holds matching (image, response) pairs of the expected width.

    Parameters
    ----------
    images : Tensor
        Image batch, ``(B, ...)``.
    responses : Tensor
        Response batch, ``(B, n_vertices)``.
    n_vertices : int
        Expected number of response columns.
    min_pairs : int
        Smallest accepted batch size.

    Raises
    ------
    ValueError
        If the shapes do not match or the batch is smaller than ``min_pairs``.
    """
    if responses.ndim != 2 or responses.shape[1] != n_vertices:
        raise ValueError(
            f"responses: expected shape (batch, {n_vertices}), got {tuple(responses.shape)}"
        )
    if images.shape[0] != responses.shape[0]:
        raise ValueError(f"batch: {images.shape[0]} images but {responses.shape[0]} responses")
    if responses.shape[0] < min_pairs:
        raise ValueError(
            f"batch: {responses.shape[0]} pairs given, this model needs at least {min_pairs}"
        )


def cosine_similarities(z_x: Tensor, z_y: Tensor) -> Tensor:
    """Cosine similarities of every response embedding with every image embedding.

    Parameters
    ----------
    z_x : Tensor
        Image embeddings, ``(B, z)``.
    z_y : Tensor
        Response embeddings, ``(B, z)``; row ``i`` pairs with row ``i`` of ``z_x``.

    Returns
    -------
    Tensor
        ``S`` of shape ``(B, B)`` with ``S[i, j] = cos(z_y[i], z_x[j])``; a zero vector has
        similarity 0 with everything. Computed in at least float32, also under autocast.
    """
    if z_x.ndim != 2 or z_x.shape != z_y.shape or z_x.shape[0] == 0:
        raise ValueError(
            f"embeddings: expected two non-empty (B, z) tensors of one shape, got "
            f"{tuple(z_x.shape)} and {tuple(z_y.shape)}"
        )
    dtype = torch.promote_types(torch.promote_types(z_x.dtype, z_y.dtype), torch.float32)
    with torch.autocast(z_x.device.type, enabled=False):
        return F.normalize(z_y.to(dtype), dim=1) @ F.normalize(z_x.to(dtype), dim=1).T


def info_nce_from_similarities(
    similarities: Tensor, temperature: float = 0.3, symmetric: bool = False
) -> Tensor:
    """InfoNCE loss of a similarity matrix from :func:`cosine_similarities`.

    Parameters
    ----------
    similarities : Tensor
        ``S`` of shape ``(B, B)``, ``S[i, j] = cos(z_y[i], z_x[j])``.
    temperature : float
        Softmax temperature ``tau``.
    symmetric : bool
        If true, the mean of the image-to-response and response-to-image losses.

    Returns
    -------
    Tensor
        Scalar loss, in nats.
    """
    check_temperature(temperature)
    targets = torch.arange(similarities.shape[0], device=similarities.device)
    loss = F.cross_entropy(similarities.T / temperature, targets)
    if symmetric:
        loss = 0.5 * (loss + F.cross_entropy(similarities / temperature, targets))
    return loss


def info_nce(z_x: Tensor, z_y: Tensor, temperature: float = 0.3, symmetric: bool = False) -> Tensor:
    """One-directional InfoNCE loss of paired embeddings (docs/method.md §2.2).

    With ``S[i, j] = cos(z_y[i], z_x[j])``::

        L = -(1/B) sum_j log( exp(S[j, j] / tau) / sum_i exp(S[i, j] / tau) )

    i.e. for each image ``j`` a softmax over the ``B`` responses: cross-entropy of ``S.T / tau``
    with targets ``0 .. B-1``. There are no image-image or response-response negatives and the
    diagonal is not masked.

    Parameters
    ----------
    z_x : Tensor
        Image embeddings, ``(B, z)``.
    z_y : Tensor
        Response embeddings, ``(B, z)``, paired row by row with ``z_x``.
    temperature : float
        Softmax temperature ``tau``; 0.3 in the published method.
    symmetric : bool
        If true, average with the loss of the other direction (for each response, a softmax
        over the images); an ablation option.

    Returns
    -------
    Tensor
        Scalar loss in nats; ``log B`` when all embeddings are equal.
    """
    return info_nce_from_similarities(cosine_similarities(z_x, z_y), temperature, symmetric)


class ContrastiveModel(nn.Module):
    """Contrastive tuning model of one subject, hemisphere and ROI (docs/method.md §2.1).

    Parameters
    ----------
    backbone : nn.Module
        Image network mapping ``(B, 3, S, S)`` images to ``(B, n_outputs)``; the full
        torchvision AlexNet (1000 logits) in the published method. It is trained too.
    n_vertices : int
        Number of vertices ``n`` of the ROI.
    h, z : int, optional
        Hidden and embedding sizes; default :func:`~cortexcl.models.heads.head_dims` of ``n``.
    temperature : float
        InfoNCE temperature.
    symmetric : bool
        Use the symmetric InfoNCE loss instead of the published one-directional loss.
    regression_weight : float
        ``lambda`` of the mixed objective: if positive, a regression readout
        ``Linear(n_outputs -> n)`` on the backbone output is added and the loss becomes
        ``InfoNCE + lambda * MSE``. 0 (the published method) adds nothing.
    n_outputs : int
        Width of what the image branch reads (the backbone output, or ``image_layer``).
    image_layer : str, optional
        Module whose flattened output the image branch reads, e.g. the pooled penultimate
        features (`cortexcl.models.backbones.Backbone.penultimate`); default the backbone's
        output logits, as published.

    Attributes
    ----------
    backbone : nn.Module
    w_x : nn.Linear
        Image map ``W_x``.
    w_y : nn.Linear
        Response map ``W_y``.
    head : ProjectionHead
        Shared head ``g``, applied to each modality separately (per-modality BatchNorm).
    regression : nn.Linear or None
        Readout of the mixed objective, present only when ``regression_weight > 0``.
    """

    def __init__(
        self,
        backbone: nn.Module,
        n_vertices: int,
        h: int | None = None,
        z: int | None = None,
        temperature: float = 0.3,
        symmetric: bool = False,
        regression_weight: float = 0.0,
        n_outputs: int = 1000,
        image_layer: str | None = None,
    ) -> None:
        super().__init__()
        default_h, default_z = head_dims(n_vertices)
        check_temperature(temperature)
        if regression_weight < 0:
            raise InputError(f"regression_weight: expected a number >= 0, got {regression_weight}")
        self.n_vertices = n_vertices
        self.h = default_h if h is None else h
        self.z = default_z if z is None else z
        self.temperature = temperature
        self.symmetric = symmetric
        self.regression_weight = regression_weight
        self.backbone = backbone
        self.image_layer = image_layer
        self.w_x = nn.Linear(n_outputs, self.h, bias=False)
        self.w_y = nn.Linear(n_vertices, self.h, bias=False)
        self.head = ProjectionHead(self.h, self.z)
        self.regression = nn.Linear(n_outputs, n_vertices) if regression_weight > 0 else None

    @classmethod
    def from_settings(
        cls, backbone: nn.Module, vertex_counts: Mapping[str, int], settings: Any,
        image_layer: str | None = None,
    ) -> ContrastiveModel:
        """Build the model from a settings object (the ``tuning.cl`` section of a study).

        Parameters
        ----------
        backbone : nn.Module
            The image network; the layers named in ``settings.frozen`` are frozen in place.
        vertex_counts : mapping of str to int
            ``{subject: n_vertices}`` with exactly one subject.
        settings : object
            With attributes ``h_ratio``, ``z_ratio``, ``temperature``, ``symmetric``,
            ``frozen`` and ``regression_weight``.
        image_layer : str, optional
            What the image branch reads (see the class); default the output logits.

        Returns
        -------
        ContrastiveModel
        """
        n_vertices = single_vertex_count(vertex_counts)
        h, z = head_dims(n_vertices, settings.h_ratio, settings.z_ratio)
        freeze_layers(backbone, settings.frozen)
        return cls(
            backbone,
            n_vertices,
            n_outputs=feature_width(backbone, image_layer),
            image_layer=image_layer,
            h=h,
            z=z,
            temperature=settings.temperature,
            symmetric=settings.symmetric,
            regression_weight=settings.regression_weight,
        )

    def embed_images(self, images: Tensor) -> Tensor:
        """Image embeddings ``z_x = g(W_x backbone(x))``, ``(B, z)``."""
        return self.head(self.w_x(forward_to(self.backbone, images, self.image_layer)))

    def embed_responses(self, responses: Tensor) -> Tensor:
        """Response embeddings ``z_y = g(W_y y)``, ``(B, z)``."""
        return self.head(self.w_y(responses))

    def loss(self, images: Tensor, responses: Tensor, subject: str | None = None) -> Tensor:
        """Training loss of a batch of (image, response) pairs.

        Parameters
        ----------
        images : Tensor
            ``(B, 3, S, S)`` normalised images.
        responses : Tensor
            ``(B, n_vertices)`` ROI responses to those images.
        subject : str, optional
            Ignored; accepted so that every tuning model is called the same way.

        Returns
        -------
        Tensor
            Scalar: InfoNCE, plus ``regression_weight`` times the MSE of the regression
            readout when that is enabled.
        """
        # In training, BatchNorm batch statistics need 2 pairs: a last batch of 1 must be
        # dropped or merged by the caller.
        check_pairs(images, responses, self.n_vertices, min_pairs=2 if self.training else 1)
        a = forward_to(self.backbone, images, self.image_layer)
        z_x = self.head(self.w_x(a))
        z_y = self.embed_responses(responses)
        loss = info_nce(z_x, z_y, self.temperature, self.symmetric)
        if self.regression is not None:
            loss = loss + self.regression_weight * F.mse_loss(self.regression(a), responses)
        return loss
