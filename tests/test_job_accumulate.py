"""The summing core against pandas, on small files of every shape (no cluster needed)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recc.datastore import DataStore
from recc.jobs.accumulate import (
    LAYOUT_OF,
    Accumulator,
    InputError,
    KeyGrowthExceeded,
    open_source,
)
from recc.jobs.generate import generate
from recc.jobs.keyindex import KeyIndex, has_repeats
from recc.jobs.tasks import sum_files

STORE = DataStore()


def pandas_sum(paths: list[str]) -> pd.Series:
    frames = [pd.read_parquet(p) for p in paths]
    return pd.concat(frames).groupby(["path", "Date"]).value.sum()


def recc_sum(paths: list[str]) -> tuple[pd.Series, Accumulator]:
    acc = Accumulator()
    for p in paths:
        acc.add(open_source(STORE, p))
    if acc.has_nan():
        acc = Accumulator(skip_nan=True)
        for p in paths:
            acc.add(open_source(STORE, p))
    table = acc.table(unique=True)
    series = table.to_pandas().set_index(["path", "Date"]).value
    return series, acc


def assert_matches(paths: list[str]) -> Accumulator:
    want = pandas_sum(paths)
    got, acc = recc_sum(paths)
    assert got.index.is_unique
    assert len(got) == len(want)
    np.testing.assert_allclose(got.reindex(want.index).to_numpy(), want.to_numpy(),
                               rtol=1e-12, atol=1e-12)
    return acc


def files_of(info, group="g000") -> list[str]:
    return [f"{info.output}/{f}" for f in info.groups[group]]


def test_shared_order_takes_the_byte_compare_path(tmp_path):
    info = generate(str(tmp_path), files=5, paths=40, dates=12, seed=3)
    acc = assert_matches(files_of(info))
    assert acc.tally.same_bytes == 5 and acc.tally.aligned == 0


def test_each_file_in_its_own_order(tmp_path):
    info = generate(str(tmp_path), files=4, paths=40, dates=12, seed=4, shuffle_each=True)
    acc = assert_matches(files_of(info))
    assert acc.tally.aligned == 3


def test_key_sets_differ_between_files(tmp_path):
    info = generate(str(tmp_path), files=6, paths=40, dates=12, seed=5, missing=0.2)
    acc = assert_matches(files_of(info))
    assert acc.tally.aligned == 5


def test_shuffled_and_missing_with_many_row_groups(tmp_path):
    info = generate(str(tmp_path), files=4, paths=30, dates=10, seed=6, shuffle_each=True,
                    missing=0.3, row_group_size=37)
    assert_matches(files_of(info))


def test_single_file(tmp_path):
    info = generate(str(tmp_path), files=1, paths=10, dates=5, seed=7)
    assert_matches(files_of(info))


def write(where, **columns) -> str:
    pq.write_table(pa.table(columns), where)
    return str(where)


def test_repeated_keys_nulls_and_nan_match_pandas(tmp_path):
    days = np.array(["2030-01-01", "2030-02-01"] * 3, dtype="datetime64[D]")
    dates = pa.array(days, pa.date32())
    a = write(tmp_path / "a.parquet", path=pa.array([1, 1, 2, 2, 1, 3]), Date=dates,
              value=pa.array([1.0, 2.0, 3.0, None, 5.0, 6.0]))
    b = write(tmp_path / "b.parquet", path=pa.array([1, 1, None, 2, 1, 3]), Date=dates,
              value=pa.array([1.0, np.nan, 3.0, 4.0, 5.0, 6.0]))
    c = write(tmp_path / "c.parquet", path=pa.array([7, 1, 2, 2, 1, 3]), Date=dates,
              value=pa.array([0.5, 0.25, 3.0, 4.0, 5.0, 6.0]))
    assert assert_matches([a, b, c]).tally.rows_skipped_null_key == 1
    assert assert_matches([b, a]).tally.rows_skipped_null_key == 1  # null keys in the first file


def test_rows_with_a_null_key_are_counted_once_wherever_they_are_added(tmp_path):
    """Null path or Date, in the layout or a later file, one task or lanes and a final: each
    row is counted once, where its file is read; partials and the final add none."""
    info = generate(str(tmp_path / "in"), files=3, paths=10, dates=4, seed=12)
    files = files_of(info)
    table = pq.read_table(files[1])
    paths = table.column("path").to_pylist()
    paths[3] = paths[7] = None
    dates = table.column("Date").to_pylist()
    dates[0] = dates[3] = None  # row 3: both keys null, still one row
    nulls = write(tmp_path / "nulls.parquet", path=pa.array(paths, pa.int64()),
                  Date=pa.array(dates, pa.date32()), value=table.column("value"))
    for order in ([files[0], nulls, files[2]], [nulls, files[0], files[2]]):
        assert assert_matches(order).tally.rows_skipped_null_key == 3
    p1, p2 = str(tmp_path / "p1.arrow"), str(tmp_path / "p2.arrow")
    lanes = [sum_files(STORE, "g", [files[0], nulls], p1, final=False, max_rows=None,
                       schema=None, files=2, layout=files[0]),
             sum_files(STORE, "g", [files[2]], p2, final=False, max_rows=None, schema=None,
                       files=1, layout=files[0])]
    final = sum_files(STORE, "g", [p1, p2], str(tmp_path / "g.parquet"), final=True,
                      max_rows=None, schema=None, files=0, layout=files[0])
    assert [r.tally.rows_skipped_null_key for r in lanes] == [3, 0]
    assert final.tally.rows_skipped_null_key == 0


def test_string_keys_and_integer_values(tmp_path):
    a = write(tmp_path / "a.parquet", path=pa.array(["p1", "p2", "p3"]),
              Date=pa.array([1, 2, 3], pa.int32()), value=pa.array([1, 2, 3]))
    b = write(tmp_path / "b.parquet", path=pa.array(["p3", "p9", "p1"]),
              Date=pa.array([3, 3, 1], pa.int32()), value=pa.array([10, 20, 30]))
    assert_matches([a, b])


def test_empty_file_adds_nothing(tmp_path):
    info = generate(str(tmp_path), files=2, paths=10, dates=5, seed=8)
    empty = write(tmp_path / "empty.parquet", path=pa.array([], pa.int64()),
                  Date=pa.array([], pa.date32()), value=pa.array([], pa.float64()))
    assert_matches([*files_of(info), empty])
    assert_matches([empty, *files_of(info)])


def test_missing_file_is_named(tmp_path):
    with pytest.raises(InputError, match="nope.parquet"):
        open_source(STORE, str(tmp_path / "nope.parquet"))


def test_corrupt_file_is_named(tmp_path):
    info = generate(str(tmp_path), files=2, paths=50, dates=12, seed=9)
    good, bad = files_of(info)
    data = bytearray(open(bad, "rb").read())
    data[200:4000] = b"\x00" * 3800  # the footer survives: the damage shows when decoding
    open(bad, "wb").write(bytes(data))
    acc = Accumulator()
    acc.add(open_source(STORE, good))
    with pytest.raises(InputError, match="part-00001.parquet"):
        acc.add(open_source(STORE, bad))
    garbage = tmp_path / "garbage.parquet"
    garbage.write_bytes(b"not parquet at all")
    with pytest.raises(InputError, match="garbage.parquet.*not a readable Parquet"):
        open_source(STORE, str(garbage))


def test_wrong_columns_are_named(tmp_path):
    f = write(tmp_path / "w.parquet", path=pa.array([1]), value=pa.array([1.0]))
    with pytest.raises(InputError, match="w.parquet: missing column.*Date"):
        open_source(STORE, f)


def test_growth_past_the_reservation_raises(tmp_path):
    info = generate(str(tmp_path), files=3, paths=20, dates=5, seed=10, missing=0.5)
    acc = Accumulator(max_rows=60)
    with pytest.raises(KeyGrowthExceeded, match="more than the 60 rows"):
        for f in files_of(info):
            acc.add(open_source(STORE, f))


def test_partials_round_trip_through_ipc(tmp_path):
    """Lanes write IPC partials; a final task sums them into the same result as one pass."""
    info = generate(str(tmp_path / "in"), files=6, paths=30, dates=8, seed=11, missing=0.1)
    files = files_of(info)
    p1, p2 = str(tmp_path / "p1.arrow"), str(tmp_path / "p2.arrow")
    sum_files(STORE, "g", files[:3], p1, final=False, max_rows=None, schema=None, files=3)
    sum_files(STORE, "g", files[3:], p2, final=False, max_rows=None, schema=None, files=3)
    out = str(tmp_path / "g.parquet")
    report = sum_files(STORE, "g", [p1, p2], out, final=True, max_rows=None, schema=None,
                       files=0)
    want = pandas_sum(files)
    got = pd.read_parquet(out).set_index(["path", "Date"]).value
    assert report.rows_out == len(want) == len(got)
    np.testing.assert_allclose(got.reindex(want.index).to_numpy(), want.to_numpy())


def run_lanes(tmp_path, files: list[str], lanes: list[list[str]]) -> tuple[str, list[str]]:
    """Lanes and a final over them, every task naming files[0] as the layout, as the job does."""
    partials = [str(tmp_path / f"lane-{i}.arrow") for i in range(len(lanes))]
    for lane, partial in zip(lanes, partials, strict=True):
        sum_files(STORE, "g", lane, partial, final=False, max_rows=None, schema=None,
                  files=len(lane), layout=files[0])
    out = str(tmp_path / "g.parquet")
    sum_files(STORE, "g", partials, out, final=True, max_rows=None, schema=None, files=0,
              layout=files[0])
    want = pandas_sum(files)
    got = pd.read_parquet(out).set_index(["path", "Date"]).value
    assert got.index.is_unique and len(got) == len(want)
    np.testing.assert_allclose(got.reindex(want.index).to_numpy(), want.to_numpy(),
                               rtol=1e-12, atol=1e-12)
    return out, partials


def test_shared_layout_lanes_write_values_only_and_the_output_copies_the_keys(tmp_path):
    """The fast path end to end: no lane stores keys, and the output's encoded key columns
    are the layout file's bytes (so nothing decoded or re-encoded them)."""
    info = generate(str(tmp_path / "in"), files=6, paths=40, dates=12, seed=21,
                    row_group_size=100)
    files = files_of(info)
    out, partials = run_lanes(tmp_path, files, [files[:2], files[2:4], files[4:]])
    for partial in partials:
        schema = pa.ipc.open_file(partial).schema
        assert schema.names == ["value"]
        assert schema.metadata[LAYOUT_OF] == open_source(STORE, files[0]).layout_id()
    def key_bytes(url: str) -> list:
        return [p.to_pybytes() if isinstance(p, pa.Buffer) else p
                for p in open_source(STORE, url).signature()]

    assert key_bytes(out) == key_bytes(files[0])
    assert pq.ParquetFile(out).metadata.num_row_groups == 5


