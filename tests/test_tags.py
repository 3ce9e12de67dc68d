"""One tag and label schema: required tags win over user tags, values fit each system's rules,
and only what carries RECC's managed-by mark counts as RECC's."""

from __future__ import annotations

import datetime as dt
import random
import re
import string

import pytest

from recc.naming import (
    MAX_CLUSTER_NAME,
    aws_tag_value,
    default_cluster_name,
    dns_safe,
    is_dns1123_label,
    label_value,
)
from recc.tags import (
    MANAGED_BY_LABEL,
    MANAGED_BY_TAG,
    Ownership,
    aws_tags,
    is_managed,
    k8s_annotations,
    k8s_labels,
    parse_rfc3339,
    rfc3339,
)

# Kubernetes' own rules (apimachinery validation): label values and qualified label keys.
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
LABEL_KEY = re.compile(
    r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$"
)
# AWS tag values: letters, digits, spaces and _ . : / = + - @, at most 256 characters.
AWS_TAG_VALUE = re.compile(r"^[\w .:/=+\-@]{0,256}$")

CREATED = dt.datetime(2026, 11, 22, 10, 21, 38, tzinfo=dt.timezone.utc)
OWNER = Ownership(
    cluster="recc-alice-1a2b3c",
    user="alice@example.com",
    namespace="recc-alice-1a2b3c",
    created_at=CREATED,
    job="risk aggregation: Q4",
    idle_timeout=3600,
    max_lifetime=12 * 3600,
)
REQUIRED_KEYS = {
    "recc:cluster",
    "recc:user",
    "recc:namespace",
    "recc:job",
    "recc:created-at",
    "recc:idle-timeout",
    "recc:expires-at",
    "recc:managed-by",
    "recc:version",
}


def assert_valid_label_value(value: str) -> None:
    assert len(value) <= 63, value
    assert LABEL_VALUE.match(value), value


# --- AWS tags --------------------------------------------------------------------------------


def test_aws_tags_carry_the_whole_schema() -> None:
    tags = aws_tags(OWNER, "0.1.0")
    assert set(tags) == REQUIRED_KEYS
    assert tags["recc:cluster"] == "recc-alice-1a2b3c"
    assert tags["recc:user"] == "alice@example.com"
    assert tags["recc:job"] == "risk aggregation: Q4"
    assert tags["recc:created-at"] == "2026-11-22T10:21:38Z"
    assert tags["recc:idle-timeout"] == "1h"
    assert tags["recc:expires-at"] == "2026-11-22T22:21:38Z"
    assert tags["recc:managed-by"] == "recc"
    assert tags["recc:version"] == "0.1.0"


def test_required_tags_win_over_user_tags() -> None:
    user = {
        "recc:cluster": "someone-else",
        "recc:managed-by": "not-recc",
        "recc:expires-at": "never",
        "team": "quant-research",
        "cost-centre": "CC 1234",
    }
    tags = aws_tags(OWNER, "0.1.0", user)
    assert tags["recc:cluster"] == "recc-alice-1a2b3c"
    assert tags["recc:managed-by"] == "recc"
    assert tags["recc:expires-at"] == "2026-11-22T22:21:38Z"
    assert tags["team"] == "quant-research" and tags["cost-centre"] == "CC 1234"
    assert set(tags) == REQUIRED_KEYS | {"team", "cost-centre"}


def test_no_job_and_no_lifetime() -> None:
    owner = Ownership("c", "u", "c", CREATED)
    tags = aws_tags(owner, "0.1.0")
    assert (tags["recc:job"], tags["recc:expires-at"], tags["recc:idle-timeout"]) == (
        "none",
        "never",
        "never",
    )
    assert owner.expires_at is None


def test_aws_tag_values_are_sanitised() -> None:
    tags = aws_tags(OWNER, "0.1.0", {"note": "line1\nline2 <b>&" + "x" * 300})
    for value in tags.values():
        assert AWS_TAG_VALUE.match(value), value
    assert tags["note"].startswith("line1_line2 _b__")
    assert len(tags["note"]) == 256


@pytest.mark.parametrize("value", ["plain", "a b:c/d=e+f-g@h_i.j", "ünïcode"])
def test_allowed_aws_tag_values_are_kept(value: str) -> None:
    assert aws_tag_value(value) == value


def test_rfc3339_round_trip_in_utc() -> None:
    plus_two = dt.timezone(dt.timedelta(hours=2))
    moment = dt.datetime(2026, 11, 22, 12, 21, 38, 999, tzinfo=plus_two)
    assert rfc3339(moment) == "2026-11-22T10:21:38Z"
    assert parse_rfc3339("2026-11-22T10:21:38Z") == CREATED
    assert parse_rfc3339("2026-11-22T12:21:38+02:00") == CREATED


