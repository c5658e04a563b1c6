"""Shared fixtures of the transport tests."""

from __future__ import annotations

import pytest

from tests.support.transport_lab import Pki, make_pki


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A CA with a gateway and a client certificate, one per test module."""
    return make_pki(tmp_path_factory.mktemp("pki"))
