"""splice_parquet: key chunks copied from a real pyarrow-written layout read back as the keys.

Every layout here is a real Parquet file written by pyarrow in one of the shapes the reference
job may meet; every output is read back by pyarrow, pandas, dask and fastparquet.
"""

from __future__ import annotations

import base64
import doctest
import io
import tempfile
from pathlib import Path

import dask.dataframe as dd
import fastparquet
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pyarrow.parquet.encryption as pe
import pytest

import recc.jobs.splice as splice_module
from recc.jobs.splice import SpliceError, splice_parquet, spliceable

KEYS = ["path", "Date"]
ROWS = 1000


def _keys(rows: int = ROWS, strings: bool = False) -> dict[str, pa.Array]:
    """Keys shaped like the simulator's: paths repeat, dates cycle, rows shuffled."""
    rng = np.random.default_rng(rows)
    order = rng.permutation(rows)
    paths = order // 12
    dates = np.datetime64("2027-01-01") + (order % 12 * 37).astype("timedelta64[D]")
    path = pa.array([f"sim/{p:05d}" for p in paths]) if strings else pa.array(paths)
    return {"path": path, "Date": pa.array(dates)}


def _write(table: pa.Table, **options) -> pa.Buffer:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, **options)
    return sink.getvalue()


def _values(rows: int) -> np.ndarray:
    values = np.random.default_rng(7).normal(size=rows)
    values[::7] = np.nan  # NaN is a value like any other: it must survive as NaN
    return values


def _by_fastparquet() -> pa.Buffer:
    """Another writer's conventions (file_offset set, format version 1, no dictionary)."""
    frame = pa.table(_keys(strings=True)).to_pandas().assign(value=0.0)
    frame["Date"] = pd.to_datetime(frame["Date"])
    with tempfile.TemporaryDirectory() as directory:
        file = Path(directory) / "layout.parquet"
        fastparquet.write(str(file), frame, row_group_offsets=300, compression="SNAPPY")
        return pa.py_buffer(file.read_bytes())


def _no_row_groups() -> pa.Buffer:
    sink = pa.BufferOutputStream()
    schema = pa.schema([("path", pa.int64()), ("Date", pa.date32()), ("value", pa.float64())])
    pq.ParquetWriter(sink, schema).close()
    return sink.getvalue()


_extra = {
    "value": pa.array(np.zeros(ROWS)),
    "extra": pa.array([str(i) for i in range(ROWS)]),
    "nested": pa.array([{"a": i, "b": float(i)} for i in range(ROWS)]),
    "listed": pa.array([[i, i] for i in range(ROWS)]),
}

LAYOUTS = {
    "row groups and pages": lambda: _write(pa.table({**_keys(), "value": np.zeros(ROWS)}),
                                           row_group_size=300, max_rows_per_page=64),
    "plain keys": lambda: _write(pa.table({**_keys(), "value": np.zeros(ROWS)}),
                                 use_dictionary=False, row_group_size=400),
    "dictionary falls back to plain": lambda: _write(
        pa.table({**_keys(strings=True), "value": np.zeros(ROWS)}),
        dictionary_pagesize_limit=256, max_rows_per_page=100),
    # Other columns before, between and after the keys, some of them nested (several leaves).
    "extra columns, other order": lambda: _write(pa.table({
        "value": _extra["value"], "nested": _extra["nested"], "Date": _keys()["Date"],
        "extra": _extra["extra"], "listed": _extra["listed"], "path": _keys()["path"]}),
        row_group_size=512),
    "zstd": lambda: _write(pa.table(_keys()), compression="zstd", row_group_size=333),
    "uncompressed": lambda: _write(pa.table(_keys()), compression="none"),
    "page index": lambda: _write(pa.table(_keys()), write_page_index=True, row_group_size=250,
                                 max_rows_per_page=50),
    "bloom filters": lambda: _write(pa.table(_keys()), row_group_size=500,
                                    bloom_filter_options={"path": True, "Date": {"ndv": 100}}),
    "string keys": lambda: _write(pa.table(_keys(strings=True)), row_group_size=600),
    "data page v2": lambda: _write(pa.table(_keys()), data_page_version="2.0",
                                   row_group_size=300, compression="zstd"),
    "written by fastparquet": _by_fastparquet,
    "empty, one row group": lambda: _write(pa.table(_keys(0))),
    "empty, no row group": _no_row_groups,
}


@pytest.fixture(scope="module", params=list(LAYOUTS))
def layout(request) -> pa.Buffer:
    return LAYOUTS[request.param]()


