"""Make AWS calls fail or hang on purpose, and record every AWS call, through botocore.

:class:`AWSFaults` puts one ``before-call`` handler into ``botocore.handlers.BUILTIN_HANDLERS``
while it is installed, so every botocore session (hence every boto3 client) created meanwhile
runs it before each API call. The handler records ``("aws", service, operation)`` and, when an
injected failure matches, answers the call itself: the client raises the ``ClientError`` (the
modelled exception class when the service defines one) without anything reaching AWS or moto.
A hang blocks the call for the client's read timeout (or ``hang_seconds``), then raises the
``ReadTimeoutError`` botocore raises when a server never answers.

Clients created before :meth:`AWSFaults.install` do not run the handler (botocore copies the
built-in handlers when a session is made); :func:`recc.testing.emulated_platform` installs it
before anything else runs.
"""

from __future__ import annotations

import difflib
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import botocore.handlers
import botocore.session
from botocore.awsrequest import AWSResponse
from botocore.exceptions import ReadTimeoutError, UnknownServiceError

Record = Callable[[tuple[str, str, str]], None]


@dataclass
class _Fault:
    service: str
    operation: str
    times: int | None
    code: str
    status: int
    hang: bool
    hang_seconds: float | None


def take_fault(faults: list[Any], matches: Callable[[Any], bool]) -> Any | None:
    """The first pending fault that ``matches``, counting one use; a fault whose ``times``
    run out leaves ``faults`` (``times`` None: it stays until cleared)."""
    for fault in faults:
        if matches(fault):
            if fault.times is not None:
                fault.times -= 1
                if fault.times <= 0:
                    faults.remove(fault)
            return fault
    return None


class AWSFaults:
    """Failure injection and call recording for AWS calls made through botocore.

    Example
    -------
    >>> import boto3, botocore.exceptions
    >>> faults = AWSFaults(record=print)
    >>> faults.install()
    >>> faults.inject("sts", "GetCallerIdentity", code="Throttling", status=400)
    >>> try:
    ...     boto3.Session(region_name="us-east-1").client("sts").get_caller_identity()
    ... except botocore.exceptions.ClientError as e:
    ...     print(e.response["Error"]["Code"])
    ('aws', 'sts', 'GetCallerIdentity')
    Throttling
    >>> faults.uninstall()
    """

    def __init__(self, record: Record | None = None) -> None:
        self._record = record
        self._faults: list[_Fault] = []
        self._lock = threading.Lock()
        self._released = threading.Event()
        self._entry = ("before-call", self._before_call)

    def install(self) -> None:
        """Run the handler in every botocore session created from now on."""
        if self._entry not in botocore.handlers.BUILTIN_HANDLERS:
            self._released.clear()
            botocore.handlers.BUILTIN_HANDLERS.append(self._entry)

    def uninstall(self) -> None:
        """Stop affecting new sessions, forget pending faults, and release hanging calls."""
        if self._entry in botocore.handlers.BUILTIN_HANDLERS:
            botocore.handlers.BUILTIN_HANDLERS.remove(self._entry)
        self.clear()
        self._released.set()

    @contextmanager
    def installed(self) -> Iterator[AWSFaults]:
        """:meth:`install` for the duration of a ``with`` block, then :meth:`uninstall`."""
        self.install()
        try:
            yield self
        finally:
            self.uninstall()

    def inject(
        self,
        service: str,
        operation: str,
        times: int | None = 1,
        code: str = "InternalFailure",
        status: int = 500,
        hang: bool = False,
        hang_seconds: float | None = None,
    ) -> None:
        """Make the next ``times`` calls of ``service`` ``operation`` fail (None: until cleared).

        ``service`` is the name given to ``boto3.client`` (``"eks"``), ``operation`` the API
        name (``"CreateNodegroup"``); an unknown one is a ValueError naming close matches.
        A failure answers with error ``code`` and HTTP ``status``; ``hang=True`` blocks the call
        for ``hang_seconds`` (default: the client's read timeout) and raises ReadTimeoutError.
        """
        _check_operation(service, operation)
        if times is not None and times < 1:
            raise ValueError(f"times={times!r}: give a positive count or None (until cleared)")
        with self._lock:
            self._faults.append(_Fault(service, operation, times, code, status, hang, hang_seconds))

    def clear(self) -> None:
        """Forget every injected failure that has not fired yet."""
        with self._lock:
            self._faults.clear()

    def pending(self) -> list[tuple[str, str, int | None]]:
        """(service, operation, remaining times) of the injections not used up yet."""
        with self._lock:
            return [(f.service, f.operation, f.times) for f in self._faults]

    def _take(self, service: str, operation: str) -> _Fault | None:
        with self._lock:
            return take_fault(
                self._faults, lambda f: (f.service, f.operation) == (service, operation)
            )

    def _before_call(
        self, model: Any, params: dict[str, Any], context: dict[str, Any], **_: Any
    ) -> tuple[AWSResponse, dict[str, Any]] | None:
        service, operation = model.service_model.service_name, model.name
        if self._record is not None:
            self._record(("aws", service, operation))
        fault = self._take(service, operation)
        if fault is None:
            return None
        url = params.get("url", "")
        if fault.hang:
            config = context.get("client_config")
            seconds = fault.hang_seconds
            if seconds is None:
                seconds = float(getattr(config, "read_timeout", None) or 60)
            self._released.wait(seconds)
            raise ReadTimeoutError(endpoint_url=url)
        parsed = {
            "Error": {
                "Code": fault.code,
                "Message": f"injected failure of {service} {operation}",
            },
            "ResponseMetadata": {"HTTPStatusCode": fault.status, "RetryAttempts": 0},
        }
        return AWSResponse(url, fault.status, {}, None), parsed


def _check_operation(service: str, operation: str) -> None:
    session = botocore.session.get_session()
    try:
        names = session.get_service_model(service).operation_names
    except UnknownServiceError:
        close = difflib.get_close_matches(service, session.get_available_services(), n=3)
        raise ValueError(
            f"unknown AWS service {service!r} (for example: {', '.join(close) or 'eks'})"
        ) from None
    if operation not in names:
        close = difflib.get_close_matches(operation, names, n=3)
        raise ValueError(
            f"{service} has no operation {operation!r} "
            f"(for example: {', '.join(close) or names[0]})"
        )
