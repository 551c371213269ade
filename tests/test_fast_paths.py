"""The per-frame shortcuts are active with the library versions pyproject allows, and the
start-up log says which are (an upgrade that turns one off shows here, not only in a bench)."""

from __future__ import annotations

import logging

import pytest

from routes.fast_paths import fast_paths, log_fast_paths


async def test_every_fast_path_is_active_with_the_pinned_libraries() -> None:
    active = fast_paths()
    assert active.pop("uvloop") in (True, False)  # the test loop's choice, not the library's
    assert active == dict.fromkeys(active, True), active


async def test_start_up_names_the_fast_paths(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="routes.fast_paths"):
        log_fast_paths()
    [line] = [r.getMessage() for r in caplog.records if r.getMessage().startswith("fast paths on")]
    assert "sansio-media-socket" in line and "frame-reader" in line and "websockets " in line