def _splice(layout: pa.Buffer, values: np.ndarray, **options) -> pa.Buffer:
    out = io.BytesIO()
    written = splice_parquet(out, layout, values, **options)
    assert written == len(out.getvalue())
    return pa.py_buffer(out.getvalue())


def _assert_spliced(output: pa.Buffer, layout: pa.Buffer, values: np.ndarray) -> None:
    result = pq.read_table(output)
    assert result.column_names == [*KEYS, "value"]
    assert result.select(KEYS).equals(pq.read_table(layout, columns=KEYS))
    np.testing.assert_array_equal(result["value"].to_numpy(), values)


@pytest.mark.parametrize("compression", ["snappy", "zstd", "none"])
def test_reads_back_as_layout_keys_and_given_values(layout, compression):
    values = _values(pq.read_metadata(pa.BufferReader(layout)).num_rows)
    assert spliceable(layout) is None
    _assert_spliced(_splice(layout, values, compression=compression), layout, values)


def _summary(stats: pq.Statistics | None) -> tuple | None:
    return stats and (stats.min, stats.max, stats.null_count, stats.has_min_max)


def test_keeps_row_groups_and_key_statistics(layout):
    rows = pq.read_metadata(pa.BufferReader(layout)).num_rows
    values = _values(rows)
    before = pq.ParquetFile(pa.BufferReader(layout)).metadata
    after = pq.ParquetFile(pa.BufferReader(_splice(layout, values))).metadata
    assert after.num_rows == rows
    assert [after.row_group(r).num_rows for r in range(after.num_row_groups)] == \
           [before.row_group(r).num_rows for r in range(before.num_row_groups)]
    names = before.schema.names
    for r in range(after.num_row_groups):
        for i, key in enumerate(KEYS):
            old = before.row_group(r).column(names.index(key)).statistics
            new = after.row_group(r).column(i).statistics
            assert _summary(new) == _summary(old)
        value_stats = after.row_group(r).column(len(KEYS)).statistics
        if after.row_group(r).num_rows:
            group = values[sum(after.row_group(g).num_rows for g in range(r)):][
                :after.row_group(r).num_rows]
            assert value_stats.max == np.nanmax(group)


def test_chunks_are_contiguous_and_carry_no_stale_references(layout):
    """Every chunk sits where the footer says, back to back, with no index or bloom filter
    references left pointing into the layout."""
    output = _splice(layout, _values(pq.read_metadata(pa.BufferReader(layout)).num_rows))
    metadata = pq.read_metadata(pa.BufferReader(output))
    position = 4  # after the leading magic
    for r in range(metadata.num_row_groups):
        for i in range(metadata.num_columns):
            chunk = metadata.row_group(r).column(i)
            pages = [p for p in (chunk.data_page_offset, chunk.dictionary_page_offset) if p]
            assert min(pages, default=position) == position  # an empty chunk has no pages
            # Deprecated and writer-specific (0, chunk start or chunk end), but never elsewhere.
            end = position + chunk.total_compressed_size
            assert chunk.file_offset == 0 or position <= chunk.file_offset <= end
            assert not (chunk.has_column_index or chunk.has_offset_index)
            assert chunk.bloom_filter_offset is None
            position += chunk.total_compressed_size
    assert position == output.size - 8 - metadata.serialized_size


def test_reads_one_column_at_a_time(layout):
    values = _values(pq.read_metadata(pa.BufferReader(layout)).num_rows)
    output = _splice(layout, values)
    np.testing.assert_array_equal(pq.read_table(output, columns=["value"])["value"].to_numpy(),
                                  values)
    assert pq.read_table(output, columns=["path"])["path"].equals(
        pq.read_table(layout, columns=["path"])["path"])


def test_reads_with_pandas_dask_and_fastparquet(tmp_path: Path):
    """Each reader reads the output as it reads the layout's keys, plus the values."""
    layout = LAYOUTS["extra columns, other order"]()
    values = _values(ROWS)
    source, output = tmp_path / "layout.parquet", tmp_path / "group.parquet"
    source.write_bytes(layout.to_pybytes())
    output.write_bytes(_splice(layout, values).to_pybytes())
    pd.testing.assert_frame_equal(pd.read_parquet(output),
                                  pd.read_parquet(source, columns=KEYS).assign(value=values))
    pd.testing.assert_frame_equal(
        dd.read_parquet(str(output)).compute(),
        dd.read_parquet(str(source), columns=KEYS).compute().assign(value=values))
    by_fastparquet = pd.read_parquet(output, engine="fastparquet")
    np.testing.assert_array_equal(by_fastparquet["value"], values)
    assert by_fastparquet["path"].tolist() == pq.read_table(layout)["path"].to_pylist()


