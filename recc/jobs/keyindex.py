"""Map (path, Date) keys to accumulator rows, for files whose rows are not in canonical order.

Each key column is numbered against its own small set of distinct values (50,000 paths and
120 dates in production: cache-friendly hash tables). The pair of numbers then indexes a dense
table of accumulator rows, which is O(1) per row with no big hash table. When the two columns'
distinct counts multiply to far more cells than there are keys (sparse keys), a hash index over
the combined number is used instead.

>>> import pyarrow as pa
>>> index = KeyIndex()
>>> index.rows_of(pa.table({"path": [1, 2, 1], "Date": [5, 5, 5]}))[0].tolist()
[0, 1, 0]
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa

# A dense table may have this many cells per key it indexes (else: hash index).
_DENSE_CELLS_PER_KEY = 4
_DENSE_MIN_CELLS = 1 << 20


def _pow2(n: int) -> int:
    return 1 << max(0, int(n - 1).bit_length())


def _hashable(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    # Temporal keys hash fastest as their integer storage; strings stay objects.
    if pa.types.is_temporal(array.type):
        array = array.view(pa.int32() if array.type.bit_width == 32 else pa.int64())
    return array.to_numpy(zero_copy_only=False)


class KeyIndex:
    """Rows of (path, Date) keys in an accumulator; new keys get the next rows."""

    def __init__(self) -> None:
        self._uniques: list[pd.Index | None] = [None, None]
        # Integer keys of a small range are numbered by a lookup table, no hashing at all.
        self._luts: list[tuple[int, np.ndarray] | None] = [None, None]
        self._counts = [0, 0]
        self._row_codes: list[np.ndarray] = [np.empty(0, np.int64), np.empty(0, np.int64)]
        self._table: np.ndarray | None = None
        self._width = 0  # cells per first-column value in the dense table
        self._hash: pd.Index | None = None
        self.size = 0

    def _codes(self, i: int, column: pa.ChunkedArray | pa.Array) -> np.ndarray:
        values = _hashable(column)
        if self._luts[i] is not None or (self._uniques[i] is None and values.dtype.kind in "iu"):
            codes = self._lut_codes(i, values)
            if codes is not None:
                return codes
        uniques = self._uniques[i]
        codes = None if uniques is None else uniques.get_indexer(values)
        if codes is None or (codes < 0).any():
            new = pd.Index(pd.unique(values if codes is None else values[codes < 0]))
            uniques = new if uniques is None else uniques.append(new)
            self._uniques[i] = uniques
            codes = uniques.get_indexer(values)
        return codes.astype(np.int64)

    def _lut_codes(self, i: int, values: np.ndarray) -> np.ndarray | None:
        """Codes from the lookup table of column ``i``; None once its range is too wide."""
        if not len(values):
            return np.empty(0, np.int64)
        lo, hi = int(values.min()), int(values.max())
        lut = self._luts[i]
        if lut is not None:
            base, table = lut
            lo, hi = min(lo, base), max(hi, base + len(table) - 1)
        span = hi - lo + 1
        if span > max(_DENSE_MIN_CELLS, _DENSE_CELLS_PER_KEY * (self.size + len(values))):
            if lut is not None:  # too wide now: hand the known values to the hash path
                base, table = lut
                known = np.flatnonzero(table >= 0)
                order = np.argsort(table[known])
                self._uniques[i] = pd.Index(known[order] + base)
                self._luts[i] = None
            return None
        if lut is None or lo < lut[0] or span > len(lut[1]):
            grown = np.full(span, -1, np.int64)
            count = 0
            if lut is not None:
                base, table = lut
                grown[base - lo : base - lo + len(table)] = table
                count = int((table >= 0).sum())
            lut = (lo, grown)
            self._luts[i] = lut
        else:
            count = int(self._counts[i])
        base, table = lut
        offsets = values - base
        codes = table[offsets]
        missing = codes < 0
        if missing.any():
            seen = np.zeros(len(table), bool)
            seen[offsets[missing]] = True
            fresh = np.flatnonzero(seen)  # in value order: deterministic numbering
            table[fresh] = count + np.arange(len(fresh))
            count += len(fresh)
            codes = table[offsets]
        self._counts[i] = count
        return codes

    def _layout(self, incoming: int) -> None:
        """Choose dense or hash for the current distinct counts; rebuild if it changed."""
        n0, n1 = (self._counts[i] if self._luts[i] is not None
                  else len(self._uniques[i]) if self._uniques[i] is not None else 0
                  for i in range(2))
        width, height = _pow2(max(n1, 1)), _pow2(max(n0, 1))
        budget = max(_DENSE_MIN_CELLS, _DENSE_CELLS_PER_KEY * (self.size + incoming))
        if width * height <= budget and self._hash is None:
            if self._table is None or width != self._width or height * width > len(self._table):
                self._width = width
                self._table = np.full(width * height, -1, np.int64)
                c0, c1 = self._row_codes
                self._table[c0 * width + c1] = np.arange(self.size)
        elif self._hash is None:
            self._table = None
            c0, c1 = self._row_codes
            self._hash = pd.Index((c0 << 32) | c1)

    def rows_of(self, keys: pa.Table) -> tuple[np.ndarray, np.ndarray]:
        """Accumulator rows of ``keys``, and the indices into ``keys`` of keys new to the index.

        New keys are numbered in the order they first appear, so results are deterministic.
        """
        c0 = self._codes(0, keys.column(0))
        c1 = self._codes(1, keys.column(1))
        self._layout(len(c0))
        if self._table is not None:
            cells = c0 * self._width + c1
            rows = self._table[cells]
        else:
            cells = (c0 << 32) | c1
            rows = self._hash.get_indexer(cells) if len(self._hash) else np.full(len(c0), -1)
        new_at = np.flatnonzero(rows < 0)
        if not len(new_at):
            return rows, new_at
        fresh = cells[new_at]
        if self._table is not None and self.size == 0 and len(fresh) == len(cells) and (
            np.bincount(fresh, minlength=len(self._table)).max() <= 1
        ):
            # The usual first file: every key new and distinct, rows in file order.
            first = np.arange(len(fresh))
            self._table[fresh] = first
            self._row_codes = [c0, c1]
            self.size = len(first)
            return first.copy(), first
        if self._table is not None:
            # Number new keys with the table as scratch: the lowest position writing a cell
            # wins (writes go in reverse), which is each key's first occurrence.
            self._table[fresh[::-1]] = -2 - np.arange(len(fresh))[::-1]
            owner = -2 - self._table[fresh]
            is_first = owner == np.arange(len(fresh))
            rank = np.cumsum(is_first) - 1
            codes = rank[owner]
            firsts = np.flatnonzero(is_first)
            self._table[fresh[firsts]] = self.size + np.arange(len(firsts))
        else:
            codes, uniques = pd.factorize(fresh)
            firsts = np.empty(len(uniques), np.int64)
            firsts[codes[::-1]] = np.arange(len(fresh))[::-1]
            self._hash = self._hash.append(pd.Index(uniques))
        rows[new_at] = self.size + codes
        first = new_at[firsts]
        self._row_codes = [np.concatenate([self._row_codes[0], c0[first]]),
                           np.concatenate([self._row_codes[1], c1[first]])]
        self.size += len(first)
        return rows, first


def has_repeats(keys: pa.Table) -> bool | None:
    """Whether any (path, Date) pair repeats, by marking dense key cells in a bitmap.

    Several times cheaper than building an index; returns None when the key columns are
    not integers (or dates) of a small enough range, and the caller builds the index instead.
    """
    if not keys.num_rows:
        return False
    budget = max(_DENSE_MIN_CELLS, _DENSE_CELLS_PER_KEY * keys.num_rows)
    codes, spans = [], []
    for column in keys.columns:
        values = _hashable(column)
        if values.dtype.kind not in "iu":
            return None
        lo, hi = int(values.min()), int(values.max())
        if hi - lo + 1 > budget:
            return None
        codes.append(values - lo)
        spans.append(hi - lo + 1)
    if spans[0] * spans[1] > budget:
        # Sparse second column (120 dates over 11,000 days): number only the values present.
        present = np.zeros(spans[1], bool)
        present[codes[1]] = True
        codes[1] = (np.cumsum(present) - 1)[codes[1]]
        spans[1] = int(present.sum())
        if spans[0] * spans[1] > budget:
            return None
    cells = codes[0] * spans[1] + codes[1]
    marked = np.zeros(spans[0] * spans[1], bool)
    marked[cells] = True
    return int(np.count_nonzero(marked)) != len(cells)
