"""The capture runs, shared by the conformance modules."""

from __future__ import annotations

import asyncio

import pytest

from tests.conformance.capture import NUMBERS, Wire, capture


@pytest.fixture(scope="session")
def wire(tmp_path_factory: pytest.TempPathFactory) -> Wire:
    """The capture runs, once per session (per xdist worker; about 15 s of offline calls)."""
    numbers = tmp_path_factory.mktemp("conformance") / "numbers.yaml"
    numbers.write_text(NUMBERS)
    return asyncio.run(capture(numbers))
