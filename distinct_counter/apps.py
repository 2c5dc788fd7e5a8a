from __future__ import annotations

from typing import Any

from django.apps import AppConfig
from django.core.signals import setting_changed


class DistinctCounterConfig(AppConfig):
    name = "distinct_counter"
    verbose_name = "Distinct counter"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from distinct_counter import checks, handlers
        from distinct_counter.registry import counted_models

        checks.register()
        for model in counted_models():
            handlers.connect(model)
        setting_changed.connect(_setting_changed, dispatch_uid="distinct_counter")


def _setting_changed(setting: str, **kwargs: Any) -> None:
    """Forget what was derived from settings: Redis clients and breakers."""
    if setting in ("DISTINCT_COUNTER", "CACHES"):
        from distinct_counter import cache, connection

        connection.reset()
        cache.reset()
