"""The saga runner: ordered undo, ambiguous failures, parallel branches, leftovers, messages."""

from __future__ import annotations

import threading

import pytest
from botocore.exceptions import ClientError
from kubernetes.client.exceptions import ApiException

from recc.lifecycle import (
    Aborted,
    Leftover,
    Saga,
    StepFailed,
    describe,
    failure_message,
    maybe_done,
)


def client_error(code: str, http: int) -> ClientError:
    return ClientError(
        {"Error": {"Code": code, "Message": "nope"}, "ResponseMetadata": {"HTTPStatusCode": http}},
        "CreateNodegroup",
    )


def api_error(status: int) -> ApiException:
    e = ApiException(status=status, reason="Reason")
    e.body = '{"message": "namespaces \\"x\\" is forbidden"}'
    return e


def test_rollback_undoes_completed_steps_newest_first():
    log = []
    saga = Saga()
    for name in "abc":
        saga.run(
            name, lambda n=name: log.append(f"do {n}"), undo=lambda n=name: log.append(f"undo {n}")
        )
    with pytest.raises(StepFailed) as info:
        saga.run("d", lambda: 1 / 0, undo=lambda: log.append("undo d"))
    assert info.value.step == "d" and isinstance(info.value.__cause__, ZeroDivisionError)
    assert saga.rollback() == []
    # d failed with a local error: whether it had an effect is unknown, so it is undone too.
    assert log == ["do a", "do b", "do c", "undo d", "undo c", "undo b", "undo a"]
    assert saga.rollback() == []  # nothing twice


@pytest.mark.parametrize(
    "error, undone",
    [
        (client_error("InvalidParameterException", 400), False),
        (client_error("ServiceUnavailable", 503), True),
        (api_error(409), False),
        (api_error(422), False),
        (api_error(500), True),
        (TimeoutError("read timed out"), True),
    ],
)
def test_a_failed_step_is_undone_only_when_it_may_have_had_an_effect(error, undone):
    assert maybe_done(error) is undone
    log = []
    saga = Saga()

    def fail():
        raise error

    with pytest.raises(StepFailed):
        saga.run("x", fail, undo=lambda: log.append("undo"))
    saga.rollback()
    assert log == (["undo"] if undone else [])


def test_failed_undos_become_leftovers_with_their_remedy_and_the_rest_still_run():
    log = []
    saga = Saga()
    saga.run("a", lambda: None, undo=lambda: log.append("undo a"))

    def broken_undo():
        raise client_error("AccessDenied", 403)

    saga.run("b", lambda: None, undo=broken_undo, remedy="aws eks delete-nodegroup ...")
    saga.run("c", lambda: None, undo=lambda: log.append("undo c"))
    assert saga.rollback() == [Leftover("b", "AccessDenied: nope", "aws eks delete-nodegroup ...")]
    assert log == ["undo c", "undo a"]


def test_parallel_branches_run_at_once_and_a_failure_stops_the_others():
    saga = Saga()
    both_started = threading.Barrier(2, timeout=5)
    log = []

    def kube_branch():
        saga.run("namespace", both_started.wait, undo=lambda: log.append("undo namespace"))
        saga.run("secret", lambda: 1 / 0, undo=lambda: log.append("undo secret"))

    def aws_branch():
        saga.run("launch template", both_started.wait, undo=lambda: log.append("undo lt"))
        saga.aborted.wait(5)  # the other branch fails meanwhile
        saga.run("node group", lambda: log.append("node group made"), undo=lambda: None)

    with pytest.raises(StepFailed) as info:
        saga.parallel(kube_branch, aws_branch)
    assert info.value.step == "secret"
    assert "node group made" not in log
    assert set(saga.completed) == {"namespace", "launch template", "secret"}
    saga.rollback()
    assert log[0] == "undo secret" and set(log) == {"undo secret", "undo namespace", "undo lt"}


def test_parallel_returns_each_branch_result():
    saga = Saga()
    assert saga.parallel(lambda: saga.run("a", lambda: 1), lambda: saga.run("b", lambda: 2)) == [
        1,
        2,
    ]


def test_after_a_failure_no_new_step_starts():
    saga = Saga()
    with pytest.raises(StepFailed):
        saga.run("a", lambda: 1 / 0)
    with pytest.raises(Aborted):
        saga.run("b", lambda: None)


def test_describe_strips_aws_and_kubernetes_noise():
    assert describe(client_error("ResourceInUseException", 409)) == "ResourceInUseException: nope"
    assert describe(api_error(403)) == 'HTTP 403 Reason: namespaces "x" is forbidden'
    assert describe(ValueError()) == "ValueError"


def test_failure_message_lists_leftovers_with_commands():
    message = failure_message(
        "creating cluster c",
        "node group c-default",
        "ResourceLimitExceeded: too many",
        [
            Leftover(
                "launch template c-default",
                "AccessDenied: no",
                "aws ec2 delete-launch-template --launch-template-name c-default",
            )
        ],
        remedy="recc down c",
    )
    assert message.startswith("creating cluster c failed at step 'node group c-default'")
    assert "aws ec2 delete-launch-template --launch-template-name c-default" in message
    assert "recc down c" in message and "nothing was left" not in message
