"""The examples in the test platform's pure modules hold (they document its behaviour)."""

from __future__ import annotations

import doctest

import pytest

from recc.kube import auth
from recc.testing import assets, controlplane, pods, podspec, services


@pytest.mark.parametrize(
    "module", [assets, controlplane, pods, podspec, services, auth], ids=lambda m: m.__name__
)
def test_doctests_hold(module) -> None:
    assert doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE).failed == 0
