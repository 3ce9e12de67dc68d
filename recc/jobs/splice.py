"""Write a Parquet file whose key columns are copied byte for byte from another file.

The reference job sums ``value`` over files that share one key layout: the same ``path`` and
``Date`` column chunks, byte for byte, in the same row order. Its output has those same keys
and the summed values. Writing that output with ``pq.write_table`` decodes the keys and
encodes them again, which costs several times more than decoding one input's values: for a
6 M-row group it is the largest fixed cost of the job. The keys are already encoded, so this
module copies their column chunks from a layout file, encodes only the new ``value`` column
(with pyarrow, one row group per layout row group) and writes a footer that describes both.

The footer is edited with fastparquet's thrift objects (``fastparquet.cencoding``) rather
than a hand-written codec. Its writer knows the fields up to number 13 of each struct, which
covers every required field; the newer optional ones it drops (a column's bloom filter
length, size statistics) are either stale here or only hints. Page indexes and bloom filters
point into the layout file, so they are not carried over.

:func:`spliceable` tells from the footer alone whether a layout can be spliced, so a caller
can fall back to the ordinary pyarrow writer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, BinaryIO

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from fastparquet.cencoding import ThriftObject, from_buffer

from recc.errors import RECCError

KEYS = ("path", "Date")
_MAGIC = b"PAR1"
_ENCRYPTED_MAGIC = b"PARE"
_REPEATED = 2  # parquet.thrift FieldRepetitionType.REPEATED
_LAST_CODEC_FIELD = 13  # fastparquet's thrift writer stops at field id 13
# Thrift field ids of structs fastparquet's accessors do not know (parquet.thrift).
_ENCRYPTION_ALGORITHM = 8  # FileMetaData.encryption_algorithm
_CRYPTO_METADATA, _ENCRYPTED_METADATA = 8, 9  # ColumnChunk.crypto_metadata, .encrypted_...


class SpliceError(RECCError, ValueError):
    """The layout file cannot lend its key columns; raised before anything is written."""


@dataclass
class _Layout:
    """A layout file's footer, checked, and where its key columns are."""

    buffer: pa.Buffer
    footer: ThriftObject  # FileMetaData
    key_elements: list[ThriftObject]  # each key's SchemaElement, in `keys` order
    key_leaves: list[int]  # each key's leaf (column chunk) index, in `keys` order


def spliceable(
    layout: pa.Buffer, keys: Sequence[str] = KEYS, value_name: str = "value"
) -> str | None:
    """Why :func:`splice_parquet` would refuse ``layout``, or None if it would succeed.

    Reads the footer only, so it is cheap; it does not know the values, so a wrong number of
    values is still reported by :func:`splice_parquet` alone.

    >>> import io
    >>> sink = io.BytesIO()
    >>> pq.write_table(pa.table({"path": [1, 2], "value": [0.5, 0.5]}), sink)
    >>> spliceable(pa.py_buffer(sink.getvalue()), keys=["path", "Date"])
    "key column 'Date' is not in the layout (its top-level columns: path, value)"
    """
    try:
        _read_layout(layout, keys, value_name)
    except SpliceError as e:
        return str(e)
    return None


def splice_parquet(
    out: BinaryIO,
    layout: pa.Buffer,
    values: np.ndarray,
    keys: Sequence[str] = KEYS,
    value_name: str = "value",
    compression: str = "snappy",
) -> int:
    """Write to ``out`` a Parquet file with columns ``keys`` + ``value_name``.

    The key column chunks are the bytes of the Parquet file held in ``layout`` (copied, never
    decoded), in the layout's row groups; the value column is ``values`` (float64, one per
    layout row, in row order; NaN stays NaN), encoded with ``compression`` and statistics.
    Other columns of the layout are left out. Returns the number of bytes written.

    Raises :class:`SpliceError` before writing anything if the layout cannot be spliced (see
    :func:`spliceable`) or ``values`` does not have one value per layout row.

    >>> import io
    >>> sink = io.BytesIO()
    >>> old = pa.table({"path": [7, 7, 8], "Date": [1, 2, 1], "value": [0.0, 0.0, 0.0]})
    >>> pq.write_table(old, sink)
    >>> out = io.BytesIO()
    >>> splice_parquet(out, pa.py_buffer(sink.getvalue()), np.array([1.5, 2.5, 3.5])) > 0
    True
    >>> pq.read_table(out).to_pydict()
    {'path': [7, 7, 8], 'Date': [1, 2, 1], 'value': [1.5, 2.5, 3.5]}
    """
    spec = _read_layout(layout, keys, value_name)
    values = np.asarray(values, dtype=np.float64)
    rows = spec.footer.num_rows
    if values.ndim != 1 or len(values) != rows:
        raise SpliceError(f"the layout has {rows} rows but {values.shape} values were given")
    value_file = _encode_values(values, [rg.num_rows for rg in spec.footer.row_groups],
                                value_name, compression)
    footer, chunks = _assemble(spec, value_file)
    footer_bytes = bytes(footer.to_bytes())
    written = 0
    for piece in (_MAGIC, *chunks, footer_bytes, len(footer_bytes).to_bytes(4, "little"), _MAGIC):
        out.write(memoryview(piece))
        written += len(piece)
    return written


