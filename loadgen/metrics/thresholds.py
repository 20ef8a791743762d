"""Pass/fail thresholds over the run summary (``loadgen run --threshold``).

Grammar: ``KEY OP VALUE[UNIT]``, whitespace allowed between the parts.

- KEY: a dotted path into the summary, e.g. ``phases.connect.p95``,
  ``failure_ratio``, ``echo.rtt_p95``, ``failures.auth/timeout``;
- OP: ``<`` ``<=`` ``>`` ``>=`` ``==`` ``!=``;
- VALUE: a decimal number (sign and exponent allowed);
- UNIT: ``s``, ``ms``, ``us`` (converted to seconds), ``%`` (divided by 100),
  or none.

Key paths are checked against the summary's shape before the run starts
(``validate``), so a typo is a usage error, not a silently passing check.
"""

from __future__ import annotations

import difflib
import math
import operator
import re
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from loadgen.metrics.summary import SUMMARY_KEYS

__all__ = [
    "Threshold",
    "ThresholdError",
    "ThresholdResult",
    "evaluate",
    "parse_threshold",
    "validate",
]


class ThresholdError(ValueError):
    """A threshold that cannot be parsed or names no summary value (a usage error)."""


_OPS: dict[str, Callable[[float, float], bool]] = {
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
    "==": operator.eq,
    "!=": operator.ne,
}
_UNITS = {"": 1.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "%": 1e-2}

# Two-character operators first, so "<=" is never read as "<" then "=2".
_GRAMMAR = re.compile(
    r"""\s*(?P<key>[A-Za-z_][A-Za-z0-9_]*(?:[./][A-Za-z0-9_]+)*)
        \s*(?P<op><=|>=|==|!=|<|>)
        \s*(?P<num>[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?)
        \s*(?P<unit>ms|us|s|%)?
        \s*""",
    re.VERBOSE,
)


@dataclass(frozen=True)
class Threshold:
    #: dotted path into the summary
    key_path: str
    op: str
    #: in base units (seconds, ratios, counts)
    value: float
    #: the text as the user wrote it, for messages (not part of equality)
    expr: str = field(default="", compare=False)

    def check(self, actual: float) -> bool:
        return _OPS[self.op](actual, self.value)


@dataclass(frozen=True)
class ThresholdResult:
    expr: str
    #: None when the summary has no value (no observations): always a failure
    actual: float | None
    passed: bool
    message: str = ""


def parse_threshold(text: str) -> Threshold:
    """``"phases.connect.p95<2s"`` -> ``Threshold(key_path, op, value)``."""
    m = _GRAMMAR.fullmatch(text)
    if m is None:
        raise ThresholdError(
            f"cannot parse threshold {text!r}: expected KEY OP VALUE[unit], e.g. "
            "'phases.connect.p95<2s'; OP is one of < <= > >= == !=, unit one of s ms us %"
        )
    value = float(m["num"]) * _UNITS[m["unit"] or ""]
    return Threshold(key_path=m["key"], op=m["op"], value=value, expr=text.strip())


def validate(thresholds: Iterable[Threshold], summary_keys: Collection[str] = SUMMARY_KEYS) -> None:
    """Raise ``ThresholdError`` for a key path the summary does not have."""
    for t in thresholds:
        if t.key_path not in summary_keys:
            close = difflib.get_close_matches(t.key_path, list(summary_keys), n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise ThresholdError(f"threshold {t.expr!r}: unknown summary key {t.key_path!r}{hint}")


def _resolve(summary: Mapping[str, Any], key_path: str) -> float | None:
    node: Any = summary
    parts = key_path.split(".")
    for part in parts:
        if not isinstance(node, Mapping) or part not in node:
            # The summary lists non-zero failure counts only.
            return 0.0 if parts[0] == "failures" and len(parts) == 2 else None
        node = node[part]
    if isinstance(node, bool):
        return 1.0 if node else 0.0
    if isinstance(node, int | float) and not math.isnan(node):
        return float(node)
    return None


def evaluate(thresholds: Iterable[Threshold], summary: Mapping[str, Any]) -> list[ThresholdResult]:
    """Check every threshold against ``summary``; a missing value fails."""
    results = []
    for t in thresholds:
        expr = t.expr or f"{t.key_path}{t.op}{t.value:g}"
        actual = _resolve(summary, t.key_path)
        if actual is None:
            results.append(
                ThresholdResult(
                    expr=expr,
                    actual=None,
                    passed=False,
                    message=f"{expr}: failed, {t.key_path} has no value in this run "
                    "(nothing was observed)",
                )
            )
            continue
        passed = t.check(actual)
        verdict = "passed" if passed else "failed"
        results.append(
            ThresholdResult(
                expr=expr,
                actual=actual,
                passed=passed,
                message=f"{expr}: {verdict} ({t.key_path} = {actual:g})",
            )
        )
    return results
