"""Tuning models and the registry of tuning methods.

A tuning method is one module in this package (a model class with a ``backbone`` attribute, a
``loss(images, responses, subject=None)`` method returning a scalar and a ``from_settings``
class method) plus an entry in :data:`TUNING_METHODS`. The registry names model classes by
import path, so importing this package stays cheap.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cortexcl.errors import InputError

if TYPE_CHECKING:
    from torch import nn


@dataclass(frozen=True)
class TuningMethod:
    """A tuning method: its model class and default optimiser settings (Adam, no scheduler).

    Attributes
    ----------
    name : str
        Registry key.
    model : str
        ``"module:Class"`` import path of the model class.
    multi_subject : bool
        Whether one model serves several subjects (its ``loss`` takes ``subject=``).
    lr, epochs, batch_size, betas, eps, weight_decay
        Adam settings and training length.
    description : str
        One line for help texts and reports.
    """

    name: str
    model: str
    multi_subject: bool
    lr: float
    epochs: int
    batch_size: int = 1024
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.0
    description: str = ""

    def model_class(self) -> type:
        """Import and return the model class."""
        module, _, attribute = self.model.partition(":")
        return getattr(importlib.import_module(module), attribute)

    def build(
        self,
        backbone: nn.Module,
        vertex_counts: Mapping[str, int],
        settings: Any,
        **options: Any,
    ) -> nn.Module:
        """Build the model with the class's ``from_settings``.

        Parameters
        ----------
        backbone : nn.Module
            The image network to tune.
        vertex_counts : mapping of str to int
            ``{subject: n_vertices}``: one subject, or several for a multi-subject method.
        settings : object
            The method's section of the study configuration.
        **options
            Method-specific options, e.g. ``mode`` and ``all_roi_sizes`` of the pooled model.

        Returns
        -------
        nn.Module
            The model, with ``backbone`` and ``loss(images, responses, subject=...)``.
        """
        return self.model_class().from_settings(backbone, vertex_counts, settings, **options)


TUNING_METHODS: dict[str, TuningMethod] = {
    "cl": TuningMethod(
        name="cl",
        model="cortexcl.models.contrastive:ContrastiveModel",
        multi_subject=False,
        lr=1e-4,
        epochs=30,
        description="contrastive (InfoNCE) tuning, one model per subject, hemisphere and ROI",
    ),
    "rt": TuningMethod(
        name="rt",
        model="cortexcl.models.regression:RegressionModel",
        multi_subject=False,
        lr=2.5e-5,
        epochs=75,
        description="regression tuning (MSE of a linear readout), the baseline",
    ),
    "pooled": TuningMethod(
        name="pooled",
        model="cortexcl.models.pooled:PooledContrastiveModel",
        multi_subject=True,
        lr=1e-4,
        epochs=30,
        description="contrastive tuning shared by all subjects, one response map per subject",
    ),
}


def get_tuning_method(name: str) -> TuningMethod:
    """The registered tuning method ``name``; unknown names raise :class:`InputError`."""
    try:
        return TUNING_METHODS[name]
    except KeyError:
        raise InputError(
            f"tuning method: unknown {name!r}; expected one of {', '.join(TUNING_METHODS)}"
        ) from None
