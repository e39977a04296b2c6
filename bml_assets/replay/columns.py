"""Exact-unit columns: the replay's value type for exchange numbers, and how they print.

What belongs here: ``CsvColumn`` (exact integer units plus the number of decimals
to print, or plain ints, bools and strings), its typed pyarrow view (``table_of``),
and the text of exact units: ``format_column`` for a whole column, ``fmt_units`` for
one value. The Vision CSV files and the REST JSON both print through these, so a
number reads the same, digit for digit, wherever the replay serves it.

What stays out: what the values are (``market.py``), CSV rows, zips and CHECKSUMs
(``render.py``), JSON answers (``rest/endpoints.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


@dataclass(frozen=True)
class CsvColumn:
    """One CSV column holding exact values.

    ``values`` is an int64 array of integer units when ``decimals`` is set (the
    value is ``units / 10**decimals`` and is printed with exactly that many
    decimals, e.g. units 600001 with 1 decimal → ``60000.1``); otherwise an int64
    array (printed as is), a bool array (printed ``true``/``false``) or an array
    of ``str`` (printed as is, for small files only).
    """

    name: str
    values: np.ndarray
    decimals: int | None = None

    def to_arrow(self) -> pa.Array:
        """The typed value: float64 for decimals (the double nearest the printed
        decimal, so parsing the CSV text gives back the same float), else int64,
        bool or string."""
        v = self.values
        if self.decimals is not None:
            return pa.array(v.astype(np.float64) / (10.0**self.decimals), pa.float64())
        if v.dtype == np.bool_:
            return pa.array(v, pa.bool_())
        if v.dtype.kind in "iu":
            return pa.array(v.astype(np.int64), pa.int64())
        return pa.array(v.tolist(), pa.string())

    def take(self, index: np.ndarray | slice) -> CsvColumn:
        return CsvColumn(self.name, self.values[index], self.decimals)


def table_of(columns: Sequence[CsvColumn]) -> pa.Table:
    """The typed pyarrow table of ``columns`` (names as in the CSV header)."""
    return pa.table({c.name: c.to_arrow() for c in columns})


def _fixed_point(units: np.ndarray, decimals: int) -> pa.Array:
    """Integer units → fixed-point text with ``decimals`` decimals."""
    magnitude = pc.cast(pa.array(np.abs(units)), pa.string())
    if decimals > 0:
        # Left-pad so at least one digit precedes the point ("5" → "0.005").
        padded = pc.utf8_lpad(magnitude, decimals + 1, "0")
        magnitude = pc.binary_join_element_wise(
            pc.utf8_slice_codeunits(padded, 0, -decimals), pc.utf8_slice_codeunits(padded, -decimals), "."
        )
    if (units < 0).any():
        signed = pc.binary_join_element_wise(pa.scalar("-"), magnitude, "")
        magnitude = pc.if_else(pa.array(units < 0), signed, magnitude)
    return magnitude


def format_column(column: CsvColumn) -> pa.Array:
    """The column's CSV text, one string per row."""
    v = column.values
    if column.decimals is not None:
        return _fixed_point(v, column.decimals)
    if v.dtype == np.bool_:
        # A dictionary decode avoids a per-row branch.
        return pa.DictionaryArray.from_arrays(
            pa.array(v.astype(np.int8)), pa.array(["false", "true"])
        ).dictionary_decode()
    if v.dtype.kind in "iu":
        return pc.cast(pa.array(v.astype(np.int64)), pa.string())
    return pa.array(v.tolist(), pa.string())


def fmt_units(units: int, decimals: int) -> str:
    """Integer units as fixed-point text, exactly as ``format_column`` prints them."""
    units = int(units)
    if decimals <= 0:
        return str(units)
    digits = str(abs(units)).rjust(decimals + 1, "0")
    return f"{'-' if units < 0 else ''}{digits[:-decimals]}.{digits[-decimals:]}"
