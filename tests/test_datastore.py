"""The datastore: fall-through reads, writes to every write store, all-or-nothing writes,
configuration from dask config and environment, and S3 (a moto server) end to end."""

from __future__ import annotations

import os

import boto3
import dask.config
import numpy as np
import pandas as pd
import pytest
from distributed import Client, LocalCluster
from helpers import s3_on_loopback

from recc.datastore import DataStore, Store
from recc.errors import ConfigError, SpecError
from recc.jobs import aggregate, generate


def two_stores(tmp_path, write=("CACHE",)) -> DataStore:
    stores = {n: Store(n, str(tmp_path / n.lower())) for n in ("CACHE", "ARCHIVE")}
    return DataStore(stores=stores, read=("CACHE", "ARCHIVE"), write=write)


def test_reads_fall_through_in_order(tmp_path):
    ds = two_stores(tmp_path)
    (tmp_path / "archive" / "k").mkdir(parents=True)
    (tmp_path / "archive" / "k" / "f.txt").write_bytes(b"archived")
    assert ds.read_bytes("recc://k/f.txt") == b"archived"
    (tmp_path / "cache" / "k").mkdir(parents=True)
    (tmp_path / "cache" / "k" / "f.txt").write_bytes(b"cached")
    assert ds.read_bytes("recc://k/f.txt") == b"cached"  # the first store wins
    with pytest.raises(FileNotFoundError, match="tried .*cache/k/none.*archive/k/none"):
        ds.read_bytes("recc://k/none")
    assert not ds.exists("recc://k/none")


def test_writes_go_to_every_write_store(tmp_path):
    ds = two_stores(tmp_path, write=("CACHE", "ARCHIVE"))
    ds.write_bytes("recc://a/b.txt", b"both")
    assert (tmp_path / "cache" / "a" / "b.txt").read_bytes() == b"both"
    assert (tmp_path / "archive" / "a" / "b.txt").read_bytes() == b"both"
    ds.remove("recc://a/b.txt")
    ds.remove("recc://a/b.txt")  # idempotent
    assert not ds.exists("recc://a/b.txt")


def test_a_failed_write_leaves_nothing(tmp_path):
    ds = DataStore()
    target = tmp_path / "out" / "x.parquet"
    with pytest.raises(RuntimeError):
        with ds.atomic_write(str(target)) as f:
            f.write(b"half")
            raise RuntimeError("writer died")
    assert not target.exists()
    assert os.listdir(tmp_path / "out") == []


def test_config_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("DASK_RECC__DATASTORE__STORES__LOCAL__URL", str(tmp_path / "local"))
    monkeypatch.setenv("DASK_RECC__DATASTORE__READ", '["LOCAL"]')
    monkeypatch.setenv("DASK_RECC__DATASTORE__WRITE", "LOCAL")
    dask.config.refresh()
    try:
        ds = DataStore.from_config()
    finally:
        monkeypatch.undo()
        dask.config.refresh()
    assert ds.read == ("LOCAL",) and ds.write == ("LOCAL",)
    ds.write_bytes("recc://x", b"1")
    assert (tmp_path / "local" / "x").read_bytes() == b"1"


def test_unknown_store_names_the_key():
    with pytest.raises(ConfigError, match="recc.datastore.read names store 'S3'"):
        DataStore(stores={}, read=("S3",))
    with pytest.raises(ConfigError, match="recc.datastore.read"):
        DataStore().locate("recc://anything")


@pytest.mark.parametrize(
    "url", ["recc://../../x", "recc://k/../../x", "recc:///../x", "recc://..", "recc://", "recc:///"]
)
def test_keys_that_leave_the_store_are_refused(tmp_path, url):
    outside = tmp_path / "x"
    outside.mkdir()
    (outside / "f").write_bytes(b"not the store's")
    ds = two_stores(tmp_path / "stores" / "deep", write=("CACHE", "ARCHIVE"))
    for use in (ds.read_bytes, ds.exists, ds.targets, ds.remove,
                lambda u: ds.write_bytes(u, b"overwritten")):
        with pytest.raises(SpecError) as info:
            use(url)
        assert info.value.field == "url" and "for example: recc://" in str(info.value)
    with pytest.raises(SpecError):
        ds.stores["CACHE"].join(url.removeprefix("recc://"))
    assert (outside / "f").read_bytes() == b"not the store's"


def test_keys_with_dots_inside_a_name_stay_usable(tmp_path):
    ds = two_stores(tmp_path)
    ds.write_bytes("recc:///runs/v1..2/a.txt", b"ok")  # ".." inside a name is just a name
    assert (tmp_path / "cache" / "runs" / "v1..2" / "a.txt").read_bytes() == b"ok"


# -- S3 through a moto server ----------------------------------------------------------


@pytest.fixture(scope="module")
def s3():
    with s3_on_loopback("sims") as endpoint:
        yield endpoint


def s3_store(endpoint: str, tmp_path) -> DataStore:
    opts = {"endpoint_url": endpoint, "key": "testing", "secret": "testing"}
    return DataStore(
        stores={"LOCAL": Store("LOCAL", str(tmp_path / "cache")),
                "S3": Store("S3", "s3://sims/store", opts)},
        read=("LOCAL", "S3"), write=("S3",),
        storage_options={"s3": opts},
    )


def test_s3_fall_through_and_atomic_upload(s3, tmp_path):
    ds = s3_store(s3, tmp_path)
    ds.write_bytes("recc://run/a.txt", b"from s3")
    assert ds.read_bytes("recc://run/a.txt") == b"from s3"
    assert ds.read_bytes("s3://sims/store/run/a.txt") == b"from s3"
    (tmp_path / "cache" / "run").mkdir(parents=True)
    (tmp_path / "cache" / "run" / "a.txt").write_bytes(b"local copy")
    assert ds.read_bytes("recc://run/a.txt") == b"local copy"
    with pytest.raises(RuntimeError):
        with ds.atomic_write("s3://sims/half.txt") as f:
            f.write(b"half")
            raise RuntimeError("boom")
    assert not ds.exists("s3://sims/half.txt")


def test_job_reads_and_writes_s3(s3, tmp_path):
    ds = s3_store(s3, tmp_path)
    info = generate("s3://sims/in", group_sizes=[2, 0, 5], paths=20, dates=6, seed=2,
                    missing=0.1, datastore=ds)
    with LocalCluster(n_workers=1, threads_per_worker=2, memory_limit="1GiB",
                      resources={"MEMORY": 1024}, dashboard_address=":0") as cluster:
        with Client(cluster) as client:
            result = aggregate("s3://sims/in", "recc://sums", client=client, datastore=ds,
                               max_files_per_task=2)
    assert result.ok, result.failed
    for group, files in info.groups.items():
        got = pd.read_parquet(ds.open(f"s3://sims/store/sums/{group}.parquet"))
        if not files:
            assert len(got) == 0
            continue
        want = pd.concat(pd.read_parquet(ds.open(f"s3://sims/in/{f}")) for f in files)
        want = want.groupby(["path", "Date"]).value.sum()
        got = got.set_index(["path", "Date"]).value
        np.testing.assert_allclose(got.reindex(want.index).to_numpy(), want.to_numpy())
    listing = boto3.client("s3", endpoint_url=s3).list_objects_v2(Bucket="sims",
                                                                   Prefix="store/sums/")
    names = sorted(o["Key"] for o in listing.get("Contents", []))
    assert names == [f"store/sums/g00{i}.parquet" for i in range(3)]  # no scratch left
