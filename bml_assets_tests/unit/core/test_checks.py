"""SPEC §6 rules on tiny hand-built minute views: each planted fault is found, at its minute."""

from __future__ import annotations

import datetime as dt

import pandas as pd
import pandera.pandas as pdr
import pyarrow as pa
import pytest
from dagster import AssetKey

from bml_assets.defs.checks import check_evaluation
from bml_assets.domain.schema import MINUTE_SCHEMA
from bml_assets.quality import ALL_RULES, REPORTED_RULES, BlockingCheckFailed, Evidence, enforce_blocking, to_frame

DAY = dt.date(2024, 3, 1)
T0 = dt.datetime(2024, 3, 1, tzinfo=dt.UTC)


def view(**overrides: list) -> pa.Table:
    """Three good minutes (00:00-00:02); ``overrides`` replace whole columns."""
    cols: dict[str, list] = {f.name: [None] * 3 for f in MINUTE_SCHEMA}
    cols.update(
        timestamp=[T0 + dt.timedelta(minutes=i) for i in range(3)],
        open=[100.0, 101.0, 102.0],
        high=[101.0, 102.0, 103.0],
        low=[99.0, 100.0, 101.0],
        close=[101.0, 102.0, 102.5],
        vwap_1m=[100.5, 101.0, 102.0],
        volume_btc=[2.0, 1.0, 0.5],
        volume_usdt=[201.0, 101.0, 51.0],
        trade_count=[4, 2, 1],
        taker_buy_vol_btc=[1.0, 1.0, 0.0],
        count_buy_trades=[3, 2, 0],
        count_sell_trades=[1, 0, 1],
        mark_price_open=[100.0, 101.0, 102.0],
        mark_price_close=[101.0, 102.0, 102.5],
        index_price_open=[100.0, 101.0, 102.0],
        index_price_close=[101.0, 102.0, 102.5],
    )
    cols.update(overrides)
    return pa.table(cols, schema=MINUTE_SCHEMA)


def trade_flow(qty: list[float], first: list[int], last: list[int], count: list[int]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "timestamp": pd.to_datetime([T0 + dt.timedelta(minutes=i) for i in range(len(qty))], utc=True),
            "quantity_sum": qty,
            "first_agg_trade_id": first,
            "last_agg_trade_id": last,
            "agg_trade_count": count,
        }
    )


GOOD_FLOW = trade_flow([2.0, 1.0, 0.5], [10, 13, 15], [12, 14, 15], [3, 2, 1])
# metrics "not published": the slow-series rule then tolerates NULL open interest.
PROVENANCE = {
    s: {"status": "vision"}
    for s in (
        "klines",
        "markPriceKlines",
        "indexPriceKlines",
        "premiumIndexKlines",
        "aggTrades",
        "bookTicker",
        "fundingRate",
    )
} | {"metrics": {"status": "not_published"}}


def outcomes(table: pa.Table, flow: pd.DataFrame | None = GOOD_FLOW, closed: bool = False) -> dict:
    ev = Evidence(day=DAY, frame=to_frame(table), closed_day=closed, trade_flow=flow, provenance=PROVENANCE)
    return {r.name: r.run(ev) for r in ALL_RULES}


def failing(table: pa.Table, **kw) -> dict[str, list[str]]:
    return {
        name: sorted({str(m)[11:16] for m in o.failures["minute"]})
        for name, o in outcomes(table, **kw).items()
        if not o.passed
    }


def test_a_good_view_passes_every_rule() -> None:
    assert failing(view()) == {}


def test_hard_null_is_found_at_its_minute() -> None:
    assert failing(view(close=[101.0, None, 102.5])) == {"hard_columns_not_null": ["00:01"]}


def test_ohlc_inconsistency() -> None:
    assert failing(view(high=[101.0, 102.0, 102.2])) == {"ohlc_consistent": ["00:02"]}


def test_duplicate_and_out_of_day_timestamps() -> None:
    dup = view(timestamp=[T0, T0, T0 + dt.timedelta(minutes=2)])
    assert failing(dup)["timestamps_unique_sorted_in_day"] == ["00:00"]
    late = view(timestamp=[T0, T0 + dt.timedelta(minutes=1), T0 + dt.timedelta(days=1)])
    assert "timestamps_unique_sorted_in_day" in failing(late)


def test_reported_rules_find_their_minutes() -> None:
    assert failing(view(vwap_1m=[100.5, 102.5, 102.0])) == {"vwap_within_low_high": ["00:01"]}
    assert failing(view(count_sell_trades=[1, 1, 1])) == {"buy_sell_counts_add_up": ["00:01"]}
    assert failing(view(taker_buy_vol_btc=[1.0, 1.5, 0.0])) == {"taker_buy_within_volume": ["00:01"]}
    # 6 % above close
    assert failing(view(mark_price_close=[101.0, 108.12, 102.5])) == {"mark_index_near_close": ["00:01"]}


