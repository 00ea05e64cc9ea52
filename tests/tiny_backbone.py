"""A small stand-in for AlexNet, shared by the model tests.

It maps ``(B, 3, 32, 32)`` images to ``(B, 1000)`` outputs and uses AlexNet's module names
(``features.0`` is the first convolution, ``classifier`` ends in the output layer), so the
tuning models and layer freezing see the same structure at a fraction of the cost.
"""

from __future__ import annotations

import torch
from torch import nn


class TinyAlexNet(nn.Module):
    """Two convolutions, an adaptive pool and a dropout + linear classifier."""

    def __init__(self, dropout: float = 0.5) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 4, kernel_size=3, stride=2),
            nn.ReLU(),
            nn.Conv2d(4, 8, kernel_size=3, stride=2),
            nn.ReLU(),
        )
        self.avgpool = nn.AdaptiveAvgPool2d(2)
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(32, 1000))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


def seeded(factory, seed: int = 0):
    """Call ``factory()`` with the global torch RNG seeded, leaving the global state untouched."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return factory()


def tiny_alexnet(seed: int = 0, dropout: float = 0.5) -> TinyAlexNet:
    """A seeded `TinyAlexNet`."""
    return seeded(lambda: TinyAlexNet(dropout), seed)


def random_pairs(
    batch: int, n_vertices: int, seed: int = 0, size: int = 32
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random images ``(batch, 3, size, size)`` and responses ``(batch, n_vertices)``."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(batch, 3, size, size, generator=generator)
    responses = torch.randn(batch, n_vertices, generator=generator)
    return images, responses
