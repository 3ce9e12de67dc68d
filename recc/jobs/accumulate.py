"""The summing core: add simulation files into one accumulator, key by key.

The sums start in the key order of a *layout* file (the group's first file), whose keys are
decoded only if something needs them. A file is added in the cheapest way that is still exact:

1. **same bytes** - its key columns are byte-for-byte the encoded key columns of the layout
   (same writer, same row order): only ``value`` is decoded and added with ``np.add``.
   Comparing encoded bytes costs a memcmp, a tenth of decoding the keys.
2. **same keys** - decoded keys equal the layout's keys (other encoding, same order): add.
3. **aligned** - any other order or key set: look each key up in a hash index of the
   layout's keys (new keys extend the accumulator) and add with ``np.bincount``, which also
   sums keys repeated within a file.

While every file takes path 1 or 2, the sums stay row for row in the layout's order, so a
partial sum is written as ``value`` alone (naming the layout, see :data:`LAYOUT_OF`) and the
output's key columns can be copied from the layout file's bytes (:mod:`recc.jobs.splice`).

The result matches ``pandas.concat(files).groupby(["path", "Date"]).value.sum()``: rows with
a null key are dropped (and counted, :attr:`Tally.rows_skipped_null_key`), null and NaN values
count as zero (a NaN seen in the sum triggers an exact NaN-skipping pass), and keys repeated
within a file are summed.

>>> acc = Accumulator()
>>> for url in ["/data/a.parquet", "/data/b.parquet"]:  # doctest: +SKIP
...     acc.add(open_source(url))
>>> acc.table(unique=True).num_rows  # doctest: +SKIP
6000000
"""

from __future__ import annotations

import collections
import hashlib
import mmap
import os
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.ipc as ipc
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem

from recc.datastore import DataStore
from recc.errors import RECCError
from recc.jobs.keyindex import KeyIndex, has_repeats
from recc.jobs.pages import PageError, plain_doubles

KEYS = ("path", "Date")
VALUE = "value"
COLUMNS = (*KEYS, VALUE)
UNIQUE_FLAG = b"recc:unique-keys"
# A partial sum that holds only ``value``, row for row in the key order of the layout file
# whose :meth:`Source.layout_id` this is: lanes whose files all share the layout skip keys.
LAYOUT_OF = b"recc:layout-of"
DEFAULT_SCHEMA = pa.schema([("path", pa.int64()), ("Date", pa.date32()), ("value", pa.float64())])


class InputError(RECCError):
    """A file cannot be summed (missing, unreadable, corrupt, wrong columns); names the file."""


class KeyGrowthExceeded(RECCError):
    """The accumulator outgrew the rows its memory reservation was computed for."""


@dataclass
class Tally:
    """How each file was added, and the rows read; the job's report and tests read these."""

    same_bytes: int = 0
    same_keys: int = 0
    aligned: int = 0
    rows: int = 0
    rows_skipped_null_key: int = 0  # rows whose path or Date is null: read, not summed


def load_buffer(store: DataStore, url: str) -> pa.Buffer:
    """The whole file at ``url``: memory-mapped when local, downloaded in one read otherwise."""
    try:
        fs, path = store.locate(url)
        if isinstance(fs, LocalFileSystem):
            return _map(path)
        return pa.py_buffer(fs.cat_file(path))
    except FileNotFoundError as e:
        raise InputError(f"{url}: file not found ({e})") from e
    except (OSError, ValueError) as e:
        raise InputError(f"{url}: cannot read: {e}") from e


