"""The test project without its servers: what ``tests.settings`` builds on, and what mypy's
Django plugin loads (it must start nothing)."""

from __future__ import annotations

import django

SECRET_KEY = "tests"
USE_TZ = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "distinct_counter",
    "tests.testapp",
    "tests.shapes",
    "tests.typesapp",
]
if django.VERSION >= (5, 0):
    INSTALLED_APPS.append("tests.shapes5")  # generated fields and database defaults
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}}
CACHES = {
    "default": {"BACKEND": "django_redis.cache.RedisCache", "LOCATION": "redis://127.0.0.1:1/0"}
}
