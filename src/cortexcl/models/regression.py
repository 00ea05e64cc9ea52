"""The regression-tuned (RT) baseline model (docs/method.md §2.4)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from cortexcl.errors import InputError
from cortexcl.models.backbones import feature_width, forward_to
from cortexcl.models.contrastive import check_pairs, single_vertex_count
from cortexcl.models.freezing import freeze_layers


class RegressionModel(nn.Module):
    """Linear readout of ROI responses from the backbone output, trained end to end.

    ``y_hat = W backbone(x) + b`` with ``W, b`` a ``Linear(n_outputs -> n)``; the loss is the
    mean squared error over batch and vertices.

    Parameters
    ----------
    backbone : nn.Module
        Image network mapping images to ``(B, n_outputs)``; the full AlexNet (1000 logits).
    n_vertices : int
        Number of vertices ``n`` of the ROI.
    n_outputs : int
        Width of what the image branch reads (the backbone output, or ``image_layer``).
    image_layer : str, optional
        Module whose flattened output the image branch reads, e.g. the pooled penultimate
        features (`cortexcl.models.backbones.Backbone.penultimate`); default the backbone's
        output logits, as published.

    Attributes
    ----------
    backbone : nn.Module
    readout : nn.Linear
    """

    def __init__(self, backbone: nn.Module, n_vertices: int, n_outputs: int = 1000,
                 image_layer: str | None = None) -> None:
        super().__init__()
        if n_vertices < 1:
            raise InputError(
                f"n_vertices: expected a positive number of vertices, got {n_vertices}"
            )
        self.n_vertices = n_vertices
        self.backbone = backbone
        self.image_layer = image_layer
        self.readout = nn.Linear(n_outputs, n_vertices)

    @classmethod
    def from_settings(
        cls, backbone: nn.Module, vertex_counts: Mapping[str, int], settings: Any,
        image_layer: str | None = None,
    ) -> RegressionModel:
        """Build the model for ``{subject: n_vertices}`` (one subject).

        ``settings`` (the ``tuning.rt`` section of a study) holds the optimiser settings,
        which the trainer reads, and ``frozen``: backbone layers frozen in place. ``image_layer``:
        the module the readout reads (default the output logits).
        """
        freeze_layers(backbone, getattr(settings, "frozen", ()))
        return cls(backbone, single_vertex_count(vertex_counts),
                   feature_width(backbone, image_layer), image_layer)

    def predict(self, images: Tensor) -> Tensor:
        """Predicted responses ``(B, n_vertices)``, in the model's current mode."""
        return self.readout(forward_to(self.backbone, images, self.image_layer))

    def loss(self, images: Tensor, responses: Tensor, subject: str | None = None) -> Tensor:
        """Mean squared error of the predictions, averaged over batch and vertices.

        Parameters
        ----------
        images : Tensor
            ``(B, 3, S, S)`` normalised images.
        responses : Tensor
            ``(B, n_vertices)`` ROI responses.
        subject : str, optional
            Ignored; accepted so that every tuning model is called the same way.

        Returns
        -------
        Tensor
            Scalar loss.
        """
        check_pairs(images, responses, self.n_vertices)
        return F.mse_loss(self.predict(images), responses)