def _map(path: str) -> pa.Buffer:
    """Map a local file with every page mapped up front (MAP_POPULATE, where the OS has it).

    Faulting pages in one by one as the keys are compared and the values decoded costs more
    CPU than the comparison itself; populating the mapping in one call makes the key check
    nearly free next to decoding the values.
    """
    populate = getattr(mmap, "MAP_POPULATE", 0)
    if not populate:
        return pa.memory_map(path).read_buffer()
    fd = os.open(path, os.O_RDONLY)
    try:
        if os.fstat(fd).st_size == 0:
            raise ValueError("the file is empty")
        mapped = mmap.mmap(fd, 0, flags=mmap.MAP_SHARED | populate, prot=mmap.PROT_READ)
    finally:
        os.close(fd)
    return pa.py_buffer(mapped)  # the buffer keeps the mapping alive, and unmaps it when freed


class Source:
    """One input file (Parquet, or an Arrow IPC partial sum) held in memory."""

    def __init__(self, url: str, buffer: pa.Buffer):
        self.url = url
        self.buffer = buffer
        try:
            if buffer.size >= 6 and buffer[:6].to_pybytes() == b"ARROW1":
                self._ipc = ipc.open_file(pa.BufferReader(buffer))
                self._pf = None
                schema = self._ipc.schema
                self.num_rows = sum(
                    self._ipc.get_batch(i).num_rows for i in range(self._ipc.num_record_batches)
                )
            else:
                self._ipc = None
                self._pf = pq.ParquetFile(pa.BufferReader(buffer))
                schema = self._pf.schema_arrow
                self.num_rows = self._pf.metadata.num_rows
        except (pa.ArrowInvalid, pa.ArrowException, OSError) as e:
            raise InputError(f"{url}: not a readable Parquet file: {e}") from e
        metadata = schema.metadata or {}
        # A values-only partial sum names the layout file its rows follow (see LAYOUT_OF).
        self.layout_of: bytes | None = metadata.get(LAYOUT_OF) if self._ipc else None
        missing = [c for c in ((VALUE,) if self.layout_of else COLUMNS) if c not in schema.names]
        if missing:
            raise InputError(
                f"{url}: missing column(s) {', '.join(missing)}; each file needs columns "
                f"{', '.join(COLUMNS)} (has {', '.join(schema.names)})"
            )
        # RECC's own partial sums record whether their keys are already free of repeats.
        self.unique_keys = metadata.get(UNIQUE_FLAG) == b"1"
        value_type = schema.field(VALUE).type
        if not (pa.types.is_floating(value_type) or pa.types.is_integer(value_type)):
            raise InputError(f"{url}: column value is {value_type}, expected a number (float64)")
        self.schema = schema

    def _fail(self, e: Exception) -> InputError:
        return InputError(f"{self.url}: corrupt or unreadable data: {e}")

    def layout_id(self) -> bytes:
        """Names this file's key layout for values-only partial sums: a digest of its footer.

        The footer holds every column chunk's offsets, sizes and statistics, so two files
        with the same digest are the same file for any purpose short of rewriting it during
        the job (which no job survives).
        """
        if self._pf is None:
            raise InputError(f"{self.url}: only a Parquet file can be a key layout")
        footer = self.buffer.size - 8 - int.from_bytes(self.buffer[-8:-4].to_pybytes(), "little")
        return hashlib.blake2b(self.buffer[footer:].to_pybytes(), digest_size=16).hexdigest(
            ).encode()

    def key_nulls(self) -> bool | None:
        """Whether a key is null anywhere, from the footer's statistics; None if not recorded."""
        if self._pf is None:
            return None
        md = self._pf.metadata
        names = [md.schema.column(i).name for i in range(md.num_columns)]
        nulls = 0
        for r in range(md.num_row_groups):
            for key in KEYS:
                stats = md.row_group(r).column(names.index(key)).statistics
                if stats is None or not stats.has_null_count:
                    return None
                nulls += stats.null_count
        return nulls > 0

    def signature(self) -> tuple | None:
        """The encoded key columns (zero-copy slices) and their layout, or None if unknown."""
        if self._pf is None:
            return None
        md = self._pf.metadata
        names = [md.schema.column(i).name for i in range(md.num_columns)]
        parts: list = [tuple(str(self.schema.field(k).type) for k in KEYS)]
        for r in range(md.num_row_groups):
            rg = md.row_group(r)
            parts.append(rg.num_rows)
            for key in KEYS:
                col = rg.column(names.index(key))
                start = col.data_page_offset
                if col.has_dictionary_page and 0 < col.dictionary_page_offset < start:
                    start = col.dictionary_page_offset
                if start + col.total_compressed_size > self.buffer.size:
                    return None
                parts.append((col.physical_type, col.compression))
                parts.append(self.buffer.slice(start, col.total_compressed_size))
        return tuple(parts)

    def value_chunks(self) -> Iterator[np.ndarray]:
        """``value`` as float64 arrays in row order (one per row group); nulls become 0."""
        try:
            pages = None
            if self._pf is not None:
                # Straight from the pages where the column allows (see recc.jobs.pages).
                pages = plain_doubles(self.buffer, self._pf.metadata, VALUE)
            if pages is not None:
                yield from pages
            elif self._pf is not None:
                for r in range(self._pf.metadata.num_row_groups):
                    table = self._pf.read_row_group(r, columns=[VALUE], use_threads=False)
                    yield from (_floats(c) for c in table.column(0).chunks)
            else:
                for i in range(self._ipc.num_record_batches):
                    yield _floats(self._ipc.get_batch(i).column(VALUE))
        except (pa.ArrowException, OSError, PageError) as e:
            raise self._fail(e) from e

    def keys(self) -> pa.Table:
        """The decoded key columns (dictionary columns decoded to their values)."""
        try:
            if self._pf is not None:
                table = self._pf.read(columns=list(KEYS), use_threads=False)
            else:
                table = self._ipc.read_all().select(list(KEYS))
        except (pa.ArrowException, OSError) as e:
            raise self._fail(e) from e
        return _plain_keys(table)

    def chunks(self) -> Iterator[tuple[pa.Table, np.ndarray]]:
        """(keys, values) one row group at a time, so aligning needs little memory."""
        try:
            if self._pf is not None:
                for r in range(self._pf.metadata.num_row_groups):
                    table = self._pf.read_row_group(r, columns=list(COLUMNS), use_threads=False)
                    yield _plain_keys(table.select(list(KEYS))), _floats(
                        table.column(VALUE).combine_chunks())
            else:
                for i in range(self._ipc.num_record_batches):
                    batch = self._ipc.get_batch(i)
                    keys = pa.Table.from_batches([batch.select(list(KEYS))])
                    yield _plain_keys(keys), _floats(batch.column(VALUE))
        except (pa.ArrowException, OSError) as e:
            raise self._fail(e) from e


