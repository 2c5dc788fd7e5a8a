"""The router's system checks: its settings (E010-E018, E006, E008) and its installation
(E019)."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core import checks

from distinct_counter.conf import database_errors, is_subclass_path
from distinct_counter.routing.conf import conf

ROUTER = "distinct_counter.routing.router.PrimaryReplicaRouter"
PIN_MIDDLEWARE = "distinct_counter.routing.middleware.PinPrimaryMiddleware"


def check_router(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """The checks of the router's settings (``PRIMARY``, ``REPLICAS``, ``PIN_*``...).

    A router installed without replicas is fine: every read goes to the primary.
    """
    errors = conf.errors()
    primary = conf.value_or("PRIMARY", None)
    replicas: list[str] = conf.value_or("REPLICAS", [])
    errors += _alias_errors(primary, replicas)
    samesite = conf.value_or("PIN_COOKIE_SAMESITE", None)
    if (
        samesite is not None
        and samesite.lower() == "none"
        and not conf.value_or("PIN_COOKIE_SECURE", False)
    ):
        errors.append(
            checks.Error(
                "DISTINCT_COUNTER['PIN_COOKIE_SAMESITE'] is 'None' but PIN_COOKIE_SECURE is "
                "off: browsers reject such a cookie, so clients would never be pinned.",
                hint="Set PIN_COOKIE_SECURE to True (HTTPS), or use 'Lax'.",
                id="distinct_counter.E016",
            )
        )
    if conf.value_or("MAX_REPLICA_LAG", None) is not None:
        for alias in replicas:
            engine = settings.DATABASES.get(alias, {}).get("ENGINE", "")
            if alias in settings.DATABASES and "postgres" not in engine:
                errors.append(
                    checks.Error(
                        f"DISTINCT_COUNTER['MAX_REPLICA_LAG'] is set but the replica {alias!r} "
                        f"is not PostgreSQL ({engine}): its lag cannot be measured.",
                        hint="Set MAX_REPLICA_LAG to None, or use PostgreSQL streaming replicas.",
                        id="distinct_counter.E018",
                    )
                )
    uses_pin = PIN_MIDDLEWARE in (getattr(settings, "MIDDLEWARE", None) or ())
    routers = getattr(settings, "DATABASE_ROUTERS", ())
    if (replicas or uses_pin) and not any(is_subclass_path(r, ROUTER) for r in routers):
        errors.append(
            checks.Error(
                (
                    "DISTINCT_COUNTER['REPLICAS'] is set"
                    if replicas
                    else f"{PIN_MIDDLEWARE} is in MIDDLEWARE"
                )
                + " but DATABASE_ROUTERS has no PrimaryReplicaRouter, so no "
                "read goes to a replica.",
                hint=f"Add {ROUTER!r} to DATABASE_ROUTERS.",
                id="distinct_counter.E019",
            )
        )
    return errors


def _alias_errors(primary: str | None, replicas: list[str]) -> list[checks.CheckMessage]:
    """E006 for aliases missing from ``DATABASES``; E012 for a replica that is the primary or
    is listed twice."""
    errors = database_errors(
        {"PRIMARY": primary, **{f"REPLICAS[{i}]": a for i, a in enumerate(replicas)}}
    )
    seen: set[str] = set()
    for alias in replicas:
        if alias == primary or alias in seen:
            errors.append(
                checks.Error(
                    f"DISTINCT_COUNTER['REPLICAS'] lists {alias!r} "
                    + ("which is the PRIMARY." if alias == primary else "twice."),
                    hint="List each replica once, and not the primary: reads already fall back to "
                    "the primary when no replica is usable.",
                    id="distinct_counter.E012",
                )
            )
        seen.add(alias)
    return errors
