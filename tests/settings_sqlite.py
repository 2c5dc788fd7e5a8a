"""The quick extra run: the counting tests on SQLite (Redis stays real)."""

from __future__ import annotations

import os
import tempfile

from tests.settings import *  # noqa: F403

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.path.join(tempfile.mkdtemp(prefix="distinct_counter-sqlite-"), "db.sqlite3"),
        "OPTIONS": {"timeout": 20},
    },
}
