"""Where the job reads and writes, checked before any cluster exists: a file listed twice in a
group and an output directory that holds inputs are refused; outputs follow the umask."""

from __future__ import annotations

import contextlib
import os

import pytest

from recc.datastore import DataStore, Store
from recc.errors import SpecError
from recc.jobs import aggregate, generate
from recc.jobs.locations import atomic_output, canonical, check_output, check_repeats, file_mode
from recc.jobs.manifest import ManifestError

STORE = DataStore()


class NoCluster:
    """A client the job must never reach: each refusal happens before anything runs."""

    def __getattr__(self, name):
        raise AssertionError(f"the job used its client ({name}) before refusing")


@contextlib.contextmanager
def umask(mask: int):
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def mode_of(path) -> int:
    return os.stat(path).st_mode & 0o777


@pytest.fixture
def sims(tmp_path):
    return generate(str(tmp_path / "sims"), group_sizes=[2, 1], paths=5, dates=3)


def test_canonical_collapses_dot_and_empty_segments_but_keeps_dotdot():
    assert canonical("s3://b//sims/./a.parquet") == "s3://b/sims/a.parquet"
    assert canonical("s3://b/sims/") == "s3://b/sims"
    assert canonical("s3://b/x/../a.parquet") == "s3://b/x/../a.parquet"
    assert canonical("recc://sims//./a.parquet") == "recc://sims/a.parquet"


def test_a_file_listed_twice_in_a_manifest_is_refused_naming_both(sims):
    manifest = f"{sims.output}/manifest.csv"
    with open(manifest, "a") as f:
        f.write("./part-00000.parquet,g000\n")
    before = sorted(os.listdir(sims.output))
    with pytest.raises(ManifestError) as e:
        aggregate(sims.output, f"{sims.output}-sums", client=NoCluster())
    message = str(e.value)
    assert manifest in message and "group 'g000'" in message
    assert f"file='{sims.output}/./part-00000.parquet'" in message
    assert f"'{sims.output}/part-00000.parquet'" in message
    assert "for example" in message and "summed twice" in message
    assert sorted(os.listdir(sims.output)) == before
    assert not os.path.exists(f"{sims.output}-sums")


def test_a_symlink_to_a_listed_file_is_the_same_file(sims, tmp_path):
    real = f"{sims.output}/part-00000.parquet"
    os.symlink(real, tmp_path / "alias.parquet")
    with pytest.raises(ManifestError, match="alias.parquet.*summed twice"):
        aggregate(groups={"g": [real, str(tmp_path / "alias.parquet")]},
                  output=str(tmp_path / "out"), client=NoCluster())


def test_urls_are_compared_normalised():
    with pytest.raises(ManifestError, match=r"file='s3://b//sims/\./x.parquet'.*'s3://b/sims/x"):
        check_repeats({"g": ["s3://b/sims/x.parquet", "s3://b//sims/./x.parquet"]})
    check_repeats({"g": ["s3://b/sims/x.parquet", "s3://b/sims/y.parquet"]})


def test_one_file_in_two_groups_and_hard_links_are_allowed(sims, tmp_path):
    real = f"{sims.output}/part-00000.parquet"
    os.link(real, tmp_path / "copy.parquet")
    check_repeats({"g1": [real, str(tmp_path / "copy.parquet")], "g2": [real]})


def test_output_equal_to_the_input_directory_is_refused(sims):
    files = {n: open(f"{sims.output}/{n}", "rb").read() for n in os.listdir(sims.output)}
    for output in (sims.output, f"{sims.output}/", f"{sims.output}/../sims"):
        with pytest.raises(SpecError) as e:
            aggregate(sims.output, output, client=NoCluster())
        assert e.value.field == "output" and e.value.value == output
        assert "holds no input" in str(e.value)
        assert f"(for example: --output {output.rstrip('/')}-sums)" in str(e.value)
    assert {n: open(f"{sims.output}/{n}", "rb").read() for n in os.listdir(sims.output)} == files


