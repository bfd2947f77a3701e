"""SettingsResource: the platform's Settings, parsed once, handed to assets as a resource."""

from __future__ import annotations

import functools

import dagster as dg
from pydantic import Field

from pixelpipe.settings import Settings


class SettingsResource(dg.ConfigurableResource):
    """Every setting the definitions were built with; `get()` returns them as Settings."""

    settings_json: str = Field(description="Settings.model_dump_json() of the definitions")

    @classmethod
    def from_settings(cls, settings: Settings) -> SettingsResource:
        return cls(settings_json=settings.model_dump_json())

    def get(self) -> Settings:
        """The Settings (parsed on first use, then shared; treat it as read-only)."""
        return _parse(self.settings_json)


@functools.lru_cache(maxsize=8)
def _parse(settings_json: str) -> Settings:
    # model_validate_json, not Settings(...): the values are the ones given, the environment
    # is not read again
    return Settings.model_validate_json(settings_json)
