"""Tests of the head sizes, the ROI size filter and the projection head."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cortexcl.errors import InputError
from cortexcl.models.heads import MIN_ROI_VERTICES, ProjectionHead, check_roi_size, head_dims
from tiny_backbone import seeded


@pytest.mark.parametrize(
    ("n", "expected"),
    [
        (710, (568, 142)),  # docs/method.md §2.1 examples
        (5741, (4592, 1148)),
        (20, (16, 4)),
        (37, (29, 7)),
        (99, (79, 19)),
        (5, (4, 2)),  # z = floor(1.0) = 1 is raised to min_dim
        (2, (2, 2)),  # h = floor(1.6) = 1 is raised to min_dim
        (1, (2, 2)),
    ],
)
def test_head_dims_table(n, expected):
    assert head_dims(n) == expected


def test_head_dims_options():
    assert head_dims(100, h_ratio=1.0, z_ratio=0.25) == (100, 25)
    assert head_dims(3, min_dim=1) == (2, 1)
    assert head_dims(10, h_ratio=0.1, z_ratio=0.5) == (2, 2)  # z is capped at h
    assert head_dims(10, h_ratio=0.5, z_ratio=0.9) == (5, 5)


@pytest.mark.parametrize(
    "kwargs",
    [{"n_vertices": 0}, {"n_vertices": 10, "h_ratio": 0}, {"n_vertices": 10, "min_dim": 0}],
)
def test_head_dims_rejects_bad_input(kwargs):
    with pytest.raises(InputError):
        head_dims(**kwargs)


def test_check_roi_size():
    assert MIN_ROI_VERTICES == 20
    check_roi_size(20)
    check_roi_size(5, minimum=5)
    with pytest.raises(InputError) as info:
        check_roi_size(11, what="subj03 rh FFA-2")
    message = str(info.value)
    assert message == "subj03 rh FFA-2: 11 vertices, fewer than the minimum of 20"
    assert "\n" not in message
    with pytest.raises(InputError, match="0 vertices"):
        check_roi_size(0)


def test_roi_size_filter_on_the_real_roi_table(appendix_a):
    excluded = set()
    for (subject, hemisphere, roi), n in appendix_a.items():
        try:
            check_roi_size(n)
        except InputError:
            excluded.add((subject, hemisphere, roi, n))
    # Non-empty ROIs below 20 vertices (real Algonauts 2023 masks) are excluded with the empty ones.
    tiny = sorted(entry for entry in excluded if entry[3] > 0)
    assert tiny == [(3, "rh", "FFA-2", 11), (6, "lh", "mTL-words", 4), (7, "rh", "FFA-2", 18)]


def test_projection_head_layout():
    head = seeded(lambda: ProjectionHead(12, 3))
    assert list(head.state_dict()) == [
        "fc1.weight",
        "fc1.bias",
        "bn1.weight",
        "bn1.bias",
        "bn1.running_mean",
        "bn1.running_var",
        "bn1.num_batches_tracked",
        "fc2.weight",
        "fc2.bias",
        "bn2.weight",
        "bn2.bias",
        "bn2.running_mean",
        "bn2.running_var",
        "bn2.num_batches_tracked",
        "out.weight",
    ]
    kinds = [type(m) for m in head]
    assert kinds == [
        nn.Linear,
        nn.BatchNorm1d,
        nn.ReLU,
        nn.Linear,
        nn.BatchNorm1d,
        nn.ReLU,
        nn.Linear,
    ]
    assert head.fc1.weight.shape == (12, 12) and head.out.weight.shape == (3, 12)
    assert head.out.bias is None
    x = torch.randn(5, 12, generator=torch.Generator().manual_seed(1))
    assert head(x).shape == (5, 3)


def test_projection_head_matches_its_definition():
    head = seeded(lambda: ProjectionHead(6, 2)).eval()
    x = torch.randn(4, 6, generator=torch.Generator().manual_seed(2))

    def bn(layer, v):
        return (v - layer.running_mean) / torch.sqrt(
            layer.running_var + layer.eps
        ) * layer.weight + layer.bias

    hidden = torch.relu(bn(head.bn1, x @ head.fc1.weight.T + head.fc1.bias))
    hidden = torch.relu(bn(head.bn2, hidden @ head.fc2.weight.T + head.fc2.bias))
    torch.testing.assert_close(head(x), hidden @ head.out.weight.T)


def test_projection_head_rejects_empty_sizes():
    with pytest.raises(InputError):
        ProjectionHead(0, 2)
