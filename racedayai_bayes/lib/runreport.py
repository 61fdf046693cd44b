"""Progress messages that a reader can follow, and the pieces of the command line's refit report.

Library code reports progress through plain ``progress(message)`` callbacks (the Dagster
layer passes ``context.log.info``). A message that ends in ``[progress <done>/<total>]``
says how much of its step's work is done; :func:`parse_progress` reads it back. The
command line turns those messages into a progress bar on a terminal, or into plain lines,
at most one per step per quarter of its work, when its output is a file or a pipe
(:class:`QuarterGate`). Nothing here prints: the command line does.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

_PROGRESS = re.compile(r"\s*\[progress (\d+)/(\d+)\]\s*$")


def with_progress(message: str, done: int, total: int) -> str:
    """``message`` with a machine-readable progress tail: ``... [progress 150/6000]``."""
    return f"{message} [progress {int(done)}/{int(total)}]"


def parse_progress(message: str) -> tuple[str, float] | None:
    """(the message without its tail, the fraction done in [0, 1]), or None if it has none."""
    match = _PROGRESS.search(message or "")
    if match is None:
        return None
    done, total = int(match.group(1)), int(match.group(2))
    if total <= 0:
        return None
    return message[: match.start()], min(max(done / total, 0.0), 1.0)


def every_tenth(total: int) -> set[int]:
    """The counts (out of ``total`` chunks) after which to report: about ten, the last included."""
    if total <= 0:
        return set()
    return {math.ceil(total * k / 10) for k in range(1, 11)}


class QuarterGate:
    """Plain-output rate limit: one progress line per step and quarter of its work.

    A step's first, second and third quarter are each announced once, when its progress
    first reaches them; its end is the step's own line, not a progress line. A step that
    has run for less than ``min_seconds`` announces nothing (a fast step needs no progress
    line; its finished line follows at once).
    """

    def __init__(self, min_seconds: float = 2.0):
        self.min_seconds = min_seconds
        self._shown: dict[object, int] = {}

    def allow(self, step: object, fraction: float, elapsed_s: float) -> int | None:
        """The quarter (1-3) to announce now, or None."""
        quarter = min(int(fraction * 4 + 1e-9), 3)
        if quarter <= self._shown.get(step, 0) or elapsed_s < self.min_seconds:
            return None
        self._shown[step] = quarter
        return quarter


def bar(fraction: float, width: int = 20) -> str:
    """``[#########-----------]`` for a fraction in [0, 1]."""
    filled = int(round(min(max(fraction, 0.0), 1.0) * width))
    return "[" + "#" * filled + "-" * (width - filled) + "]"


def seconds(value: float) -> str:
    return f"{value:.1f} s" if value < 100 else f"{value / 60:.1f} min"


@dataclass
class CheckResult:
    """One check evaluation, as the report shows it."""

    name: str
    passed: bool
    severity: str  # "ERROR" or "WARN"
    description: str = ""
    value: float | None = None
    threshold: str | None = None


@dataclass
class PosteriorChecks:
    """Every check evaluation of one posterior: a model's asset and a distance."""

    asset: str
    distance: str
    results: list[CheckResult] = field(default_factory=list)

    @property
    def failed(self) -> list[CheckResult]:
        return [r for r in self.results if not r.passed]

    @property
    def blocking_failure(self) -> bool:
        return any(r.severity == "ERROR" for r in self.failed)

    def line(self) -> str:
        """One line: all passed with their values, or each failed check spelled out."""
        head = f"{self.asset} {self.distance}:"
        if not self.results:
            return f"{head} no check ran (its step did not finish)"
        if not self.failed:
            values = ", ".join(f"{r.name} {_shown(r)}" for r in self.results)
            return f"{head} all {len(self.results)} checks pass ({values})"
        spelled = "; ".join(
            f"{r.name} FAIL ({r.severity}): {r.description}"
            + (f" [value {_number(r.value)}" + (f", threshold {r.threshold}]" if r.threshold else "]")
               if r.value is not None else "")
            for r in self.failed
        )
        passed = [r.name for r in self.results if r.passed]
        tail = f"; passed: {', '.join(passed)}" if passed else ""
        return f"{head} {len(self.failed)} of {len(self.results)} checks FAILED: {spelled}{tail}"


def check_lines(posteriors: Iterable[PosteriorChecks]) -> list[str]:
    return [p.line() for p in posteriors]


# the tag `racedayai-bayes refit` puts on its runs: its log file, which a failed run's alert
# names (defs/sensors.py)
CLI_LOG_TAG = "racedayai/cli_log"

# the drift check's description on a model's first refit (lib/evaluation/diagnostics.check_drift):
# nothing to compare with; its value, 0, is then no measurement
NO_PREVIOUS_REFIT = "no previous refit to compare with"


def _shown(result: CheckResult) -> str:
    """A passed check's value, or what stands for it: the drift check on a model's first refit
    has nothing to compare with, and its 0 would read as 'did not move'."""
    if result.description == NO_PREVIOUS_REFIT:
        return "none (no previous refit)"
    return _number(result.value)


def _number(value: float | None) -> str:
    if value is None:
        return "-"
    if float(value).is_integer() and abs(value) < 1e9:
        return str(int(value))
    return f"{value:.4g}"
