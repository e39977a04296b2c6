"""The hot band's incremental cursor (``DayContext.existing``) over a file of an older schema:
it reads (the absent nullable column NULL), names the committed content as its base, and the
extended table commits on that base in the current schema."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path

import pyarrow as pa

from bml_assets.days.context import DayContext
from bml_assets.days.vision_days import StreamFetcher
from bml_assets.domain.partitions import SymbolDay
from bml_assets.domain.schema import KLINES, schema_hash
from bml_assets.domain.settings import Settings
from bml_assets.lake.commit import commit_table, encode_parquet
from bml_assets.lake.lake import Lake
from bml_assets.lake.ledger import Ledger
from bml_assets.sources.rest import RestClient
from bml_assets.sources.vision import VisionClient
from bml_assets_tests.unit.lake._helpers import DAY, make_table, no_validation

SD = SymbolDay("BTCUSDT", DAY)
REST = {"klines": {"status": "rest", "through": "2024-03-05T10:00:00+00:00"}}


def test_the_cursor_reads_a_file_of_an_older_schema_and_the_update_commits_on_it(tmp_path: Path) -> None:
    root = tmp_path / "lake"
    unreachable = "http://127.0.0.1:9"  # nothing here asks a source
    settings = Settings(lake_root=root, vision_base_url=unreachable, rest_base_url=unreachable)
    lake, ledger = Lake.at(root), Ledger(settings.state_url)
    first = make_table(KLINES, rows=600)
    commit_table(
        first,
        lake=lake,
        ledger=ledger,
        dataset=KLINES,
        symbol="BTCUSDT",
        day=DAY,
        validate=no_validation,
        provenance=REST,
    )
    committed = ledger.get_partition(KLINES, "BTCUSDT", DAY)
    assert committed is not None
    # As a writer from before ``taker_buy_quote_volume`` existed left it.
    old = first.drop_columns(["taker_buy_quote_volume"])
    data = encode_parquet(old)
    Path(lake.location(KLINES, "BTCUSDT", DAY)).write_bytes(data)
    old_hash = hashlib.sha256(data).hexdigest()
    ledger.commit_partition(
        replace(committed, content_hash=old_hash, schema_hash=schema_hash(old.schema)),
        expected_content_hash=committed.content_hash,
    )

    ctx = DayContext(
        ledger=ledger,
        lake=lake,
        vision=StreamFetcher(
            VisionClient(unreachable, settings.cache_dir), ledger, max_csv_bytes=settings.vision_max_csv_bytes
        ),
        rest=RestClient(unreachable, state_url=settings.state_url, weight_budget=settings.rest_weight_budget),
        run_id="cursor-test",
        safety_lag_minutes=settings.safety_lag_minutes,
        max_ffill_minutes=settings.max_ffill_minutes,
    )
    cursor = ctx.existing(KLINES, SD)
    assert cursor is not None and cursor.schema.equals(KLINES.arrow_schema)
    assert cursor.num_rows == 600 and cursor.column("taker_buy_quote_volume").null_count == 600
    assert ctx.bases[(KLINES.name, SD)] == old_hash

    # The next poll appends its new minutes to the cursor and commits on that base.
    new_minutes = make_table(KLINES, rows=610).slice(600)
    result = commit_table(
        pa.concat_tables([cursor, new_minutes]),
        lake=lake,
        ledger=ledger,
        dataset=KLINES,
        symbol="BTCUSDT",
        day=DAY,
        validate=no_validation,
        provenance=REST,
        based_on=ctx.bases[(KLINES.name, SD)],
    )
    assert result.rewritten and result.previous_content_hash == old_hash
    row = ledger.get_partition(KLINES, "BTCUSDT", DAY)
    assert row is not None and row.schema_hash == schema_hash(KLINES.arrow_schema) and row.row_count == 610
    back = lake.read(KLINES, "BTCUSDT", DAY)
    assert back.column("taker_buy_quote_volume").null_count == 600  # the old rows keep what they had
    assert back.slice(600).equals(new_minutes)
