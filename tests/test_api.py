"""The public API of the package."""

from __future__ import annotations

import pytest


def test_public_api_resolves():
    import cortexcl

    for name in cortexcl.__all__:
        assert getattr(cortexcl, name) is not None
    with pytest.raises(AttributeError):
        _ = cortexcl.no_such_name
