"""django-redis's own test suite (``tests/`` of the sdist of the installed version).

Upstream runs it against ``127.0.0.1:6379``: its conftest parametrizes a ``cache_settings``
fixture over the settings modules of ``tests/settings/`` (one per serializer, compressor and
client class), and each test loads its module as ``DJANGO_SETTINGS_MODULE``. Here, in a copy:

* every ``6379`` becomes the run's master's port (the settings modules, and the tests that
  spell the address out), and every ``56379`` (the cache upstream means to be unreachable) a
  port nobody listens on; the baseline's and the candidate's copies differ in nothing else;
* each settings module kept ends with a few lines that point its caches at the run's
  ``Target``: every cache whose client is ``DefaultClient`` gets the target's client class
  and options and, when the target has a replica, ``LOCATION`` [master, replica] (the first
  server upstream lists, then the same on the replica's port);
* Django loads one settings module per process, so each variant runs in a pytest of its own
  (the tests of no variant run with the first one).

The variants kept (``VARIANTS``) are those whose ``default`` cache is a ``DefaultClient`` on
TCP: each serializer and compressor. Left out: ``sqlite_herd`` and ``sqlite_sharding`` (they
test other client classes, which the client under test replaces rather than wraps),
``sqlite_sentinel*`` (a Sentinel on 26379), ``sqlite_usock`` (a Unix socket in /tmp).
"""

from __future__ import annotations

import re
from pathlib import Path

from distinct_counter.testing.servers import free_port
from tests.upstream import sdists
from tests.upstream.runs import Job, Target, write_plugin

NAME = "django-redis"
VARIANTS = (
    "sqlite",
    "sqlite_gzip",
    "sqlite_json",
    "sqlite_lz4",
    "sqlite_msgpack",
    "sqlite_zlib",
    "sqlite_zstd",
)

PYTEST_INI = """\
[pytest]
xfail_strict = true
testpaths = tests
"""

RETARGET = """

# -- added by distinct_counter's upstream harness (tests/upstream/django_redis_suite.py) --
def _dc_retarget(caches, client_class, master_port, replica_port, options):
    for cache in caches.values():
        cache_options = cache.setdefault("OPTIONS", {{}})
        if cache_options.get("CLIENT_CLASS", "{plain}") != "{plain}":
            continue
        cache_options["CLIENT_CLASS"] = client_class
        cache_options.update(options)
        if replica_port is not None:
            location = cache["LOCATION"]
            first = location[0] if isinstance(location, (list, tuple)) else location.split(",")[0]
            replica = first.replace(f":{{master_port}}", f":{{replica_port}}")
            cache["LOCATION"] = [first, replica]


_dc_retarget(CACHES, {client_class!r}, {master_port!r}, {replica_port!r}, {options!r})
"""


def source() -> Path:
    return sdists.sdist_tree(NAME, ("tests",))


def prepare(target: Target, directory: Path, variants: tuple[str, ...]) -> tuple[str, ...]:
    """Copy the suite into ``directory`` for ``target``; return the variants it has."""
    directory.mkdir(parents=True)
    tests = sdists.copy_tree(source() / "tests", directory / "tests")
    dead = free_port()
    for path in tests.rglob("*.py"):
        text = path.read_text()
        new = re.sub(r"\b56379\b", str(dead), re.sub(r"\b6379\b", str(target.master_port), text))
        if new != text:
            path.write_text(new)
    found = []
    for variant in variants:
        module = tests / "settings" / f"{variant}.py"
        if not module.exists():
            continue  # not in this version of django-redis
        found.append(variant)
        with module.open("a") as f:
            f.write(
                RETARGET.format(
                    plain="django_redis.client.DefaultClient",
                    client_class=target.client_class,
                    master_port=target.master_port,
                    replica_port=target.replica_port,
                    options=target.options,
                )
            )
    (directory / "pytest.ini").write_text(PYTEST_INI)
    write_plugin(directory)
    return tuple(found)


def jobs(
    target: Target,
    directory: Path,
    variants: tuple[str, ...] = VARIANTS,
    select: str | None = None,
) -> list[Job]:
    """The pytests of the suite against ``target``, one per variant (``select``: ``-k``)."""
    found = prepare(target, directory, variants)
    if not found:
        raise RuntimeError(f"{NAME} {sdists.installed(NAME)} has none of the variants {variants}")
    # pytest-django stays out: django-redis's conftest sets up Django itself, per variant.
    args = ["-p", "no:django", *(["-k", select] if select else [])]
    return [
        Job(
            directory,
            variant,
            args,
            {
                "DC_UPSTREAM_VARIANT": variant,
                "DC_UPSTREAM_UNPARAMETRIZED": "1" if i == 0 else "0",
                "DC_UPSTREAM_RESTORE_CACHES": "1",
            },
        )
        for i, variant in enumerate(found)
    ]
