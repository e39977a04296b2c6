"""CSV, zip and CHECKSUM rendering of the replay server (bml_assets.replay.columns, bml_assets.replay.render)."""

from __future__ import annotations

import hashlib
import io
import re
import zipfile
from datetime import datetime

import numpy as np
import pytest

from bml_assets.replay import render
from bml_assets.replay.columns import CsvColumn, table_of
from bml_assets.replay.render import checksum_text, csv_bytes, zip_bytes, zip_csv

MODIFIED = datetime(2024, 1, 3, 7, 26)


def _columns() -> tuple[CsvColumn, ...]:
    return (
        CsvColumn("id", np.array([1, 2, 30000000000], dtype=np.int64)),
        CsvColumn("price", np.array([600001, 5, 0], dtype=np.int64), 1),
        CsvColumn("qty", np.array([1, 1500, 123456], dtype=np.int64), 3),
        CsvColumn("rate", np.array([-3449, 577, 0], dtype=np.int64), 8),
        CsvColumn("flag", np.array([True, False, True])),
    )


EXPECTED_BODY = (
    b"1,60000.1,0.001,-0.00003449,true\n2,0.5,1.500,0.00000577,false\n30000000000,0.0,123.456,0.00000000,true\n"
)


def test_csv_text_is_fixed_point_with_lf_and_trailing_newline() -> None:
    assert csv_bytes(_columns(), header=False) == EXPECTED_BODY
    assert csv_bytes(_columns(), header=True) == b"id,price,qty,rate,flag\n" + EXPECTED_BODY


def test_zero_decimals_and_text_columns() -> None:
    columns = (
        CsvColumn("a", np.array([0, -7], dtype=np.int64), 0),
        CsvColumn("b", np.array(["2024-01-01 00:05:00", "x"], dtype=object)),
    )
    assert csv_bytes(columns, header=False) == b"0,2024-01-01 00:05:00\n-7,x\n"


def test_typed_values_equal_the_parsed_text() -> None:
    table = table_of(_columns())
    assert table.column_names == ["id", "price", "qty", "rate", "flag"]
    assert table.column("price").to_pylist() == [60000.1, 0.5, 0.0]
    assert table.column("rate").to_pylist() == [float("-0.00003449"), float("0.00000577"), 0.0]
    assert table.column("id").type == "int64" and table.column("flag").to_pylist() == [True, False, True]
    lines = EXPECTED_BODY.decode().splitlines()
    assert [float(line.split(",")[2]) for line in lines] == table.column("qty").to_pylist()


def _only_member(data: bytes) -> tuple[zipfile.ZipInfo, bytes]:
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        assert zf.testzip() is None
        (info,) = zf.infolist()
        return info, zf.read(info)


def test_zip_has_one_deflated_member_named_like_the_zip() -> None:
    data = zip_csv("BTCUSDT-1m-2024-01-02.csv", _columns(), header=True, modified=MODIFIED)
    info, content = _only_member(data)
    assert info.filename == "BTCUSDT-1m-2024-01-02.csv"
    assert info.compress_type == zipfile.ZIP_DEFLATED
    assert info.date_time == (2024, 1, 3, 7, 26, 0)
    assert content == b"id,price,qty,rate,flag\n" + EXPECTED_BODY


def test_zip_made_of_many_chunks_is_one_valid_stream(monkeypatch: pytest.MonkeyPatch) -> None:
    n = 1000
    columns = (
        CsvColumn("i", np.arange(n, dtype=np.int64)),
        CsvColumn("v", np.arange(n, dtype=np.int64) * 7, 2),
    )
    whole = csv_bytes(columns, header=True)
    monkeypatch.setattr(render, "CHUNK_ROWS", 37)
    data = zip_csv("x.csv", columns, header=True, modified=MODIFIED)
    assert _only_member(data)[1] == whole
    assert whole.count(b"\n") == n + 1 and whole.endswith(b"999,69.93\n")
    # Same input, same bytes: the chunked pool must not make output order-dependent.
    assert zip_csv("x.csv", columns, header=True, modified=MODIFIED) == data


def test_empty_file_with_header_zips() -> None:
    columns = (CsvColumn("a", np.zeros(0, dtype=np.int64)), CsvColumn("b", np.zeros(0, dtype=np.int64), 2))
    assert _only_member(zip_csv("e.csv", columns, header=True, modified=MODIFIED))[1] == b"a,b\n"


def test_zip_bytes_wraps_existing_csv() -> None:
    raw = b"open_time,open\n1,2.0\n" * 1000
    info, content = _only_member(zip_bytes("k.csv", raw, modified=MODIFIED))
    assert info.filename == "k.csv" and content == raw


def test_checksum_line_format() -> None:
    text = checksum_text("BTCUSDT-1m-2024-01-02.zip", b"abc")
    assert re.fullmatch(r"[0-9a-f]{64}  BTCUSDT-1m-2024-01-02\.zip\n", text)
    assert text.split()[0] == hashlib.sha256(b"abc").hexdigest()
    # sha256("abc"), written out.
    assert text.startswith("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad  ")