def test_custom_keys_and_value_name():
    layout = LAYOUTS["extra columns, other order"]()
    values = _values(ROWS)
    output = _splice(layout, values, keys=["extra", "path"], value_name="total")
    result = pq.read_table(output)
    assert result.column_names == ["extra", "path", "total"]
    assert result.select(["extra", "path"]).equals(pq.read_table(layout, columns=["extra", "path"]))


def test_docstring_examples_run():
    assert doctest.testmod(splice_module).failed == 0


class _TestKms(pe.KmsClient):
    """A key 'management' that only base64-encodes: enough to make real encrypted files."""

    def __init__(self, config):
        pe.KmsClient.__init__(self)

    def wrap_key(self, key_bytes, master_key_identifier):
        return base64.b64encode(key_bytes)

    def unwrap_key(self, wrapped_key, master_key_identifier):
        return base64.b64decode(wrapped_key)


def _encrypted(plaintext_footer: bool) -> pa.Buffer:
    config = pe.EncryptionConfiguration(footer_key="footer", column_keys={"col": ["value"]},
                                        plaintext_footer=plaintext_footer)
    properties = pe.CryptoFactory(_TestKms).file_encryption_properties(
        pe.KmsConnectionConfig(), config)
    return _write(pa.table({**_keys(), "value": np.zeros(ROWS)}),
                  encryption_properties=properties)


def _external_chunks() -> pa.Buffer:
    """A `_metadata`-style file: its column chunks live in another file."""
    collected: list = []
    pq.write_table(pa.table(_keys()), pa.BufferOutputStream(), metadata_collector=collected)
    collected[0].set_file_path("part.0.parquet")
    sink = pa.BufferOutputStream()
    collected[0].write_metadata_file(sink)
    return sink.getvalue()


REFUSED = {
    "missing key": (lambda: _write(pa.table({"path": _keys()["path"], "value": np.zeros(ROWS)})),
                    "key column 'Date' is not in the layout"),
    "struct key": (lambda: _write(pa.table({"path": _extra["nested"], "Date": _keys()["Date"]})),
                   "key column 'path' is nested or repeated"),
    "list key": (lambda: _write(pa.table({"path": _extra["listed"], "Date": _keys()["Date"]})),
                 "key column 'path' is nested or repeated"),
    "encrypted footer": (lambda: _encrypted(plaintext_footer=False), "encrypted"),
    "encrypted columns": (lambda: _encrypted(plaintext_footer=True), "encrypted columns"),
    "external chunks": (_external_chunks, "is stored in another file \\('part.0.parquet'\\)"),
    "not parquet": (lambda: pa.py_buffer(b"path,Date,value\n1,2027-01-01,0.5\n" * 10),
                    "not a Parquet file"),
    "truncated": (lambda: LAYOUTS["plain keys"]().slice(0, 2000), "not a Parquet file"),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_refuses_unspliceable_layouts_before_writing(case):
    make, reason = REFUSED[case]
    layout = make()
    out = io.BytesIO()
    with pytest.raises(SpliceError, match=reason) as caught:
        splice_parquet(out, layout, np.zeros(ROWS))
    assert out.getvalue() == b""
    assert spliceable(layout) == str(caught.value)


@pytest.mark.parametrize("values, reason", [
    (np.zeros(ROWS - 1), f"the layout has {ROWS} rows but \\({ROWS - 1},\\) values"),
    (np.zeros((ROWS, 1)), f"the layout has {ROWS} rows but \\({ROWS}, 1\\) values"),
])
def test_refuses_values_that_do_not_match_the_rows(values, reason):
    layout = LAYOUTS["plain keys"]()
    out = io.BytesIO()
    with pytest.raises(SpliceError, match=reason):
        splice_parquet(out, layout, values)
    assert out.getvalue() == b""
    assert spliceable(layout) is None  # the footer alone is fine: only the values are wrong


def test_refuses_a_value_name_that_is_a_key():
    layout = LAYOUTS["plain keys"]()
    out = io.BytesIO()
    with pytest.raises(SpliceError, match="must be distinct names") as caught:
        splice_parquet(out, layout, np.zeros(ROWS), value_name="path")
    assert out.getvalue() == b""
    assert spliceable(layout, value_name="path") == str(caught.value)
