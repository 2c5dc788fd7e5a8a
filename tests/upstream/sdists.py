"""The upstream test suites: a directory of the source distribution of the *installed* version
of a project (its tests are not in its wheel), downloaded once with pip and kept.

Kept in ``.upstream/`` at the root of the repository (git-ignored), or in
``$DISTINCT_COUNTER_UPSTREAM_CACHE``, one directory per project and version
(``.upstream/django-5.2.19/tests/cache``), so a rerun downloads nothing and a new version is
fetched by itself. Only the directories a harness asks for are extracted (Django's sdist holds
its whole test suite: 17,000 files).
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CACHE_VAR = "DISTINCT_COUNTER_UPSTREAM_CACHE"


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_VAR) or ROOT / ".upstream")


def installed(dist: str) -> str:
    return importlib.metadata.version(dist)


def download(dist: str, version: str, into: Path) -> Path:
    """Download the sdist of ``dist==version`` with pip into ``into``; return its path."""
    into.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-binary",
            ":all:",
            "--no-deps",
            "--disable-pip-version-check",
            "-q",
            "-d",
            str(into),
            f"{dist}=={version}",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    if proc.returncode != 0:
        raise RuntimeError(
            f"pip could not download the sdist of {dist}=={version}:\n{proc.stderr[-3000:]}"
        )
    # The file's name is normalised its own way by each project (django_redis-7.0.0.tar.gz).
    stem = re.sub(r"[-_.]+", "_", dist).lower()
    for path in into.iterdir():
        name = re.sub(r"[-_.]+", "_", path.name).lower()
        if name.startswith(f"{stem}_{version.replace('.', '_')}") and path.suffix == ".gz":
            return path
    raise RuntimeError(f"pip downloaded no sdist of {dist}=={version} into {into}")


def extract(archive: Path, subdirs: tuple[str, ...], into: Path) -> None:
    """Extract the members under ``subdirs`` (relative to the sdist's top directory)."""
    with tarfile.open(archive) as tar:
        members = []
        for member in tar.getmembers():
            top, _, rest = member.name.partition("/")
            if any(rest == d or rest.startswith(f"{d}/") for d in subdirs):
                member.name = rest
                members.append(member)
        if not members:
            raise RuntimeError(f"{archive.name} has none of {subdirs}")
        kwargs = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
        tar.extractall(into, members=members, **kwargs)  # type: ignore[arg-type]


def sdist_tree(dist: str, subdirs: tuple[str, ...]) -> Path:
    """The directory holding ``subdirs`` of the installed version's sdist, fetched if needed.

    Extracted apart, then renamed into place: a run killed halfway leaves no half tree that
    the next run would take for a whole one.
    """
    version = installed(dist)
    key = "-".join([dist.lower(), version, *(d.replace("/", "_") for d in subdirs)])
    target = cache_dir() / key
    if target.is_dir():
        return target
    cache_dir().mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache_dir(), prefix=".partial-") as tmp:
        archive = download(dist, version, Path(tmp) / "download")
        tree = Path(tmp) / "tree"
        extract(archive, subdirs, tree)
        with contextlib.suppress(OSError):  # another run put it there first: keep theirs
            tree.rename(target)
    if not target.is_dir():
        raise RuntimeError(f"{target} could not be made")
    return target


def copy_tree(source: Path, dest: Path) -> Path:
    """A fresh copy for one run (the harness rewrites ports in it; the cache stays pristine)."""
    shutil.copytree(source, dest, ignore=shutil.ignore_patterns("__pycache__"))
    return dest