def _read_layout(layout: pa.Buffer, keys: Sequence[str], value_name: str) -> _Layout:
    """Parse and check the layout's footer; every refusal is a SpliceError naming why."""
    if len(set(keys)) != len(keys) or value_name in keys:
        raise SpliceError(f"keys {list(keys)} and value {value_name!r} must be distinct names")
    size = layout.size
    head, tail = layout.slice(0, 4).to_pybytes(), layout.slice(max(size - 4, 0)).to_pybytes()
    if _ENCRYPTED_MAGIC in (head, tail):
        raise SpliceError("the layout is encrypted (PARE magic)")
    if size < 12 or head != _MAGIC or tail != _MAGIC:
        raise SpliceError(f"the layout is not a Parquet file ({size} bytes, no PAR1 magic)")
    try:
        # pyarrow checks the footer thoroughly; fastparquet's reader trusts its input.
        pq.read_metadata(pa.BufferReader(layout))
    except (pa.ArrowException, OSError) as e:
        raise SpliceError(f"the layout's footer cannot be read: {e}") from e
    footer_start = _footer_start(layout)
    footer = _parse_footer(layout, footer_start)
    if footer.get(_ENCRYPTION_ALGORITHM) is not None:
        raise SpliceError("the layout has encrypted columns")

    columns = _top_level_columns(footer.schema)
    key_elements, key_leaves = [], []
    for key in keys:
        found = columns.get(key)
        if not found:
            raise SpliceError(f"key column {key!r} is not in the layout "
                              f"(its top-level columns: {', '.join(columns)})")
        if len(found) > 1:
            raise SpliceError(f"key column {key!r} appears {len(found)} times in the layout")
        element, leaf = found[0]
        if element.type is None or element.repetition_type == _REPEATED:
            raise SpliceError(f"key column {key!r} is nested or repeated; "
                              "only top-level leaf columns can be spliced")
        if _beyond_codec(element.contents):
            raise SpliceError(f"key column {key!r} has a logical type newer than "
                              "fastparquet's footer codec can write")
        key_elements.append(element)
        key_leaves.append(leaf)

    in_groups = sum(rg.num_rows for rg in footer.row_groups)
    if in_groups != footer.num_rows:
        raise SpliceError(f"the layout's row groups hold {in_groups} rows, "
                          f"its footer says {footer.num_rows}")
    for r, rg in enumerate(footer.row_groups):
        for key, leaf in zip(keys, key_leaves, strict=True):
            _check_chunk(rg.columns[leaf], key, r, footer_start)
    return _Layout(layout, footer, key_elements, key_leaves)


def _footer_start(buffer: pa.Buffer) -> int:
    """Where the footer begins: the file ends with its 4-byte length and the magic."""
    return buffer.size - 8 - int.from_bytes(buffer.slice(buffer.size - 8, 4).to_pybytes(), "little")


def _parse_footer(buffer: pa.Buffer, footer_start: int) -> ThriftObject:
    footer = np.frombuffer(buffer, dtype=np.uint8, count=buffer.size - 8 - footer_start,
                           offset=footer_start)
    return from_buffer(footer, "FileMetaData")


def _top_level_columns(schema: list[ThriftObject]) -> dict[str, list[tuple[ThriftObject, int]]]:
    """Each top-level field's element and the index of its first leaf, by name.

    The schema is the tree flattened depth first, so a field's subtree is the run of
    elements until its children (and theirs) are used up; leaves are the column chunks.
    """
    columns: dict[str, list[tuple[ThriftObject, int]]] = {}
    i, leaf = 1, 0
    for _ in range(schema[0].num_children or 0):
        element, first_leaf, pending = schema[i], leaf, 1
        while pending:
            node = schema[i]
            i, pending = i + 1, pending - 1
            if node.type is None:
                pending += node.num_children or 0
            else:
                leaf += 1
        columns.setdefault(element.name.decode(), []).append((element, first_leaf))
    return columns


def _beyond_codec(value: Any) -> bool:
    """True if a thrift struct holds a field fastparquet's writer would silently drop."""
    if isinstance(value, dict):
        return any(isinstance(k, int) and (k > _LAST_CODEC_FIELD or _beyond_codec(v))
                   for k, v in value.items())
    return isinstance(value, list) and any(_beyond_codec(v) for v in value)


