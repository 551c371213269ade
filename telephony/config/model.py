"""The base of every model in the numbers YAML's schema (in its own module so that each
section's module can build on it without importing the whole schema)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class ConfigModel(BaseModel):
    # Typos are errors; frozen so a live call's configuration cannot change under it.
    model_config = ConfigDict(extra="forbid", frozen=True)
