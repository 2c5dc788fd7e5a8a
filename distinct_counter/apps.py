from __future__ import annotations

from typing import Any

from django.apps import AppConfig
from django.core.signals import request_finished, setting_changed


class DistinctCounterConfig(AppConfig):
    name = "distinct_counter"
    verbose_name = "Distinct counter"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from django.apps import apps

        from distinct_counter import checks
        from distinct_counter.counting import handlers

        checks.register()
        # Proxies and multi-table children of counted models, and the models counted foreign
        # keys point at, need handlers too: every model is offered, each takes what it needs.
        for model in apps.get_models():
            handlers.connect(model)
        setting_changed.connect(_setting_changed, dispatch_uid="distinct_counter")
        request_finished.connect(_request_finished, dispatch_uid="distinct_counter")


def _setting_changed(setting: str, **kwargs: Any) -> None:
    """Forget what was derived from settings: parsed options, Redis clients, breakers,
    replica health."""
    from distinct_counter import conf, connection
    from distinct_counter.counting import registry
    from distinct_counter.routing import health

    conf.forget_parsed()
    if setting in ("DISTINCT_COUNTER", "CACHES"):
        connection.reset()
    if setting in ("DISTINCT_COUNTER", "DATABASES"):
        health.reset()
    if setting in ("DATABASES", "DATABASE_ROUTERS"):
        registry.clear_cache()  # the database each counter follows


def _request_finished(**kwargs: Any) -> None:
    """What a request queued (``SEND = "background"``) is sent by the time it ends, after
    its response: by then the sender thread has usually sent it, and where no thread runs
    (uWSGI without ``--enable-threads``) this sends it."""
    from distinct_counter.counting.deltas import sender

    sender.flush()