# --- Kubernetes labels -----------------------------------------------------------------------


def test_k8s_labels() -> None:
    labels = k8s_labels(OWNER)
    assert labels == {
        "recc.io/cluster": "recc-alice-1a2b3c",
        "recc.io/user": "alice_example.com",
        "recc.io/job": "risk_aggregation_Q4",
        MANAGED_BY_LABEL: "recc",
    }
    for key, value in labels.items():
        assert LABEL_KEY.match(key), key
        assert_valid_label_value(value)


def test_labels_never_come_out_empty_for_user_and_job() -> None:
    labels = k8s_labels(Ownership("c", "@@@", "c", CREATED, job="!!!"))
    assert labels["recc.io/user"] == "unknown"
    assert labels["recc.io/job"] == "none"


def test_annotations_keep_raw_values() -> None:
    annotations = k8s_annotations(OWNER)
    assert annotations["recc.io/user"] == "alice@example.com"
    assert annotations["recc.io/created-at"] == "2026-11-22T10:21:38Z"
    assert annotations["recc.io/expires-at"] == "2026-11-22T22:21:38Z"


@pytest.mark.parametrize(
    "raw, cleaned",
    [
        ("alice", "alice"),
        ("alice@example.com", "alice_example.com"),
        ("Risk Q4: final", "Risk_Q4_final"),
        ("-leading.and.trailing_", "leading.and.trailing"),
        ("a" * 62 + "@@b", "a" * 62),  # cut at 63, then the trailing '_' goes
        ("x" * 100, "x" * 63),
        ("é" * 70, ""),
        ("line\nbreak", "line_break"),
        ("{{ .Values }}", "Values"),
    ],
)
def test_label_value_sanitising(raw: str, cleaned: str) -> None:
    assert label_value(raw) == cleaned
    assert_valid_label_value(label_value(raw))


def test_label_value_is_always_valid() -> None:
    rng = random.Random(20261122)
    alphabet = string.printable + "éü@€ "
    for _ in range(2000):
        raw = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 120)))
        assert_valid_label_value(label_value(raw))


def test_valid_label_values_pass_unchanged() -> None:
    for value in ("a", "A-b_c.d", "x" * 63, "2026.11.22"):
        assert label_value(value) == value


# --- the deletion guard ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "marks, managed",
    [
        ({MANAGED_BY_TAG: "recc"}, True),
        ({MANAGED_BY_LABEL: "recc"}, True),
        ({MANAGED_BY_TAG: "recc", "team": "x"}, True),
        ({}, False),
        ({MANAGED_BY_TAG: "RECC"}, False),
        ({MANAGED_BY_TAG: "recc-fake"}, False),
        ({MANAGED_BY_LABEL: "helm"}, False),
        ({"recc:cluster": "recc-alice-1a2b3c"}, False),  # a RECC-looking name is not enough
        ({"managed-by": "recc"}, False),
    ],
)
def test_is_managed(marks: dict[str, str], managed: bool) -> None:
    assert is_managed(marks) is managed


def test_everything_recc_tags_is_managed() -> None:
    assert is_managed(aws_tags(OWNER, "0.1.0", {"team": "x"}))
    assert is_managed(k8s_labels(OWNER))


# --- names -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "user", ["alice", "Ünïcode User@corp", "---", "x" * 100, "a.b_c", "ALICE", "0"]
)
def test_default_cluster_name_is_always_a_valid_name(user: str) -> None:
    name = default_cluster_name(user)
    assert is_dns1123_label(name, MAX_CLUSTER_NAME), name
    assert name.startswith("recc-")
    assert default_cluster_name(user) != name  # a fresh short id each time


def test_default_cluster_name_uses_recc_user(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECC_USER", "ci-bot")
    assert re.fullmatch(r"recc-ci-bot-[0-9a-f]{6}", default_cluster_name())


@pytest.mark.parametrize(
    "name, valid",
    [
        ("recc-alice-1", True),
        ("a", True),
        ("x" * 63, True),
        ("x" * 64, False),
        ("Alice", False),
        ("-a", False),
        ("a-", False),
        ("a_b", False),
        ("a.b", False),
        ("", False),
        ("abc\n", False),  # a "$" anchor would accept the trailing newline
        ("abc\n\n", False),
    ],
)
def test_is_dns1123_label(name: str, valid: bool) -> None:
    assert is_dns1123_label(name) is valid


def test_dns_safe_folds_and_trims() -> None:
    assert dns_safe("Jane.Doe@Bank", 20) == "jane-doe-bank"
    assert dns_safe("abc-def", 4) == "abc"  # no trailing '-' after trimming
    assert dns_safe("@@@", 10) == "user"
