from django.apps import AppConfig


class IndexAppConfig(AppConfig):
    """Installed only by the index tests (``tests/index_fixtures.py``): its counted field
    without an index would otherwise trip ``distinct_counter.W001`` in every ``manage.py
    check``."""

    name = "tests.indexapp"
    label = "indexapp"
    default_auto_field = "django.db.models.BigAutoField"
