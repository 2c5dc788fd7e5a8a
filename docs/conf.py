"""Sphinx configuration of distinct_counter's documentation.

``automodule`` imports distinct_counter's modules, which need Django set up: the settings
below are configured in place and need no server (nothing connects while documenting).
"""

from __future__ import annotations

import sys
from pathlib import Path

import django
from django.conf import settings

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

if not settings.configured:
    settings.configure(
        SECRET_KEY="docs",
        USE_TZ=True,
        DEFAULT_AUTO_FIELD="django.db.models.BigAutoField",
        INSTALLED_APPS=["django.contrib.contenttypes", "distinct_counter"],
        DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}},
        CACHES={
            "default": {
                "BACKEND": "django_redis.cache.RedisCache",
                "LOCATION": "redis://127.0.0.1:6379/0",
            }
        },
    )
django.setup()

import distinct_counter  # noqa: E402

project = "distinct_counter"
author = "distinct_counter contributors"
copyright = "distinct_counter contributors"
release = version = distinct_counter.__version__

extensions = ["sphinx.ext.autodoc"]
autodoc_member_order = "bysource"
autodoc_typehints = "description"
# Django's docstrings of the overridden QuerySet methods would describe the uncounted ones.
autodoc_inherit_docstrings = False
# Django's lazy objects and forward references in annotations are not worth a warning each.
nitpicky = False
exclude_patterns = ["_build"]
html_theme = "alabaster"
html_static_path: list[str] = []