def open_source(store: DataStore, url: str) -> Source:
    """Load and open ``url`` (see :func:`load_buffer`)."""
    return Source(url, load_buffer(store, url))


def _plain_keys(table: pa.Table) -> pa.Table:
    # Chunks stay as read (one per row group): copying them together would cost more than
    # decoding them, and nothing on the fast path needs them contiguous.
    columns = [pc.cast(c, c.type.value_type) if pa.types.is_dictionary(c.type) else c
               for c in table.columns]
    return pa.table(columns, names=list(KEYS))


def _floats(chunk: pa.Array) -> np.ndarray:
    if chunk.null_count:
        chunk = pc.fill_null(chunk, 0)
    if chunk.type != pa.float64():
        chunk = pc.cast(chunk, pa.float64())
    return chunk.to_numpy(zero_copy_only=False)


def _equal_signatures(a: tuple | None, b: tuple | None) -> bool:
    if a is None or b is None or len(a) != len(b):
        return False
    for x, y in zip(a, b, strict=True):
        if isinstance(x, pa.Buffer):
            if not isinstance(y, pa.Buffer) or not x.equals(y):
                return False
        elif x != y:
            return False
    return True


# Key layouts (encoded key columns) this process has already found free of repeated keys.
# Files from one simulator share their layout, so each worker checks it once, not per group.
_UNIQUE_KEY_LAYOUTS: collections.deque[tuple] = collections.deque(maxlen=2)