def _check_chunk(chunk: ThriftObject, key: str, row_group: int, footer_start: int) -> None:
    where = f"key column {key!r} in row group {row_group}"
    if chunk.file_path is not None:
        elsewhere = chunk.file_path.decode(errors="replace")
        raise SpliceError(f"{where} is stored in another file ({elsewhere!r})")
    if chunk.get(_CRYPTO_METADATA) is not None or chunk.get(_ENCRYPTED_METADATA) is not None:
        raise SpliceError(f"{where} is encrypted")
    meta = chunk.meta_data
    if meta is None or meta.path_in_schema != [key]:
        raise SpliceError(f"{where} has no metadata for that column")
    start, length = _chunk_range(meta)
    if start < len(_MAGIC) or start + length > footer_start:
        raise SpliceError(f"{where} claims bytes {start}..{start + length}, outside the data")


def _chunk_range(meta: ThriftObject) -> tuple[int, int]:
    """Where a column chunk starts (its dictionary page, if any) and how long it is.

    An offset of 0 means "no such page": some writers put 0 for a missing dictionary, and
    pyarrow does for the data page of an empty chunk, which holds only a dictionary page.
    """
    pages = [offset for offset in (meta.dictionary_page_offset, meta.data_page_offset) if offset]
    return min(pages, default=0), meta.total_compressed_size


def _encode_values(values: np.ndarray, row_counts: list[int], name: str,
                   compression: str) -> tuple[pa.Buffer, ThriftObject]:
    """The values as an in-memory Parquet file with the layout's row-group boundaries."""
    schema = pa.schema([pa.field(name, pa.float64())])
    sink = pa.BufferOutputStream()
    with pq.ParquetWriter(sink, schema, compression=compression, use_dictionary=False,
                          write_statistics=True, store_schema=False) as writer:
        start = 0
        for count in row_counts:
            part = pa.table([pa.array(values[start:start + count])], schema=schema)
            writer.write_table(part, row_group_size=max(count, 1))
            start += count
    buffer = sink.getvalue()
    footer = _parse_footer(buffer, _footer_start(buffer))
    made = [rg.num_rows for rg in footer.row_groups]
    if made != row_counts:  # pyarrow split or merged row groups: splicing would misalign rows
        raise SpliceError(f"pyarrow wrote value row groups of {made} rows, not {row_counts}")
    return buffer, footer


def _assemble(
    spec: _Layout, value_file: tuple[pa.Buffer, ThriftObject]
) -> tuple[ThriftObject, list[pa.Buffer]]:
    """The new footer and the column chunks to write after the leading magic, in order."""
    layout, (value_buffer, values) = spec.footer, value_file
    position, chunks, row_groups = len(_MAGIC), [], []
    for rg, value_rg in zip(layout.row_groups, values.row_groups, strict=True):
        sources = [(spec.buffer, rg.columns[leaf]) for leaf in spec.key_leaves]
        sources.append((value_buffer, value_rg.columns[0]))
        first, columns = position, []
        for buffer, chunk in sources:
            start, length = _chunk_range(chunk.meta_data)
            chunks.append(buffer.slice(start, length))
            _move(chunk, position - start)
            columns.append(chunk)
            position += length
        row_groups.append(ThriftObject.from_fields(
            "RowGroup", columns=columns, num_rows=rg.num_rows, file_offset=first,
            total_byte_size=sum(c.meta_data.total_uncompressed_size for c in columns),
            total_compressed_size=position - first))

    root = layout.schema[0]
    schema = [ThriftObject.from_fields("SchemaElement", i32=True, name=root.name,
                                       repetition_type=root.repetition_type,
                                       num_children=len(spec.key_elements) + 1)]
    schema += [*spec.key_elements, values.schema[1]]
    # Column orders are one per leaf or none. A layout that declares none gets none: declaring
    # orders now could change how readers interpret its key statistics.
    orders = None
    if layout.column_orders and values.column_orders:
        orders = [layout.column_orders[leaf] for leaf in spec.key_leaves]
        orders.append(values.column_orders[0])
    footer = ThriftObject.from_fields(
        "FileMetaData", i32list=[1], version=max(layout.version, values.version), schema=schema,
        num_rows=layout.num_rows, row_groups=row_groups, created_by=values.created_by,
        column_orders=orders)
    return footer, chunks


def _move(chunk: ThriftObject, delta: int) -> None:
    """Shift a column chunk's offsets by ``delta`` and drop references into its old file."""
    meta = chunk.meta_data
    # 0 means "none" (see _chunk_range) and stays so; file_offset, deprecated, is 0 or a
    # position in the chunk depending on the writer, so it moves with the chunk too.
    for field in ("data_page_offset", "dictionary_page_offset", "index_page_offset"):
        if getattr(meta, field):
            setattr(meta, field, getattr(meta, field) + delta)
    if chunk.file_offset:
        chunk.file_offset += delta
    meta.bloom_filter_offset = None
    for index in ("offset_index_offset", "offset_index_length",
                  "column_index_offset", "column_index_length"):
        setattr(chunk, index, None)
