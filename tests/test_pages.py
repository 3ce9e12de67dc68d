"""plain_doubles: a float64 column read page by page from the file's bytes, checked against pyarrow.

Every file here is written by pyarrow (or by recc's own generator) in memory; corrupt files are
good files with bytes overwritten in place, so the footer still parses and only the pages lie.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recc.datastore import DataStore
from recc.jobs.accumulate import InputError, open_source
from recc.jobs.generate import generate
from recc.jobs.pages import PageError, _fields, _PageHeader, plain_doubles

ROWS = 3000
# Outcomes a corrupt page may have: one of these raised, or the right number of values.
# pyarrow's codecs raise plain OSError for corrupt compressed data (not an ArrowException);
# Source.value_chunks catches all three.
CORRUPT = (PageError, pa.ArrowException, OSError)
# Small pages need small write batches: pyarrow checks the page size once per batch.
PAGES = {"data_page_size": 1024, "write_batch_size": 64}


def _doubles(rows: int = ROWS, seed: int = 0) -> np.ndarray:
    """Random doubles with every awkward value a simulation can emit, bits and all."""
    values = np.random.default_rng(seed).normal(size=rows) * 1e3
    payload_nan = np.array([0x7FF8_0000_DEAD_BEEF], np.uint64).view(np.float64)[0]
    specials = np.array([np.nan, payload_nan, -0.0, 0.0, np.inf, -np.inf, 5e-324, -2.5e-310,
                         2.2250738585e-308, np.finfo(np.float64).max, np.finfo(np.float64).tiny])
    count = min(rows, len(specials))
    values[:count] = specials[:count]
    if rows >= 2 * len(specials):
        values[-len(specials):] = specials[::-1]
    return values


def _table(values: np.ndarray, nullable: bool = True, extra: bool = True) -> pa.Table:
    """``value`` between key columns like the job's and a trailing column after it."""
    field = pa.field("value", pa.float64(), nullable=nullable)
    if not extra:
        return pa.Table.from_arrays([pa.array(values)], schema=pa.schema([field]))
    rows = len(values)
    order = np.random.default_rng(rows).permutation(rows)
    dates = np.datetime64("2027-01-01") + (order % 12 * 31).astype("timedelta64[D]")
    schema = pa.schema([("path", pa.string()), ("Date", pa.date32()), field,
                        ("weight", pa.int64())])
    return pa.Table.from_arrays(
        [pa.array([f"sim/{p:04d}" for p in order // 12]), pa.array(dates), pa.array(values),
         pa.array(order)], schema=schema)


def _write(table: pa.Table, **options) -> pa.Buffer:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, **options)
    return sink.getvalue()


def _metadata(buffer: pa.Buffer) -> pq.FileMetaData:
    return pq.ParquetFile(pa.BufferReader(buffer)).metadata


def _expected(buffer: pa.Buffer, name: str = "value") -> np.ndarray:
    return pq.read_table(pa.BufferReader(buffer), columns=[name])[name].to_numpy()


def _read(buffer: pa.Buffer, name: str = "value") -> list[np.ndarray]:
    pages = plain_doubles(buffer, _metadata(buffer), name)
    assert pages is not None, "the column should qualify for the page path"
    return list(pages)


def _assert_same_bits(arrays: list[np.ndarray], expected: np.ndarray) -> None:
    got = np.concatenate(arrays) if arrays else np.empty(0, np.float64)
    assert got.dtype == np.float64
    assert np.array_equal(got, expected, equal_nan=True)
    # Bit for bit: -0.0 against 0.0 and NaN payloads too.
    assert np.array_equal(got.view(np.uint64), expected.view(np.uint64))


def _value_chunks(metadata: pq.FileMetaData, name: str = "value") -> list[tuple[int, int]]:
    """(start, size) of each row group's chunk of column ``name``."""
    leaf = [metadata.schema.column(i).path for i in range(metadata.num_columns)].index(name)
    return [(metadata.row_group(r).column(leaf).data_page_offset,
             metadata.row_group(r).column(leaf).total_compressed_size)
            for r in range(metadata.num_row_groups)]


def _headers(buffer: pa.Buffer) -> list[tuple[int, int]]:
    """(start, end) in the file of every page header of ``value``, found by walking the chunks."""
    found = []
    for start, size in _value_chunks(_metadata(buffer)):
        chunk = buffer.slice(start, size)
        position = 0
        while position < size:
            header, end = _PageHeader.read(chunk, position)
            found.append((start + position, start + end))
            position = end + header.compressed_size
        assert position == size
    return found


def _overwrite(buffer: pa.Buffer, start: int, replacement: bytes) -> pa.Buffer:
    data = bytearray(buffer.to_pybytes())
    data[start:start + len(replacement)] = replacement
    return pa.py_buffer(bytes(data))


def _survives(buffer: pa.Buffer, metadata: pq.FileMetaData) -> str:
    """Read a possibly corrupt column: an error it raises, or the values at the right length."""
    try:
        pages = plain_doubles(buffer, metadata)
        assert pages is not None
        total = sum(len(a) for a in pages)
    except CORRUPT as e:
        return type(e).__name__
    assert total == metadata.num_rows, "wrong-length data yielded without an error"
    return "read"


# --- The page path gives pyarrow's values, bit for bit ------------------------------------------

CODECS = ["NONE", "SNAPPY", "ZSTD"]  # gzip, brotli and lz4 are left to pyarrow (see FALLBACKS)


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("version", ["1.0", "2.0"])
@pytest.mark.parametrize("nullable", [False, True], ids=["required", "nullable"])
def test_matches_pyarrow_many_pages_and_row_groups(codec, version, nullable):
    buffer = _write(_table(_doubles(), nullable), compression=codec, data_page_version=version,
                    row_group_size=1000, **PAGES, use_dictionary=["path", "Date"])
    metadata = _metadata(buffer)
    assert metadata.num_row_groups == 3
    assert metadata.row_group(0).column(2).compression == ("UNCOMPRESSED" if codec == "NONE"
                                                            else codec)
    arrays = _read(buffer)
    assert len(arrays) > 3 * metadata.num_row_groups  # several pages in every chunk
    _assert_same_bits(arrays, _expected(buffer))


@pytest.mark.parametrize("options", [
    {"write_page_index": True},
    {"write_page_checksum": True},
    {"write_page_checksum": True, "data_page_version": "2.0", "compression": "ZSTD"},
    {"use_dictionary": False, "compression": "ZSTD", "row_group_size": 7},
    {"store_schema": False, "write_statistics": ["path"]},
], ids=["page-index", "checksum-v1", "checksum-v2-zstd", "tiny-row-groups", "key-stats-only"])
def test_matches_pyarrow_with_writer_options(options):
    values = _doubles(500)
    buffer = _write(_table(values, nullable=True), **PAGES,
                    **{"use_dictionary": ["path", "Date"], **options})
    if "write_statistics" in options:  # value has no statistics, so nullable would fall back
        assert plain_doubles(buffer, _metadata(buffer)) is None
        buffer = _write(_table(values, nullable=False), use_dictionary=["path", "Date"],
                        **PAGES, **options)
    _assert_same_bits(_read(buffer), values)


def test_checksums_are_in_the_headers_read():
    plain = _write(_table(_doubles(200), extra=False), use_dictionary=False)
    checked = _write(_table(_doubles(200), extra=False), use_dictionary=False,
                     write_page_checksum=True)
    (start, end), = _headers(checked)
    fields, used = _fields(checked.slice(start, end - start).to_pybytes())
    assert used == end - start and (4,) in fields  # crc is field 4 of PageHeader
    (start, end), = _headers(plain)
    assert (4,) not in _fields(plain.slice(start, end - start).to_pybytes())[0]


def test_required_column_without_statistics_qualifies():
    values = _doubles(2000)
    buffer = _write(_table(values, nullable=False), write_statistics=False, **PAGES,
                    use_dictionary=["path", "Date"])
    assert _metadata(buffer).row_group(0).column(2).statistics is None
    _assert_same_bits(_read(buffer), values)


def test_headers_agree_with_the_footer():
    """The reader's view of each header adds up to the footer's chunk sizes and row counts."""
    buffer = _write(_table(_doubles(), nullable=True), compression="SNAPPY", row_group_size=1000,
                    use_dictionary=["path", "Date"], **PAGES)
    metadata = _metadata(buffer)
    headers = _headers(buffer)
    values = 0
    for start, _ in headers:
        header, _ = _PageHeader.read(buffer, start)
        assert header.type == 0 and header.encoding == 0 and header.level_encoding == 3
        values += header.num_values
    assert values == metadata.num_rows
    assert len(headers) == len(_read(buffer))


def test_file_without_row_groups_yields_nothing():
    sink = pa.BufferOutputStream()
    pq.ParquetWriter(sink, _table(_doubles(1)).schema, use_dictionary=False).close()
    buffer = sink.getvalue()
    assert _metadata(buffer).num_row_groups == 0
    assert _read(buffer) == []


def test_empty_nullable_table_falls_back_or_matches():
    buffer = _write(_table(_doubles(0), nullable=True), use_dictionary=False)
    assert _metadata(buffer).num_row_groups == 1
    pages = plain_doubles(buffer, _metadata(buffer))
    assert pages is None or list(pages) == []
    assert len(_expected(buffer)) == 0


@pytest.mark.parametrize("version", ["1.0", "2.0"])
def test_empty_required_table_yields_nothing(version):
    buffer = _write(_table(_doubles(0), nullable=False), use_dictionary=False,
                    data_page_version=version)
    assert _metadata(buffer).num_row_groups == 1 and len(_expected(buffer)) == 0
    assert _read(buffer) == []


def test_lz4_falls_back():
    """pyarrow names both LZ4 framings (Hadoop's and raw) "LZ4", so pages cannot tell them
    apart from the footer: LZ4 columns are left to pyarrow."""
    buffer = _write(_table(_doubles(2000)), compression="LZ4", **PAGES,
                    use_dictionary=["path", "Date"])
    assert _metadata(buffer).row_group(0).column(2).compression == "LZ4"
    assert plain_doubles(buffer, _metadata(buffer)) is None


def test_lz4_never_gives_wrong_values():
    """Whatever the codec naming, an LZ4 file either falls back or reads right."""
    for version in ("1.0", "2.0"):
        values = _doubles(2000)
        buffer = _write(_table(values), compression="LZ4", **PAGES,
                        data_page_version=version, use_dictionary=False)
        pages = plain_doubles(buffer, _metadata(buffer))
        if pages is not None:
            _assert_same_bits(list(pages), values)


def test_generated_files_qualify_and_match(tmp_path):
    generated = generate(str(tmp_path / "sims"), files=2, paths=50, dates=12)
    files = sorted(Path(tmp_path / "sims").rglob("*.parquet"))
    assert len(files) == 2 and generated.rows == 2 * 50 * 12
    for file in files:
        buffer = pa.py_buffer(file.read_bytes())
        expected = _expected(buffer)
        assert len(expected) == 50 * 12
        _assert_same_bits(_read(buffer), expected)


# --- Columns that do not qualify fall back to pyarrow (None) ------------------------------------

def _struct_table() -> pa.Table:
    inner = pa.StructArray.from_arrays([pa.array(_doubles(100))], names=["value"])
    return pa.table({"s": inner})


FALLBACKS = {
    "dictionary": (lambda: _table(_doubles()), {"use_dictionary": True}, "value"),
    "float32": (lambda: pa.table({"value": pa.array(_doubles(100), pa.float32())}), {}, "value"),
    "int64": (lambda: pa.table({"value": pa.array(np.arange(100))}), {}, "value"),
    "nulls": (lambda: pa.table({"value": pa.array([1.0, None, 3.0])}), {}, "value"),
    "nullable-no-stats": (lambda: _table(_doubles()), {"write_statistics": False}, "value"),
    "struct-name": (_struct_table, {}, "value"),
    "struct-path": (_struct_table, {}, "s.value"),
    "list": (lambda: pa.table({"value": pa.array([[1.0, 2.0], [], [3.0]])}), {}, "value"),
    "list-leaf": (lambda: pa.table({"value": pa.array([[1.0, 2.0], [], [3.0]])}), {},
                  "value.list.element"),
    "missing": (lambda: pa.table({"other": pa.array(_doubles(10))}), {}, "value"),
    "byte-stream-split": (lambda: _table(_doubles()),
                          {"column_encoding": {"value": "BYTE_STREAM_SPLIT"}}, "value"),
    # Codecs whose short pages pa.Codec.decompress would not notice.
    "gzip": (lambda: _table(_doubles()), {"compression": "GZIP"}, "value"),
    "brotli": (lambda: _table(_doubles()), {"compression": "BROTLI"}, "value"),
}


@pytest.mark.parametrize("case", list(FALLBACKS))
def test_returns_none_when_the_column_does_not_qualify(case):
    make, options, name = FALLBACKS[case]
    buffer = _write(make(), **{"use_dictionary": False, **options})
    assert plain_doubles(buffer, _metadata(buffer), name) is None


def test_list_leaf_name_is_what_pyarrow_calls_it():
    # The "list-leaf" fallback must name a real leaf, or it would only test a missing column.
    buffer = _write(pa.table({"value": pa.array([[1.0]])}))
    metadata = _metadata(buffer)
    assert metadata.schema.column(0).path == "value.list.element"
    assert metadata.schema.column(0).max_repetition_level == 1


def test_a_dictionary_that_overflows_to_plain_still_falls_back():
    buffer = _write(_table(_doubles(20000), extra=False), use_dictionary=True,
                    dictionary_pagesize_limit=1024, **PAGES)
    chunk = _metadata(buffer).row_group(0).column(0)
    assert chunk.has_dictionary_page and "PLAIN" in chunk.encodings
    assert plain_doubles(buffer, _metadata(buffer)) is None


# --- Corrupt pages raise, never crash, never hang ------------------------------------------------

CORRUPT_FILES = {
    "required-none-v1": ({"nullable": False}, {"compression": "NONE"}),
    "nullable-snappy-v1": ({"nullable": True}, {"compression": "SNAPPY"}),
    "nullable-zstd-v2": ({"nullable": True}, {"compression": "ZSTD", "data_page_version": "2.0"}),
    "required-snappy-v2": ({"nullable": False}, {"compression": "SNAPPY",
                                                 "data_page_version": "2.0"}),
}


@pytest.fixture(scope="module", params=list(CORRUPT_FILES))
def good_file(request) -> pa.Buffer:
    table_options, options = CORRUPT_FILES[request.param]
    return _write(_table(_doubles(1200), **table_options), **PAGES,
                  row_group_size=600, use_dictionary=["path", "Date"], **options)


@pytest.mark.timeout(20)
def test_truncated_chunk_raises(good_file):
    metadata = _metadata(good_file)
    for start, size in _value_chunks(metadata):
        for cut in (start, start + 1, start + size // 2, start + size - 1):
            with pytest.raises(PageError):
                list(plain_doubles(good_file.slice(0, cut), metadata))


@pytest.mark.timeout(20)
def test_chunk_tail_overwritten_raises_or_reads_in_full(good_file):
    metadata = _metadata(good_file)
    outcomes = set()
    for start, size in _value_chunks(metadata):
        for cut in range(start, start + size, max(1, size // 23)):
            for fill in (b"\x00", b"\xff"):
                corrupt = _overwrite(good_file, cut, fill * (start + size - cut))
                outcomes.add(_survives(corrupt, metadata))
    assert outcomes - {"read"}, "overwriting whole pages should make some reads fail"


@pytest.mark.timeout(20)
def test_overwritten_headers_raise_or_read_in_full(good_file):
    metadata = _metadata(good_file)
    headers = _headers(good_file)
    assert len(headers) > 2 * metadata.num_row_groups
    outcomes = []
    for start, end in headers:
        fills = [b"\x00" * (end - start), b"\xff" * (end - start)]
        fills += [np.random.default_rng(seed).bytes(end - start) for seed in range(4)]
        for fill in fills:
            outcomes.append(_survives(_overwrite(good_file, start, fill), metadata))
    assert "PageError" in outcomes


@pytest.mark.timeout(20)
def test_single_byte_changes_in_headers_raise_or_read_in_full(good_file):
    metadata = _metadata(good_file)
    rng = np.random.default_rng(good_file.size)
    outcomes = []
    for start, end in _headers(good_file)[:12]:
        for position in range(start, end):
            for value in (0x00, 0x0C, 0x7F, 0x80, 0xFF, int(rng.integers(256))):
                outcomes.append(_survives(_overwrite(good_file, position, bytes([value])),
                                          metadata))
    assert "read" in outcomes and "PageError" in outcomes


def _zigzag(n: int) -> bytes:
    return _uvarint((n << 1) ^ (n >> 63))


def _uvarint(n: int) -> bytes:
    out = bytearray()
    while True:
        if n < 0x80:
            return bytes(out + bytes([n]))
        out.append(n & 0x7F | 0x80)
        n >>= 7


def _data_page_header(uncompressed: int, compressed: int, values: int) -> bytes:
    """A Thrift compact PageHeader of a PLAIN data page v1 (what parquet-format specifies)."""
    i32 = 0x15  # field id delta 1, type i32
    inner = (bytes([i32]) + _zigzag(values) + bytes([i32]) + _zigzag(0) + bytes([i32])
             + _zigzag(3) + bytes([i32]) + _zigzag(3) + b"\x00")
    return (bytes([i32]) + _zigzag(0) + bytes([i32]) + _zigzag(uncompressed) + bytes([i32])
            + _zigzag(compressed) + bytes([0x2C]) + inner + b"\x00")


def test_header_encoder_matches_the_reader():
    encoded = _data_page_header(800, 123, 100)
    header, used = _PageHeader.read(pa.py_buffer(encoded + b"xx"), 0)
    assert (header.type, header.uncompressed_size, header.compressed_size) == (0, 800, 123)
    assert (header.num_values, header.encoding, header.level_encoding) == (100, 0, 3)
    assert used == len(encoded)


@pytest.mark.parametrize("codec", ["SNAPPY", "GZIP", "BROTLI"])
def test_page_that_decompresses_short_raises(codec):
    rows = 100
    values = _doubles(rows, seed=7)
    buffer = _write(_table(values, nullable=False, extra=False), compression=codec,
                    use_dictionary=False)
    metadata = _metadata(buffer)
    (start, size), = _value_chunks(metadata)
    body = pa.Codec(codec.lower()).compress(values[:-1].tobytes(), asbytes=True)
    page = _data_page_header(8 * rows, len(body), rows) + body
    assert len(page) <= size
    corrupt = _overwrite(buffer, start, page)
    with pytest.raises((pa.ArrowException, OSError)):  # pyarrow notices
        pq.read_table(pa.BufferReader(corrupt))
    pages = plain_doubles(corrupt, metadata)
    if pages is None:  # a codec left to pyarrow, which raised above
        assert codec in ("GZIP", "BROTLI")
        return
    try:
        arrays = list(pages)
    except CORRUPT:
        return
    raise AssertionError(f"{sum(map(len, arrays))} values yielded from {rows - 1} stored")


# --- The bounded Thrift reader on hostile bytes -------------------------------------------------

HOSTILE = {
    "empty": b"",
    "overlong-varint-value": b"\x15" + b"\xff" * 12 + b"\x01\x00",
    "overlong-varint-field-id": b"\x05" + b"\xff" * 40,
    "list-of-2**31-bools": b"\x19\xf1" + _uvarint(2**31) + b"\x01" * 4096,
    "list-of-2**31-structs": b"\x19\xfc" + _uvarint(2**31) + b"\x00" * 4096,
    "map-of-2**31-entries": b"\x1b" + _uvarint(2**31) + b"\x55" + b"\x02" * 4096,
    "deep-structs": b"\x1c" * 100 + b"\x00" * 100,
    "deep-lists": b"\x19" * 100 + b"\x00" * 100,
    "deep-maps": b"\x1b" + b"\x01\xbb" * 100,
    "deep-struct-in-list": b"\x19\x1c" + b"\x1c" * 100 + b"\x00" * 101,
    "binary-past-end": b"\x18" + _uvarint(1 << 40) + b"abc",
    "binary-length-overlong": b"\x18" + b"\x80" * 11,
    "unknown-type-13": b"\x1d\x00",
    "unknown-type-0": b"\x10\x00",
    "unknown-list-element": b"\x19\x1e\x00",
    "no-stop": b"\x15\x02\x15\x04",
    "double-past-end": b"\x17" + b"\x00" * 7,
}


@pytest.mark.timeout(20)
@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_thrift_raises_page_error(case):
    with pytest.raises(PageError):
        _fields(HOSTILE[case])


@pytest.mark.timeout(20)
def test_random_thrift_never_escapes():
    rng = np.random.default_rng(6)
    parsed = 0
    for _ in range(3000):
        data = rng.bytes(int(rng.integers(0, 64)))
        try:
            fields, used = _fields(data)
        except PageError:
            continue
        parsed += 1
        assert 0 < used <= len(data)
        assert all(isinstance(v, (int, bool)) for v in fields.values())
    assert parsed  # some random strings are valid structs (a leading STOP, at least)


@pytest.mark.timeout(20)
def test_header_longer_than_the_window_raises():
    # Index page headers (type 1) whose field 4 is a binary 70 000 bytes long (past the 64 KiB
    # the reader allows) and 1 000 bytes long (past its first 512-byte look).
    huge = b"\x15\x02\x15\x02\x15\x02\x18" + _uvarint(70_000) + b"x" * 70_000 + b"\x00"
    with pytest.raises(PageError, match="64 KiB"):
        _PageHeader.read(pa.py_buffer(huge + b"\x00" * 10), 0)
    small = b"\x15\x02\x15\x02\x15\x02\x48" + _uvarint(1000) + b"x" * 1000 + b"\x00"
    header, used = _PageHeader.read(pa.py_buffer(small), 0)
    assert used == len(small) and header.compressed_size == 1


def test_thrift_reader_reads_nested_fields():
    # PageHeader{1: i32 0, 2: i32 -3, 5: struct{1: bool true, 3: i64 2**40}, 6: i16 5}
    data = b"\x15\x00\x15\x05\x3c\x11\x26" + _zigzag(2**40) + b"\x00\x14\x0a\x00"
    fields, used = _fields(data + b"trailing")
    assert used == len(data)
    assert fields == {(1,): 0, (2,): -3, (5, 1): True, (5, 3): 2**40, (6,): 5}


def test_thrift_reader_skips_lists_maps_and_doubles():
    # {1: list<i32>[1, 2], 2: map<i32, binary>{1: "ab"}, 3: double, 4: i32 9}
    data = (b"\x19\x25\x02\x04" + b"\x1b\x01\x58\x02\x02ab" + b"\x17" + b"\x00" * 8
            + b"\x15\x12\x00")
    fields, used = _fields(data)
    assert used == len(data) and fields == {(4,): 9}


def test_thrift_reader_skips_booleans_in_structs_in_lists():
    # {1: list<struct>[{1: bool true}], 2: i32 7}
    data = b"\x19\x1c\x11\x00\x15\x0e\x00"
    assert _fields(data) == ({(2,): 7}, len(data))


# --- The job path names the corrupt file ------------------------------------------------------

def test_job_reports_the_corrupt_file(tmp_path):
    buffer = _write(_table(_doubles(2000), nullable=True), compression="SNAPPY",
                    use_dictionary=["path", "Date"], **PAGES)
    start, end = _headers(buffer)[1]
    path = tmp_path / "broken.parquet"
    path.write_bytes(_overwrite(buffer, start, b"\xff" * (end - start)).to_pybytes())
    source = open_source(DataStore(), str(path))
    with pytest.raises(InputError, match="broken.parquet") as raised:
        for _ in source.value_chunks():
            pass
    assert isinstance(raised.value.__cause__, CORRUPT)
    assert "corrupt" in str(raised.value)


def test_job_reports_a_truncated_file(tmp_path):
    buffer = _write(_table(_doubles(2000)), use_dictionary=False)
    path = tmp_path / "cut.parquet"
    path.write_bytes(buffer.to_pybytes()[: buffer.size // 2])
    with pytest.raises(InputError, match="cut.parquet"):
        open_source(DataStore(), os.fspath(path))


def test_job_reads_a_good_file_through_the_page_path(tmp_path):
    values = _doubles(2000)
    path = tmp_path / "good.parquet"
    path.write_bytes(_write(_table(values), **PAGES,
                            use_dictionary=["path", "Date"]).to_pybytes())
    source = open_source(DataStore(), str(path))
    assert plain_doubles(source.buffer, _metadata(source.buffer)) is not None
    _assert_same_bits(list(source.value_chunks()), values)