def _known_unique(signature: tuple | None) -> bool:
    # tuple() copies under the GIL: other task threads may append meanwhile.
    return any(_equal_signatures(signature, known) for known in tuple(_UNIQUE_KEY_LAYOUTS))


def _own(signature: tuple | None) -> tuple | None:
    """A copy of a signature that no longer pins the source file's memory."""
    if signature is None:
        return None
    return tuple(pa.py_buffer(p.to_pybytes()) if isinstance(p, pa.Buffer) else p for p in signature)


@dataclass
class Accumulator:
    """Sums files into per-key totals; see the module docs for how each file is added.

    ``layout`` is the file whose key order the sums start in (by default the first file
    added); its keys are decoded only if some file does not share its encoded keys.
    ``max_rows`` bounds the accumulator (the reservation its task's memory was sized for);
    growing past it raises :class:`KeyGrowthExceeded` rather than using memory nobody
    reserved. ``skip_nan`` adds NaN values as zero (pandas' group-by sum semantics).
    """

    max_rows: int | None = None
    skip_nan: bool = False
    layout: Source | None = None
    tally: Tally = field(default_factory=Tally)
    values: np.ndarray | None = None
    _keys: pa.Table | None = None  # decoded keys: only once something needs them
    # The first _prefix rows of the sums are the layout's rows in its order (0: not so).
    # Files in the layout's encoded order add there directly, even after others were
    # aligned, as long as no repeated key of the layout had to be merged.
    _prefix: int = 0
    _signature: tuple | None = None
    _index: KeyIndex | None = None
    _unique: bool | None = None  # whether the keys are known free of repeats

    @property
    def keys(self) -> pa.Table | None:
        """The keys of the sums, row for row (decoded from the layout file when first asked)."""
        if self._keys is None and self.layout is not None:
            self._keys = self.layout.keys()
        return self._keys

    def add(self, source: Source) -> None:
        """Add every (path, Date, value) row of ``source``."""
        if self.values is None:
            self._begin(self.layout or source)
        self.tally.rows += source.num_rows
        if source.layout_of is not None:
            self._add_partial(source)
            return
        if self._prefix and _equal_signatures(source.signature(), self._signature):
            self._add_in_order(source)
            self.tally.same_bytes += 1
            return
        if self._index is None:
            keys = source.keys()
            if keys.equals(self.keys):
                self._add_in_order(source)
                self.tally.same_keys += 1
                return
            del keys
        self._add_pairs(source.url, source.chunks())
        self.tally.aligned += 1

    def _begin(self, layout: Source) -> None:
        if layout.layout_of is not None:
            raise InputError(f"{layout.url}: a partial sum without its layout file")
        self.layout = layout
        nulls = layout.key_nulls()
        if nulls is None:  # the footer does not say: decode and look
            nulls = any(c.null_count for c in self.keys.columns)
        if nulls:
            # Null-key rows are dropped (as pandas does), so rows no longer line up by
            # position: index from the start.
            self._keys = self.keys.schema.empty_table()
            self.values = np.zeros(0)
            self._index = KeyIndex()
            return
        self._check_rows(layout.num_rows, layout.url)
        self.values = np.zeros(layout.num_rows)
        self._prefix = layout.num_rows
        # The layout outlives the accumulator's use of it, so its slices need no copy.
        self._signature = layout.signature()
        self._unique = True if layout.unique_keys else None

    def _check_rows(self, rows: int, url: str) -> None:
        if self.max_rows is not None and rows > self.max_rows:
            raise KeyGrowthExceeded(
                f"{url}: the sum grew to {rows} distinct keys, more than the {self.max_rows} "
                "rows its memory was reserved for"
            )

    def _add_partial(self, source: Source) -> None:
        """A values-only partial sum: its rows are in the order of the layout file it names."""
        assert self.layout is not None
        if source.layout_of != self.layout.layout_id():
            raise InputError(f"{source.url}: a partial sum over another layout than "
                             f"{self.layout.url}'s")
        if self._prefix:
            self._add_in_order(source)
            self.tally.same_bytes += 1
        else:
            values = np.concatenate(list(source.value_chunks()))
            self._add_pairs(source.url, iter([(self.layout.keys(), values)]))
            self.tally.aligned += 1

    def _add_in_order(self, source: Source) -> None:
        assert self.values is not None
        offset = 0
        for chunk in source.value_chunks():
            target = self.values[offset : offset + len(chunk)]
            if self.skip_nan:
                chunk = np.where(np.isnan(chunk), 0.0, chunk)
            np.add(target, chunk, out=target)
            offset += len(chunk)
        if offset != self._prefix:
            raise InputError(f"{source.url}: value column has {offset} rows, keys have "
                             f"{self._prefix}")

    def _ensure_index(self) -> KeyIndex:
        if self._index is None:
            keys = self.keys
            assert keys is not None and self.values is not None
            self._index = KeyIndex()
            rows, first = self._index.rows_of(keys)
            if len(first) != keys.num_rows:  # keys repeated within the first file
                self.values = np.bincount(rows, weights=self.values, minlength=len(first))
                self._keys = keys.take(pa.array(first))
                self._signature, self._prefix = None, 0  # rows no longer the layout's
            self._unique = True
        return self._index

    def _add_pairs(self, url: str, chunks: Iterator[tuple[pa.Table, np.ndarray]]) -> None:
        """Add (keys, values) chunks in any order, extending the sums with new keys."""
        index = self._ensure_index()
        for keys, values in chunks:
            if any(c.null_count for c in keys.columns):
                valid = pc.and_(pc.is_valid(keys.column(0)), pc.is_valid(keys.column(1)))
                keys = keys.filter(valid)
                self.tally.rows_skipped_null_key += len(values) - keys.num_rows
                values = values[np.asarray(valid)]
            rows, new = index.rows_of(keys)
            assert self._keys is not None and self.values is not None
            if len(new):
                self._check_rows(self._keys.num_rows + len(new), url)
                self._keys = pa.concat_tables([self._keys, keys.take(pa.array(new))])
                self.values = np.concatenate([self.values, np.zeros(len(new))])
            if self.skip_nan:
                values = np.where(np.isnan(values), 0.0, values)
            self.values += np.bincount(rows, weights=values, minlength=len(self.values))

    def has_nan(self) -> bool:
        """Whether a NaN reached the sum (then re-run with ``skip_nan=True``)."""
        return self.values is not None and bool(np.isnan(self.values).any())

    def in_layout_order(self) -> Source | None:
        """The layout file, while row i of the sums is row i of it and no key was added."""
        ordered = self.values is not None and self._prefix == len(self.values) > 0
        return self.layout if ordered else None

    def unique_keys(self) -> bool:
        """Whether no key repeats in the sums; checked once per key layout per process."""
        if self._unique is None:
            if _known_unique(self._signature):
                self._unique = True
            else:
                assert self.keys is not None
                self._unique = has_repeats(self.keys) is False
                if self._unique and self._signature is not None:
                    _UNIQUE_KEY_LAYOUTS.append(_own(self._signature))
        return self._unique

    def table(self, unique: bool, schema: pa.Schema | None = None) -> pa.Table:
        """The sums as a (path, Date, value) table; ``unique`` merges repeated keys first."""
        if self.values is None:
            return (schema or DEFAULT_SCHEMA).empty_table()
        if unique and not self.unique_keys():
            self._ensure_index()
        assert self.keys is not None
        return self.keys.append_column(VALUE, pa.array(self.values, pa.float64()))
