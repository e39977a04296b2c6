"""Dagster resources: one typed ``ConfigurableResource`` per external thing, built from one ``Settings``.

What belongs here: ``LedgerResource`` (the state database), ``LakeResource`` (the
lake: its root, its S3 endpoint and lock database, this host's work folder), ``VisionResource`` (Binance Vision and the verified-zip cache),
``RestResource`` (the REST API and its shared weight budget), ``BuildResource``
(the knobs of a day's build: safety lag, forward-fill bound), ``UrlCredentials``
and ``resources_for(settings)``, the one function that makes them all from a
``Settings``. Each builds its client lazily, once per resource instance (Dagster
makes a fresh instance per run). What stays out: reading the environment
(``domain/settings.py``; ``definitions.defs`` calls it once) and how the clients
work (``sources/``, ``lake/``).

Secrets. A persistent Dagster instance (``DAGSTER_HOME``) stores every resource's
config with each run (in the job snapshot, as the config's defaults), and a base or
state URL may carry a user and password (``http://user:pw@mirror``). So the URL
fields hold the URL *redacted* (``http://***@mirror``) and the real one stays in the
process: a ``UrlCredentials`` built from the same ``Settings``, given to each
resource as a ``ResourceDependency`` — a plain Python object, never config, so
never stored. When the client is built, a field that is the redacted form of the
process's URL gets that URL back; a field set to another URL (the launchpad) is
used as it is, and a redacted one the process has no credentials for is an error.

No ``from __future__ import annotations``: Dagster reads ``ResourceDependency``
annotations when a resource is made.
"""

from dataclasses import dataclass, fields
from pathlib import Path

from dagster import ConfigurableResource, ResourceDependency
from pydantic import PrivateAttr

from bml_assets.domain.redaction import REDACTED_USERINFO, redact_url
from bml_assets.domain.settings import URL_FIELDS, Settings
from bml_assets.lake.lake import Lake
from bml_assets.lake.ledger import Ledger
from bml_assets.sources.rest import RestClient
from bml_assets.sources.vision import VisionClient


class UrlCredentials:
    """The process's URLs as ``Settings`` has them, credentials included: looked up by
    their redacted form when a client is built. Never config: its repr shows no URL."""

    def __init__(self, settings: Settings) -> None:
        self._urls = {name: getattr(settings, name) for name in URL_FIELDS}

    def url(self, shown: str, setting: str) -> str:
        """The URL to connect to for the field value ``shown`` of the ``setting`` (e.g.
        ``rest_base_url``): the process's own URL when ``shown`` is its redacted form."""
        own = self._urls[setting]
        if shown == redact_url(own):
            return own
        if REDACTED_USERINFO in shown:
            raise ValueError(
                f"{shown} needs the credentials of BML_{setting.upper()}, and this process has them "
                f"for {redact_url(own)} only: set BML_{setting.upper()} with the user and password"
            )
        return shown

    def __repr__(self) -> str:
        return "UrlCredentials(***)"


class LedgerResource(ConfigurableResource):
    """The ledger (SPEC §7) in the state database at ``state_url`` (redacted)."""

    state_url: str
    credentials: ResourceDependency[UrlCredentials]

    _ledger: Ledger | None = PrivateAttr(default=None)

    def ledger(self) -> Ledger:
        if self._ledger is None:
            self._ledger = Ledger(self.credentials.url(self.state_url, "state_url"))
        return self._ledger


class LakeResource(ConfigurableResource):
    """The lake at ``root`` (a folder, or ``s3://bucket/prefix`` at ``s3_endpoint_url``): its
    store and partition locks (advisory locks in the state database at ``state_url`` for S3)."""

    root: str
    state_url: str
    s3_endpoint_url: str = ""
    # This host's own files (reports); the lake root when it is a local folder.
    work_dir: str
    credentials: ResourceDependency[UrlCredentials]

    _lake: Lake | None = PrivateAttr(default=None)

    def lake(self) -> Lake:
        if self._lake is None:
            self._lake = Lake.at(
                self.root if "://" in self.root else Path(self.root),
                state_url=self.credentials.url(self.state_url, "state_url"),
                s3_endpoint_url=self.credentials.url(self.s3_endpoint_url, "s3_endpoint_url")
                if self.s3_endpoint_url
                else "",
            )
        return self._lake


class VisionResource(ConfigurableResource):
    """Binance Vision at ``base_url`` (redacted), its verified zips cached in ``cache_dir``;
    ``max_csv_bytes``: the most CSV one zip may unpack to (``BML_VISION_MAX_CSV_BYTES``)."""

    base_url: str
    cache_dir: str
    max_csv_bytes: int
    credentials: ResourceDependency[UrlCredentials]

    _client: VisionClient | None = PrivateAttr(default=None)

    def client(self) -> VisionClient:
        if self._client is None:
            self._client = VisionClient(self.credentials.url(self.base_url, "vision_base_url"), Path(self.cache_dir))
        return self._client


class RestResource(ConfigurableResource):
    """The REST API at ``base_url`` (redacted); its weight budget (``weight_budget`` per
    rolling minute) is shared through the state database at ``state_url`` by every process
    leaving by the same ``egress`` (``BML_REST_EGRESS``; empty: by every process)."""

    base_url: str
    state_url: str
    weight_budget: int
    credentials: ResourceDependency[UrlCredentials]
    egress: str = ""

    _client: RestClient | None = PrivateAttr(default=None)

    def client(self) -> RestClient:
        if self._client is None:
            self._client = RestClient(
                self.credentials.url(self.base_url, "rest_base_url"),
                state_url=self.credentials.url(self.state_url, "state_url"),
                weight_budget=self.weight_budget,
                egress=self.egress,
            )
        return self._client


class BuildResource(ConfigurableResource):
    """The knobs of a day's build: ``safety_lag_minutes`` (a minute is committable that long
    after it closed) and ``max_ffill_minutes`` (how far a slow series is carried forward)."""

    safety_lag_minutes: int
    max_ffill_minutes: int


@dataclass(frozen=True)
class Resources:
    """The resources of the code location; their Dagster keys are these field names."""

    ledger: LedgerResource
    lake: LakeResource
    vision: VisionResource
    rest: RestResource
    build: BuildResource

    def by_key(self) -> dict[str, ConfigurableResource]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def resources_for(settings: Settings) -> Resources:
    """Every resource, all from ``settings``: the one place they are made."""
    credentials = UrlCredentials(settings)
    state_url = redact_url(settings.state_url)
    return Resources(
        ledger=LedgerResource(state_url=state_url, credentials=credentials),
        lake=LakeResource(
            root=str(settings.lake_root),
            state_url=state_url,
            s3_endpoint_url=redact_url(settings.s3_endpoint_url) if settings.s3_endpoint_url else "",
            work_dir=str(settings.host_dir),
            credentials=credentials,
        ),
        vision=VisionResource(
            base_url=redact_url(settings.vision_base_url),
            cache_dir=str(settings.cache_dir),
            max_csv_bytes=settings.vision_max_csv_bytes,
            credentials=credentials,
        ),
        rest=RestResource(
            base_url=redact_url(settings.rest_base_url),
            state_url=state_url,
            weight_budget=settings.rest_weight_budget,
            credentials=credentials,
            egress=settings.rest_egress,
        ),
        build=BuildResource(
            safety_lag_minutes=settings.safety_lag_minutes, max_ffill_minutes=settings.max_ffill_minutes
        ),
    )
