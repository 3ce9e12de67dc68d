"""``recc job``: generate, aggregate on a cluster created for the job (and deleted), errors."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
from typer.testing import CliRunner

from recc.cli.main import app

runner = CliRunner()


def test_generate_is_deterministic_and_writes_a_manifest(tmp_path):
    for out in ("a", "b"):
        result = runner.invoke(app, ["job", "generate", "--output", str(tmp_path / out),
                                     "--group-sizes", "2,0,1", "--paths", "30", "--dates", "7",
                                     "--seed", "5", "--missing", "0.1"])
        assert result.exit_code == 0, result.output
    manifest = (tmp_path / "a" / "manifest.csv").read_text()
    assert manifest == ("file,group\npart-00000.parquet,g000\npart-00001.parquet,g000\n"
                        ",g001\npart-00002.parquet,g002\n")
    for name in ("part-00000.parquet", "part-00002.parquet"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    frame = pd.read_parquet(tmp_path / "a" / "part-00000.parquet")
    assert list(frame.columns) == ["path", "Date", "value"]
    assert frame["Date"].nunique() == 7 and frame["path"].nunique() == 30
    assert not frame[["path", "Date"]].apply(tuple, axis=1).is_monotonic_increasing


def test_generate_rejects_inconsistent_sizes(tmp_path):
    result = runner.invoke(app, ["job", "generate", "--output", str(tmp_path), "--files", "4",
                                 "--group-sizes", "1,2"])
    assert result.exit_code == 2
    assert "files=4" in result.output and "--group-sizes add up to 3" in result.output


def cluster_names() -> set[str]:
    listed = runner.invoke(app, ["ls", "--json"])
    assert listed.exit_code == 0, listed.output
    return {c["name"] for c in json.loads(listed.stdout)}


def test_aggregate_on_a_cluster_made_for_the_job(tmp_path, caplog):
    before = cluster_names()
    info = tmp_path / "in"
    assert runner.invoke(app, ["job", "generate", "--output", str(info), "--group-sizes",
                               "3,1", "--paths", "40", "--dates", "6"]).exit_code == 0
    nulls = pd.read_parquet(info / "part-00001.parquet")  # two rows of g000 without a path
    nulls["path"] = nulls["path"].astype("Int64")
    nulls.loc[[4, 7], "path"] = pd.NA
    nulls.to_parquet(info / "part-00001.parquet")
    result = runner.invoke(app, ["job", "aggregate", "--input", str(info), "--output",
                                 str(tmp_path / "out"), "--n-workers", "1", "--worker-memory",
                                 "1GiB", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout[result.stdout.index("{"):])
    assert summary["ok"] and set(summary["groups"]) == {"g000", "g001"}
    assert summary["rows_skipped_null_key"] == 2
    skipped = {g: s["rows_skipped_null_key"] for g, s in summary["groups"].items()}
    assert skipped == {"g000": 2, "g001": 0}
    warned = [r.getMessage() for r in caplog.records if r.name == "recc.jobs.aggregate"]
    assert len(warned) == 1 and "2 row(s) with a null path or Date" in warned[0]
    got = pd.read_parquet(tmp_path / "out" / "g000.parquet").set_index(["path", "Date"]).value
    files = [info / f"part-0000{i}.parquet" for i in range(3)]
    want = pd.concat(pd.read_parquet(f) for f in files).groupby(["path", "Date"]).value.sum()
    np.testing.assert_allclose(got.reindex(want.index).to_numpy(), want.to_numpy())
    assert cluster_names() == before  # the job's cluster is gone


def test_aggregate_without_a_manifest_says_how_to_make_one(tmp_path):
    result = runner.invoke(app, ["job", "aggregate", "--input", str(tmp_path), "--output",
                                 str(tmp_path / "out"), "--cluster", "nope"])
    assert result.exit_code != 0
    assert "manifest" in result.output


def test_aggregate_on_an_existing_cluster_by_name(tmp_path):
    from recc import RECCCluster

    info = tmp_path / "in"
    assert runner.invoke(app, ["job", "generate", "--output", str(info), "--files", "2",
                               "--paths", "20", "--dates", "5"]).exit_code == 0
    with RECCCluster(backend="local", n_workers=1, worker_memory="1GiB") as cluster:
        result = runner.invoke(app, ["job", "aggregate", "--input", str(info), "--output",
                                     str(tmp_path / "out"), "--cluster", cluster.name])
        assert result.exit_code == 0, result.output
        assert (tmp_path / "out" / "g000.parquet").exists()
        assert cluster.name in cluster_names()  # not the job's to delete
    refused = runner.invoke(app, ["job", "aggregate", "--input", str(info), "--output",
                                  str(tmp_path / "out"), "--cluster", "x", "--n-workers", "2"])
    assert refused.exit_code == 2 and "drop the spec flags" in refused.output


def test_aggregate_refuses_to_write_where_its_inputs_live(tmp_path):
    info = tmp_path / "in"
    assert runner.invoke(app, ["job", "generate", "--output", str(info), "--files", "2",
                               "--paths", "10", "--dates", "3"]).exit_code == 0
    before = {f.name: f.read_bytes() for f in info.iterdir()}
    # --cluster nope: a check that let this through would fail on the unknown cluster (exit 1).
    result = runner.invoke(app, ["job", "aggregate", "--input", str(info), "--output",
                                 str(info), "--cluster", "nope"])
    assert result.exit_code == 2, result.output
    assert f"output='{info}'" in result.output and f"--output {info}-sums" in result.output
    assert "Traceback" not in result.output and isinstance(result.exception, SystemExit)
    assert {f.name: f.read_bytes() for f in info.iterdir()} == before


def test_aggregate_refuses_a_file_listed_twice(tmp_path):
    info = tmp_path / "in"
    assert runner.invoke(app, ["job", "generate", "--output", str(info), "--files", "2",
                               "--paths", "10", "--dates", "3"]).exit_code == 0
    with open(info / "manifest.csv", "a") as f:
        f.write("./part-00001.parquet,g000\n")
    result = runner.invoke(app, ["job", "aggregate", "--input", str(info), "--output",
                                 str(tmp_path / "out"), "--cluster", "nope"])
    assert result.exit_code == 2, result.output
    assert f"file='{info}/./part-00001.parquet' is the same file as '{info}/part-00001.parquet'" \
        in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "out").exists()
