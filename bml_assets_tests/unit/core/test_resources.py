"""The resources of the code location: every one made from one ``Settings``, each field as
``Settings`` has it, URLs stored redacted while the clients connect with the credentials."""

from __future__ import annotations

import dataclasses
import datetime as dt
from pathlib import Path

import pytest
from dagster._serdes import serialize_value

from bml_assets.definitions import MINUTE_VIEW_JOB, build_definitions
from bml_assets.defs.resources import RestResource, UrlCredentials, resources_for
from bml_assets.domain.settings import Settings

SECRET = "s3cret"


def private(tmp_path: Path) -> Settings:
    return Settings(
        symbols=("BTCUSDT",),
        start_date=dt.date(2024, 1, 1),
        lake_root=tmp_path / "lake",
        vision_base_url=f"http://user:{SECRET}@vision.example:8080",
        rest_base_url=f"https://user:{SECRET}@rest.example",
        safety_lag_minutes=3,
        max_ffill_minutes=7,
        rest_weight_budget=1234,
        vision_max_csv_bytes=5000,
    )


def test_each_resource_holds_its_settings_with_the_urls_redacted(tmp_path: Path) -> None:
    r = resources_for(private(tmp_path))
    root = tmp_path / "lake"
    assert r.lake.root == str(root)
    assert r.ledger.state_url == f"sqlite:///{root.as_posix()}/_state/ledger.sqlite"
    assert (r.vision.base_url, r.vision.cache_dir, r.vision.max_csv_bytes) == (
        "http://***@vision.example:8080",
        str(root / "_cache" / "vision"),
        5000,
    )
    assert (r.rest.base_url, r.rest.state_url, r.rest.weight_budget) == (
        "https://***@rest.example",
        r.ledger.state_url,
        1234,
    )
    assert (r.build.safety_lag_minutes, r.build.max_ffill_minutes) == (3, 7)
    assert set(r.by_key()) == {"ledger", "lake", "vision", "rest", "build"}


def test_the_clients_connect_with_the_credentials_and_the_settings_budget(tmp_path: Path) -> None:
    r = resources_for(private(tmp_path))
    rest = r.rest.client()
    assert rest._request_base_url == f"https://user:{SECRET}@rest.example"
    assert rest.base_url == "https://***@rest.example"  # what it shows
    assert rest.budget.budget == 1234  # not the environment's (issue 9: it fell back to it)
    vision = r.vision.client()
    assert vision.base_url == f"http://user:{SECRET}@vision.example:8080"
    assert vision.cache_dir == tmp_path / "lake" / "_cache" / "vision"
    assert r.ledger.ledger().url == f"sqlite:///{(tmp_path / 'lake').as_posix()}/_state/ledger.sqlite"
    assert r.lake.lake().root == str(tmp_path / "lake")
    assert r.rest.client() is rest  # one client per resource instance


def test_the_rest_client_spends_the_budget_of_its_egress(tmp_path: Path) -> None:
    """BML_REST_EGRESS keys the budget: hosts leaving by different IPs each have one."""
    behind_b = resources_for(dataclasses.replace(private(tmp_path), rest_egress="nat-b"))
    assert behind_b.rest.egress == "nat-b"
    assert behind_b.rest.client().budget.key == "rest.example via nat-b"
    shared = resources_for(private(tmp_path))  # no egress: one budget for every process
    assert shared.rest.egress == ""
    assert shared.rest.client().budget.key == "rest.example"


def test_a_url_set_in_the_field_is_used_as_given_and_a_redacted_one_needs_credentials(tmp_path: Path) -> None:
    credentials = UrlCredentials(private(tmp_path))
    other = RestResource(base_url="http://127.0.0.1:9", state_url="sqlite://", weight_budget=5, credentials=credentials)
    assert other.client()._request_base_url == "http://127.0.0.1:9"
    stranger = RestResource(
        base_url="https://***@elsewhere.example", state_url="sqlite://", weight_budget=5, credentials=credentials
    )
    with pytest.raises(ValueError, match="BML_REST_BASE_URL") as info:
        stranger.client()
    assert SECRET not in str(info.value)
    assert SECRET not in repr(credentials)


def test_the_job_snapshot_holds_no_password(tmp_path: Path) -> None:
    """What a persistent Dagster instance stores with every run: the resources' config."""
    job = build_definitions(private(tmp_path)).resolve_job_def(MINUTE_VIEW_JOB)
    text = serialize_value(job.get_job_snapshot())
    assert SECRET not in text
    assert "https://***@rest.example" in text and "http://***@vision.example:8080" in text