def test_a_lane_in_another_order_mixes_with_values_only_lanes(tmp_path):
    """A lane whose files differ writes keys; the final aligns the values-only lanes to the
    layout's keys once its sums have left the layout's order."""
    info = generate(str(tmp_path / "in"), files=3, paths=30, dates=8, seed=22)
    odd = generate(str(tmp_path / "odd"), files=2, paths=30, dates=8, seed=23,
                   shuffle_each=True, missing=0.2)
    files, others = files_of(info), files_of(odd)
    for name, lanes in {"keyed-first": [others, files[:2], files[2:]],
                        "keyed-between": [files[:2], others, files[2:]]}.items():
        (tmp_path / name).mkdir()
        _, partials = run_lanes(tmp_path / name, [*files, *others], lanes)
        keyed = ["path" in pa.ipc.open_file(p).schema.names for p in partials]
        assert keyed == [lane is others for lane in lanes]


def test_layout_with_repeated_keys_is_merged_not_copied(tmp_path):
    days = pa.array(np.array(["2030-01-01"] * 4, dtype="datetime64[D]"), pa.date32())
    a = write(tmp_path / "a.parquet", path=pa.array([1, 1, 2, 3]), Date=days,
              value=pa.array([1.0, 2.0, 3.0, 4.0]))
    b = write(tmp_path / "b.parquet", path=pa.array([1, 1, 2, 3]), Date=days,
              value=pa.array([10.0, 20.0, 30.0, 40.0]))
    out, _ = run_lanes(tmp_path, [a, b], [[a], [b]])
    assert pq.read_table(out).num_rows == 3