def test_output_where_any_input_lives_is_refused(sims, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    stray = generate(str(other), files=1, paths=5, dates=3).groups["g000"][0]
    groups = {"a": [f"{sims.output}/part-00000.parquet"], "b": [f"{other}/{stray}"]}
    with pytest.raises(SpecError, match=f"holds the input {other}/{stray} \\(group b\\)"):
        aggregate(groups=groups, output=str(other), client=NoCluster())
    with pytest.raises(SpecError, match="is the input file"):
        aggregate(groups=groups, output=groups["a"][0], client=NoCluster())
    # The manifest is an input too, even when the files it lists live elsewhere.
    (tmp_path / "m").mkdir()
    manifest = tmp_path / "m" / "manifest.csv"
    manifest.write_text(f"file,group\n{groups['a'][0]},a\n")
    with pytest.raises(SpecError, match="holds the input .*m/manifest.csv"):
        aggregate(manifest=str(manifest), output=str(tmp_path / "m"), client=NoCluster())


def test_symlinks_cannot_hide_an_overlap(sims, tmp_path):
    os.symlink(sims.output, tmp_path / "alias")
    with pytest.raises(SpecError, match="holds the input"):
        aggregate(groups={"g": [f"{sims.output}/part-00000.parquet"]},
                  output=str(tmp_path / "alias"), client=NoCluster())
    # An input that is a symlink into the output directory would be replaced by its output.
    out = tmp_path / "out"
    out.mkdir()
    os.symlink(out / "g.parquet", tmp_path / "link.parquet")
    with pytest.raises(SpecError, match="link.parquet"):
        check_output(STORE, str(out), {"g": [str(tmp_path / "link.parquet")]})
    # And a symlink in the output directory (to an input elsewhere) is an input there.
    os.symlink(f"{sims.output}/part-00000.parquet", out / "in.parquet")
    with pytest.raises(SpecError, match="in.parquet"):
        check_output(STORE, str(out), {"g": [str(out / "in.parquet")]})


def test_an_output_directory_inside_or_above_the_inputs_is_fine(sims, tmp_path):
    groups = {"g": [f"{sims.output}/part-00000.parquet"]}
    check_output(STORE, f"{sims.output}/sums", groups, input_dir=sims.output)
    check_output(STORE, str(tmp_path), groups, input_dir=sims.output)
    check_output(STORE, "s3://b/sums", {"g": ["s3://b/sims/x.parquet"]})


def test_urls_and_store_keys_are_compared_where_they_land(tmp_path):
    with pytest.raises(SpecError, match="holds the input"):
        check_output(STORE, "s3://b/sims/", {"g": ["s3://b//sims/x.parquet"]})
    root = str(tmp_path / "root")
    store = DataStore(stores={"LOCAL": Store("LOCAL", root)}, read=("LOCAL",), write=("LOCAL",))
    with pytest.raises(SpecError, match="recc://sims/x.parquet"):
        check_output(store, f"{root}/sims", {"g": ["recc://sims/x.parquet"]})
    with pytest.raises(SpecError, match="holds the input"):
        check_output(store, "recc://sims", {"g": [f"{root}/sims/x.parquet"]})
    check_output(store, "recc://sums", {"g": ["recc://sims/x.parquet"]})


@pytest.mark.parametrize("mask", [0o027, 0o002])
def test_outputs_follow_the_umask(tmp_path, mask):
    with umask(mask):
        assert file_mode() == 0o666 & ~mask
        info = generate(str(tmp_path / "sims"), files=1, paths=5, dates=3)
        with atomic_output(STORE, str(tmp_path / "out.bin")) as f:
            f.write(b"x")
    assert mode_of(info.manifest) == mode_of(f"{info.output}/part-00000.parquet") == 0o666 & ~mask
    assert mode_of(tmp_path / "out.bin") == 0o666 & ~mask
    assert sorted(os.listdir(tmp_path)) == ["out.bin", "sims"]  # no temporary file left


def test_an_explicit_mode_wins_and_a_failed_write_publishes_nothing(tmp_path):
    with atomic_output(STORE, str(tmp_path / "a"), 0o600) as f:
        f.write(b"x")
    assert mode_of(tmp_path / "a") == 0o600
    with pytest.raises(RuntimeError), atomic_output(STORE, str(tmp_path / "b")) as f:
        f.write(b"half")
        raise RuntimeError("boom")
    assert sorted(os.listdir(tmp_path)) == ["a"]
