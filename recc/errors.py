"""RECC's exceptions: one small, flat hierarchy.

Every error RECC raises on purpose is a :class:`RECCError`. Errors caused by something else
(an AWS or Kubernetes call, a file) keep that cause attached with ``raise ... from e``.
"""

from __future__ import annotations

from typing import Any


class RECCError(Exception):
    """Base class of every error RECC raises on purpose."""


class SpecError(RECCError, ValueError):
    """Invalid cluster specification, raised before any resource is created.

    Names the field, the value given and a valid example, so the message alone says how to
    fix the input.
    """

    def __init__(self, field: str, value: Any, problem: str, example: str):
        self.field = field
        self.value = value
        self.problem = problem
        self.example = example
        super().__init__(f"{field}={value!r}: {problem} (for example: {example})")


class PlanError(RECCError, ValueError):
    """The spec is valid, but no node of the chosen instance type can hold it."""


class ConfigError(RECCError):
    """Platform configuration is missing or wrong; the message names the key to set."""


class ClusterNotFound(RECCError, LookupError):
    """No cluster of that name is known to the backend."""


class BackendError(RECCError, RuntimeError):
    """A backend call failed; the cause is attached."""


class QuotaExceeded(RECCError):
    """Creating the cluster would break a user or team quota."""
