"""Spec + plan + cost in one answer: what ``recc plan``, ``recc up`` and a cluster's repr show."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from recc.catalog import Catalog, get_catalog
from recc.cost import CostEstimate, estimate_cost
from recc.plan import NodePlan, plan_cluster
from recc.pricing import PriceBook
from recc.spec import ClusterSpec


@dataclass(frozen=True)
class Estimate:
    """What a cluster of ``spec`` needs (``plan``) and costs on EKS (``cost``)."""

    spec: ClusterSpec
    plan: NodePlan | None  # None on the local backend: no instances to plan
    cost: CostEstimate

    def to_dict(self) -> dict[str, Any]:
        """``{"spec": ..., "plan": ..., "cost": ...}`` as plain data."""
        plan = self.plan.to_dict() if self.plan else None
        return {"spec": self.spec.to_dict(), "plan": plan, "cost": self.cost.to_dict()}


def estimate(
    spec: ClusterSpec, catalog: Catalog | None = None, prices: PriceBook | None = None
) -> Estimate:
    """Plan ``spec`` on its instance types and price the plan.

    Example
    -------
    >>> from recc.spec import resolve_spec
    >>> estimate(resolve_spec(n_workers=100)).plan.instances
    34
    """
    plan = plan_cluster(spec, catalog or get_catalog())
    return Estimate(spec, plan, estimate_cost(plan, prices))