def test_a_partial_over_another_layout_is_refused(tmp_path):
    info = generate(str(tmp_path / "in"), files=2, paths=10, dates=4, seed=24)
    other = generate(str(tmp_path / "other"), files=1, paths=10, dates=4, seed=25)
    files = files_of(info)
    partial = str(tmp_path / "p.arrow")
    sum_files(STORE, "g", files, partial, final=False, max_rows=None, schema=None, files=2,
              layout=files[0])
    with pytest.raises(InputError, match="another layout"):
        sum_files(STORE, "g", [partial], str(tmp_path / "o.parquet"), final=True,
                  max_rows=None, schema=None, files=0, layout=files_of(other)[0])


def test_key_index_switches_to_hash_for_sparse_keys():
    index = KeyIndex()
    wide = pa.table({"path": pa.array([0, 10**12, 5]), "Date": pa.array([1, 2, 3])})
    rows, new = index.rows_of(wide)
    assert rows.tolist() == [0, 1, 2] and new.tolist() == [0, 1, 2]
    again = pa.table({"path": pa.array([5, 7, 10**12, 7]), "Date": pa.array([3, 1, 2, 1])})
    rows, new = index.rows_of(again)
    assert rows.tolist() == [2, 3, 1, 3] and new.tolist() == [1]


@pytest.mark.parametrize("seed", range(4))
def test_has_repeats_agrees_with_pandas(seed):
    rng = np.random.default_rng(seed)
    n = 500
    frame = pd.DataFrame({"path": rng.integers(0, 40, n), "Date": rng.integers(0, 20, n)})
    if seed % 2:
        frame = frame.drop_duplicates()
    keys = pa.Table.from_pandas(frame, preserve_index=False)
    assert has_repeats(keys) is bool(frame.duplicated().any())
    strings = keys.select(["path"]).append_column("Date", pa.array(["x"] * len(frame)))
    assert has_repeats(strings) is None


def test_files_in_the_layouts_order_stay_fast_after_an_aligned_one(tmp_path):
    """An odd file (own order, some keys missing) is aligned; files after it that share the
    layout's encoded keys are still added by byte compare, and the sums stay in the layout's
    order, so the output can still copy the layout's keys."""
    alike = files_of(generate(str(tmp_path / "a"), files=4, paths=30, dates=10, seed=41))
    odd = files_of(generate(str(tmp_path / "o"), files=1, paths=30, dates=10, seed=41,
                            missing=0.2, shuffle_each=True))
    acc = assert_matches([alike[0], *odd, *alike[1:]])
    assert (acc.tally.same_bytes, acc.tally.aligned) == (4, 1)
    assert acc.in_layout_order() is not None  # a subset of the keys: nothing was appended
