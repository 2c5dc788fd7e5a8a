"""The verdict on two runs of a suite: every test that passes on the baseline passes on the
candidate, but for the listed exceptions."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field

#: Tests listed in a summary before it says "and N more".
SHOWN = 30


@dataclass
class Comparison:
    suite: str
    version: str
    baseline_name: str
    candidate_name: str
    baseline: dict[str, str]
    candidate: dict[str, str]
    #: ``{"SUITE::test id": reason}`` (``tests/upstream/exceptions.py``); other suites' ignored.
    exceptions: Mapping[str, str] = field(default_factory=dict)

    def key(self, test: str) -> str:
        return f"{self.suite}::{test}"

    def _lost(self) -> list[str]:
        """Passed on the baseline, not on the candidate (failed, skipped or not run at all)."""
        return sorted(
            t
            for t, outcome in self.baseline.items()
            if outcome == "passed" and self.candidate.get(t) != "passed"
        )

    @property
    def regressions(self) -> list[str]:
        return [t for t in self._lost() if self.key(t) not in self.exceptions]

    @property
    def excused(self) -> list[str]:
        return [t for t in self._lost() if self.key(t) in self.exceptions]

    @property
    def stale_exceptions(self) -> list[str]:
        """Listed exceptions of this suite that pass on the candidate now."""
        prefix = self.key("")
        mine = (k[len(prefix) :] for k in self.exceptions if k.startswith(prefix))
        return sorted(t for t in mine if self.candidate.get(t) == "passed")

    @property
    def baseline_failures(self) -> list[str]:
        """Tests that do not pass on plain django-redis: not counted."""
        return sorted(t for t, o in self.baseline.items() if o in ("failed", "xfailed"))

    @property
    def problems(self) -> list[str]:
        """Why the comparison itself says nothing (then it fails as a regression would)."""
        found = []
        if not any(o == "passed" for o in self.baseline.values()):
            found.append(f"{self.suite}: no test passed on {self.baseline_name}")
        if not self.candidate:
            found.append(f"{self.suite}: no test ran on {self.candidate_name}")
        return found

    @property
    def ok(self) -> bool:
        return not self.regressions and not self.problems

    @staticmethod
    def counts(outcomes: dict[str, str]) -> str:
        tally = Counter(outcomes.values())
        return ", ".join(
            f"{tally[k]} {k}" for k in ("passed", "failed", "skipped", "xfailed") if tally[k]
        )

    def summary(self, *, verbose_baseline: bool = False) -> str:
        lines = [
            f"{self.suite} {self.version}:",
            f"  {self.baseline_name}: {self.counts(self.baseline)}",
            f"  {self.candidate_name}: {self.counts(self.candidate)}",
        ]
        sections: list[tuple[str, list[str]]] = [
            ("problems", self.problems),
            ("pass on the baseline, not on the candidate", self.regressions),
            ("excused (tests/upstream/exceptions.py)", self.excused),
            ("listed exceptions that pass now", self.stale_exceptions),
        ]
        if verbose_baseline:
            sections.append(("fail on the baseline (not counted)", self.baseline_failures))
        else:
            lines.append(f"  fail on the baseline (not counted): {len(self.baseline_failures)}")
        for title, tests in sections:
            if tests:
                lines.append(f"  {title}: {len(tests)}")
                lines += [f"    {self.key(t)}" for t in tests[:SHOWN]]
                if len(tests) > SHOWN:
                    lines.append(f"    ... and {len(tests) - SHOWN} more")
        return "\n".join(lines)
