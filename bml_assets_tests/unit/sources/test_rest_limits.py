"""The exchange's REST weights and limits (SPEC §4, REST)."""

from __future__ import annotations

import pytest

from bml_assets.domain.streams import KLINE_STREAMS
from bml_assets.sources import rest_limits as limits


@pytest.mark.parametrize(
    ("limit", "weight"),
    [(1, 1), (99, 1), (100, 2), (499, 2), (500, 5), (1000, 5), (1001, 10), (1500, 10), (None, 5)],
)
def test_kline_weight_follows_the_limit(limit: int | None, weight: int) -> None:
    assert limits.kline_weight(limit) == weight
    for path in limits.KLINE_PATHS.values():
        params = {} if limit is None else {"limit": str(limit)}
        assert limits.weight_of(path, params) == weight


def test_fixed_weights() -> None:
    assert limits.weight_of(limits.AGG_TRADES_PATH, {"limit": 1000}) == 20
    assert limits.weight_of(limits.PREMIUM_INDEX_PATH) == 1
    assert limits.weight_of(limits.OPEN_INTEREST_PATH) == 1
    assert limits.weight_of(limits.BOOK_TICKER_PATH) == 2
    assert limits.weight_of(limits.EXCHANGE_INFO_PATH) == 1
    assert limits.weight_of(limits.FUNDING_RATE_PATH) == 1
    assert all(limits.weight_of(p) == 1 for p in limits.HIST_PATHS)


def test_unknown_path_has_no_weight() -> None:
    with pytest.raises(KeyError, match="no request weight known"):
        limits.weight_of("/fapi/v1/ticker/price")


@pytest.mark.parametrize(
    ("limit", "weight"), [(5, 2), (10, 2), (20, 2), (50, 2), (100, 5), (500, 10), (1000, 20), (None, 10)]
)
def test_depth_weight_follows_the_limit(limit: int | None, weight: int) -> None:
    params = {} if limit is None else {"limit": str(limit)}
    assert limits.weight_of(limits.DEPTH_PATH, params) == weight


def test_a_depth_limit_the_exchange_refuses_has_no_weight() -> None:
    with pytest.raises(ValueError, match="depth limit 200 is not one of"):
        limits.weight_of(limits.DEPTH_PATH, {"limit": 200})


def test_every_kline_stream_has_a_path_and_index_uses_pair() -> None:
    assert set(limits.KLINE_PATHS) == set(KLINE_STREAMS) == set(limits.KLINE_SYMBOL_PARAM)
    assert {s for s, p in limits.KLINE_SYMBOL_PARAM.items() if p == "pair"} == {"indexPriceKlines"}


def test_limits_and_windows() -> None:
    assert (limits.KLINES_MAX_LIMIT, limits.AGG_TRADES_MAX_LIMIT) == (1500, 1000)
    assert (limits.FUNDING_RATE_MAX_LIMIT, limits.HIST_MAX_LIMIT) == (1000, 500)
    assert limits.AGG_TRADES_MAX_WINDOW_MS < 3_600_000
    assert limits.HIST_MAX_AGE_MS == 30 * 86_400_000
    assert (limits.FUNDING_RATE_REQUESTS_PER_WINDOW, limits.FUNDING_RATE_WINDOW_S) == (500, 300.0)
