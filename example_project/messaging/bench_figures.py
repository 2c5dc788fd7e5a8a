"""The figures of ``manage.py bench`` and ``bench_cache``, and the table they print as."""

from __future__ import annotations

import os
import platform
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from django.core.management.base import BaseCommand


def host(packages: Mapping[str, str]) -> dict[str, Any]:
    """The machine and the Python side's versions, for a benchmark's header: CPUs, memory,
    platform, load average, Python, Django, and each of ``packages`` (name in the header ->
    distribution name; None when it is not installed)."""
    from importlib import metadata

    import django

    memory = ""
    try:
        with open("/proc/meminfo") as meminfo:
            memory = f"{int(meminfo.readline().split()[1]) / 1024**2:.1f} GiB"
    except (OSError, ValueError, IndexError):
        pass
    versions: dict[str, str | None] = {}
    for name, package in packages.items():
        try:
            versions[name] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "nproc": os.cpu_count(),
        "memory": memory,
        "platform": platform.platform(),
        "loadavg": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "django": django.get_version(),
        **versions,
    }


@dataclass
class Figure:
    """One line of the results: ``ratio`` is ``measured / baseline``, except for speed-ups
    (``higher_is_better``), where it is ``baseline / measured``.

    ``ratio_unit`` is ``"x"`` for a plain ratio, else what the ratio counts (``"RTT"``: an
    overhead in round trips; ``"B"``: bytes per value); ``baseline_unit`` is the baseline's
    unit when it is not ``unit`` (a count of ``"values"``, say)."""

    name: str
    unit: str
    measured: float
    baseline: float
    ratio: float
    target: float | None
    higher_is_better: bool = False
    note: str = ""
    ratio_unit: str = "x"
    baseline_unit: str = ""

    @property
    def passed(self) -> bool | None:
        if self.target is None:
            return None
        return self.ratio >= self.target if self.higher_is_better else self.ratio <= self.target

    def target_text(self) -> str:
        if self.target is None:
            return "-"
        return f"{'>=' if self.higher_is_better else '<='} {self.target:g}{self._suffix()}"

    def ratio_text(self) -> str:
        digits = 0 if self.ratio >= 100 else 2
        return f"{self.ratio:.{digits}f}{self._suffix()}"

    def _suffix(self) -> str:
        return "x" if self.ratio_unit == "x" else f" {self.ratio_unit}"

    def as_dict(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "target": self.target_text() if self.target else None,
            "target_ratio": self.target,
            "passed": self.passed,
        }


def figure(
    name: str,
    unit: str,
    measured: float,
    baseline: float,
    target: float | None,
    *,
    higher_is_better: bool = False,
    note: str = "",
    ratio_unit: str = "x",
    baseline_unit: str = "",
) -> Figure:
    ratio = baseline / measured if higher_is_better else measured / baseline
    return Figure(
        name,
        unit,
        measured,
        baseline,
        ratio,
        target,
        higher_is_better,
        note,
        ratio_unit,
        baseline_unit,
    )


def ratio_of_medians(
    name: str,
    measured: Sequence[float],
    baseline: Sequence[float],
    target: float | None,
    note: str = "",
) -> Figure:
    """A figure of seconds: the median of ``measured`` over the median of ``baseline``."""
    return figure(
        name, "s", statistics.median(measured), statistics.median(baseline), target, note=note
    )


def write_figures(command: BaseCommand, figures: list[Figure]) -> None:
    """The figures as a table on ``command``'s stdout: a pass in green, a FAIL in red."""
    width = max([46, *(len(f.name) for f in figures)])
    header = (
        f"{'figure':<{width}} {'measured':>13} {'baseline':>13} {'ratio':>10} "
        f"{'target':>11}  result"
    )
    command.stdout.write(header)
    command.stdout.write("-" * len(header))
    for f in figures:
        result = {True: "pass", False: "FAIL", None: "info"}[f.passed]
        baseline = _fmt(f.baseline, f.baseline_unit or f.unit)
        line = (
            f"{f.name:<{width}} {_fmt(f.measured, f.unit):>13} {baseline:>13} "
            f"{f.ratio_text():>10} {f.target_text():>11}  {result}"
        )
        style: Callable[[str], str] = (
            (lambda s: s)
            if f.passed is None
            else (command.style.SUCCESS if f.passed else command.style.ERROR)
        )
        command.stdout.write(style(line))


def _fmt(value: float, unit: str) -> str:
    if unit == "B":
        if value >= 1024**2:
            return f"{value / 1024**2:.2f} MiB"
        return f"{value / 1024:.1f} KiB" if value >= 1024 else f"{value:.1f} B"
    if unit != "s":
        return f"{value:.0f} {unit}"
    sign, value = ("-" if value < 0 else ""), abs(value)
    if value >= 1:
        return f"{sign}{value:.3f} s"
    if value >= 1e-3:
        return f"{sign}{value * 1e3:.3f} ms"
    return f"{sign}{value * 1e6:.1f} us"
