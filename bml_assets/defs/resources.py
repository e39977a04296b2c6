"""Dagster resources: the one way assets and the IO manager reach configuration,
the lake, the ledger and Binance Vision.

What belongs here: ``BmlResource``, a ``ConfigurableResource`` whose fields
override the ``BML_*`` environment (SPEC §3) and which builds the lake (its store
and locks), the ledger and the Vision client lazily, once per process. What stays
out: the meaning of the settings (``settings.py``) and how the clients work
(``sources/``, ``lake/``, ``storage/``).

The environment is read when a run first asks for ``settings()``, never at
import time; explicit fields (tests, the demo) win over the environment. Explicit
fields are stored with every run by a persistent Dagster instance (its job
snapshot): a base URL with a password belongs in the environment, not in a field.
"""

from __future__ import annotations

import os
from pathlib import Path

from dagster import ConfigurableResource
from pydantic import PrivateAttr

from bml_assets.domain.settings import Settings
from bml_assets.lake.lake import Lake
from bml_assets.lake.ledger import Ledger
from bml_assets.sources.rest import RestClient
from bml_assets.sources.vision import VisionClient


class BmlResource(ConfigurableResource):
    """Settings, lake, ledger and Vision client. Unset fields fall back to ``BML_*``."""

    lake_root: str | None = None
    state_url: str | None = None
    vision_base_url: str | None = None
    rest_base_url: str | None = None
    max_ffill_minutes: int | None = None
    safety_lag_minutes: int | None = None
    vision_max_csv_bytes: int | None = None

    _settings: Settings | None = PrivateAttr(default=None)
    _lake: Lake | None = PrivateAttr(default=None)
    _ledger: Ledger | None = PrivateAttr(default=None)
    _vision: VisionClient | None = PrivateAttr(default=None)
    _rest: RestClient | None = PrivateAttr(default=None)

    def settings(self) -> Settings:
        if self._settings is None:
            base = Settings.from_env()
            changes: dict[str, object] = {}
            if self.lake_root:
                changes["lake_root"] = Path(self.lake_root)
                if not self.state_url and not _state_url_from_env():
                    changes["state_url"] = ""  # re-derive beside the new lake root
            if self.state_url:
                changes["state_url"] = self.state_url
            if self.vision_base_url:
                changes["vision_base_url"] = self.vision_base_url.rstrip("/")
            if self.rest_base_url:
                changes["rest_base_url"] = self.rest_base_url.rstrip("/")
            if self.max_ffill_minutes is not None:
                changes["max_ffill_minutes"] = self.max_ffill_minutes
            if self.safety_lag_minutes is not None:
                changes["safety_lag_minutes"] = self.safety_lag_minutes
            if self.vision_max_csv_bytes is not None:
                changes["vision_max_csv_bytes"] = self.vision_max_csv_bytes
            self._settings = base.with_(**changes) if changes else base
        return self._settings

    def lake(self) -> Lake:
        """The lake at ``lake_root``: its store and partition locks."""
        if self._lake is None:
            self._lake = Lake.at(self.settings().lake_root)
        return self._lake

    def ledger(self) -> Ledger:
        if self._ledger is None:
            self._ledger = Ledger(self.settings().state_url)
        return self._ledger

    def vision(self) -> VisionClient:
        if self._vision is None:
            s = self.settings()
            self._vision = VisionClient(s.vision_base_url, s.cache_dir)
        return self._vision

    def rest(self) -> RestClient:
        """The REST client; its weight budget is shared through the state database."""
        if self._rest is None:
            s = self.settings()
            self._rest = RestClient(s.rest_base_url, state_url=s.state_url, weight_budget=s.rest_weight_budget)
        return self._rest


def _state_url_from_env() -> bool:
    return bool(os.environ.get("BML_STATE_URL", "").strip())
