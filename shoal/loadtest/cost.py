"""Cost figures from a measured throughput and an instance's $/h.

Why here: users compare packings by dollars per million inferences, not by req/s;
the price comes from the pack stage's instance catalog (one source of truth for
prices), a plan's own total, or ``--price-per-hour``.
"""

from __future__ import annotations

from dataclasses import dataclass

from shoal.errors import UsageError

HOURS_PER_MONTH = 730.0  # 365 * 24 / 12


@dataclass(frozen=True)
class Price:
    per_hour: float
    basis: str  # how the figure was obtained, printed beside every cost


def price_from_catalog(instance_type: str, catalog_path: str | None = None, vcpus_used: int | None = None) -> Price:
    """$/h of ``instance_type``; with ``vcpus_used``, the share of it that many vCPUs are."""
    from shoal.pack.catalog import load_catalog, resolve

    catalog = load_catalog(catalog_path)
    if instance_type not in catalog.instance_types:
        known = ", ".join(sorted(catalog.instance_types))
        raise UsageError(f"instance type {instance_type!r} is not in the catalog; give --price-per-hour "
                         f"or one of: {known}")
    itype = resolve(catalog, instance_type)
    if vcpus_used and vcpus_used < itype.vcpu:
        share = vcpus_used / itype.vcpu
        return Price(itype.price * share, f"{vcpus_used}/{itype.vcpu} vCPU of {instance_type} "
                                          f"(${itype.price:g}/h, catalog)")
    return Price(itype.price, f"{instance_type} (${itype.price:g}/h, catalog)")


def resolve_price(price_per_hour: float | None, instance_type: str | None, plan_price: float | None = None,
                  vcpus_used: int | None = None) -> Price | None:
    """The override wins, then the catalog's type, then the plan's total; None if nothing is known."""
    if price_per_hour is not None:
        if price_per_hour < 0:
            raise UsageError("--price-per-hour must not be negative")
        return Price(price_per_hour, f"--price-per-hour {price_per_hour:g}")
    if instance_type:
        return price_from_catalog(instance_type, vcpus_used=vcpus_used)
    if plan_price:
        return Price(plan_price, f"plan total (${plan_price:g}/h)")
    return None


def per_million(throughput_rps: float, price: Price) -> float | None:
    """$ per million successful inferences at a sustained ``throughput_rps``."""
    if throughput_rps <= 0:
        return None
    return price.per_hour / (throughput_rps * 3600.0) * 1e6


def per_model_hour(price: Price, models: int) -> float | None:
    return price.per_hour / models if models > 0 else None


def per_camera_month(throughput_rps: float, fps: float, price: Price) -> float | None:
    """Video: frames/s served / camera fps = cameras one instance carries; its month split among them."""
    if throughput_rps <= 0 or fps <= 0:
        return None
    cameras = throughput_rps / fps
    return price.per_hour * HOURS_PER_MONTH / cameras


def cost_report(throughput_rps: float, price: Price | None, models: int, fps: float | None = None) -> dict:
    if price is None:
        return {"basis": None, "note": "no price: pass --price-per-hour or --instance-type"}
    out: dict = {"basis": price.basis, "price_per_hour": round(price.per_hour, 6),
                 "usd_per_million": _r(per_million(throughput_rps, price)),
                 "usd_per_model_hour": _r(per_model_hour(price, models))}
    if fps:
        out["fps"] = fps
        out["usd_per_camera_month"] = _r(per_camera_month(throughput_rps, fps, price))
    return out


def _r(x: float | None) -> float | None:
    return None if x is None else round(x, 6)