def test_agg_quantity_and_id_contiguity_use_the_trade_flow() -> None:
    off = trade_flow([2.0, 1.0000001, 0.5], [10, 13, 15], [12, 14, 15], [3, 2, 1])
    assert failing(view(), flow=off) == {"agg_quantity_equals_volume": ["00:01"]}
    gap = trade_flow([2.0, 1.0, 0.5], [10, 13, 16], [12, 14, 16], [3, 2, 1])
    assert failing(view(), flow=gap) == {"agg_trade_ids_contiguous": ["00:02"]}


def test_closed_day_lists_missing_minutes() -> None:
    found = failing(view(), closed=True)
    assert list(found) == ["closed_day_has_1440_rows"]
    assert outcomes(view(), closed=True)["closed_day_has_1440_rows"].failures.shape[0] == 1437


def test_enforce_blocking_names_rule_and_minute() -> None:
    with pytest.raises(
        BlockingCheckFailed,
        match=r"not committed — blocking rule 'hard_columns_not_null' failed \(1 failure\): "
        r"close = NULL at minute 2024-03-01T00:01:00\+00:00",
    ):
        enforce_blocking(view(close=[101.0, None, 102.5]), DAY, label="minute view BTCUSDT 2024-03-01")


def test_enforce_blocking_rejects_a_wrong_arrow_schema() -> None:
    wrong = view().drop_columns(["premium_index"])
    with pytest.raises(BlockingCheckFailed, match="schema_columns"):
        enforce_blocking(wrong, DAY, label="x")


def test_check_result_carries_offending_minutes_in_metadata() -> None:
    bad = outcomes(view(close=[101.0, None, 102.5]))
    rule = next(r for r in ALL_RULES if r.name == "hard_columns_not_null")
    result = check_evaluation(AssetKey("minute_view"), rule, "2024-03-01|BTCUSDT", bad[rule.name])
    assert result.passed is False
    assert result.partition == "2024-03-01|BTCUSDT"
    assert result.metadata["failure_count"].value == 1
    assert result.metadata["offending_minute_list"].value == ["2024-03-01T00:01:00+00:00"]
    assert "| 2024-03-01T00:01:00+00:00 | close | NULL |" in result.metadata["offending_minutes"].value


def test_slow_series_null_after_the_bound_is_reported_when_metrics_exist() -> None:
    table = view(oi_contracts=[5.0, None, None])
    ev = Evidence(
        day=DAY, frame=to_frame(table), closed_day=False, provenance=PROVENANCE | {"metrics": {"status": "vision"}}
    )
    rule = next(r for r in ALL_RULES if r.name == "slow_series_null_rate")
    outcome = rule.run(ev)
    assert not outcome.passed
    assert outcome.facts["null_rate"]["oi_contracts"] == pytest.approx(2 / 3, abs=1e-6)


def test_promotion_rule_lists_minutes_where_vision_and_rest_disagree() -> None:
    rest = to_frame(view(close=[101.0, 102.0, 102.5]))
    vision = view(close=[101.0, 102.0 * (1 + 1e-12), 102.6])  # rounding at 00:01, a real difference at 00:02
    ev = Evidence(day=DAY, frame=to_frame(vision), closed_day=False, provenance=PROVENANCE, replaced_rest_view=rest)
    rule = next(r for r in ALL_RULES if r.name == "promotion_matches_rest")
    outcome = rule.run(ev)
    assert sorted(outcome.failures["minute"].str[11:16]) == ["00:02"]
    assert list(outcome.failures["value"]) == ["vision 102.6 ≠ rest 102.5"]


def test_reported_rules_of_a_good_view_do_not_call_pandera(monkeypatch: pytest.MonkeyPatch) -> None:
    """pandera costs per call, not per row: it is asked for failure cases only when a rule's
    own mask shows one (the findings above come from it)."""

    def no_pandera(*args: object, **kwargs: object) -> None:
        raise AssertionError("pandera ran for a rule that holds")

    monkeypatch.setattr(pdr.DataFrameSchema, "validate", no_pandera)
    ev = Evidence(day=DAY, frame=to_frame(view()), closed_day=False, trade_flow=GOOD_FLOW, provenance=PROVENANCE)
    assert {r.name: r.run(ev).passed for r in REPORTED_RULES} == {r.name: True for r in REPORTED_RULES}
