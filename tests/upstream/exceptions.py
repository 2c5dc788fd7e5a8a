"""The upstream tests that pass on plain django-redis and may fail on the client under test,
each with its reason. docs/cache.rst lists them too (``tests/test_upstream.py`` checks it).

Keys are ``SUITE::TEST ID``, as the harness prints them: ``django-redis::tests/test_backend.py::
TestDjangoRedisCache::test_save_string[sqlite]``, ``django::test_cache.py::BaseCacheTests::
test_simple``; a subtest's id ends with its description.
"""

from __future__ import annotations

EXCEPTIONS: dict[str, str] = {}
