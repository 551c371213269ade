"""The capture runs, shared by the conformance modules."""

from __future__ import annotations

import asyncio

import pytest

from tests import fast_clock
from tests.conformance.capture import NUMBERS, Wire, capture


@pytest.fixture(scope="session")
def wire(tmp_path_factory: pytest.TempPathFactory) -> Wire:
    """The capture runs, once per session (per xdist worker): offline calls on a 4x clock
    (tests/fast_clock.py), about 4 s."""
    numbers = tmp_path_factory.mktemp("conformance") / "numbers.yaml"
    numbers.write_text(NUMBERS)
    with asyncio.Runner(loop_factory=fast_clock.loop_factory(4)) as runner:
        return runner.run(capture(numbers))
