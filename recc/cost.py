"""Cost estimates: instances x price + the EKS control-plane share, per node group. Pure
apart from the PriceBook it is handed."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from recc import config
from recc.plan import NodePlan
from recc.pricing import PriceBook


@dataclass(frozen=True)
class GroupCost:
    """What one node group costs per hour."""

    name: str
    instance_type: str
    instances: int
    capacity_type: str
    usd_per_instance_hour: float
    usd_per_hour: float
    price_source: str


@dataclass(frozen=True)
class CostEstimate:
    """Estimated USD per hour of a cluster (an estimate: prices and spot move)."""

    usd_per_hour: float
    instances_usd_per_hour: float
    control_plane_usd_per_hour: float
    groups: tuple[GroupCost, ...]
    estimate: bool = True

    def to_dict(self) -> dict[str, Any]:
        """Plain data for JSON/YAML output."""
        return asdict(self)


def estimate_cost(plan: NodePlan, prices: PriceBook | None = None) -> CostEstimate:
    """The hourly cost of running ``plan`` on EKS.

    Example
    -------
    >>> from recc.spec import resolve_spec
    >>> from recc.catalog import bundled_catalog
    >>> from recc.plan import plan_cluster
    >>> estimate_cost(plan_cluster(resolve_spec(), bundled_catalog())).usd_per_hour
    1.29
    """
    prices = prices or PriceBook()
    groups = []
    for g in plan.groups:
        price = prices.spot(g.instance_type) if g.spot else prices.on_demand(g.instance_type)
        groups.append(
            GroupCost(
                name=g.name,
                instance_type=g.instance_type,
                instances=g.instances,
                capacity_type="spot" if g.spot else "on-demand",
                usd_per_instance_hour=price.usd_per_hour,
                usd_per_hour=round(price.usd_per_hour * g.instances, 4),
                price_source=price.source,
            )
        )
    instances = round(sum(g.usd_per_hour for g in groups), 4)
    control_plane = float(config.get("cost.control-plane-usd-per-hour"))
    return CostEstimate(
        usd_per_hour=round(instances + control_plane, 4),
        instances_usd_per_hour=instances,
        control_plane_usd_per_hour=control_plane,
        groups=tuple(groups),
    )


def local_cost() -> CostEstimate:
    """The local backend runs on hardware already paid for: zero."""
    return CostEstimate(0.0, 0.0, 0.0, ())
