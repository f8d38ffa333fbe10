"""Judge observations against the cases and print the table.

Statuses: ``pass``/``fail`` (observed here), ``covered`` (an existing test proves it:
named in the observed column, not counted), ``not run`` (needs the QEMU guest and the
QEMU part did not observe it: the reason is shown, not counted). The last line is
exactly ``hostile: N passed, M failed``.
"""

from __future__ import annotations

from dataclasses import dataclass

from tests.hostile.cases import CASES, Case
from tests.hostile.world import Observation

PASS, FAIL, COVERED, NOT_RUN = "pass", "fail", "covered", "not run"


@dataclass(frozen=True)
class Row:
    case: Case
    status: str
    observed: str
    evidence: str = ""


def judge(case: Case, seen: Observation | None, skip: str | None) -> Row:
    """One row: the case's status given what was observed, or why nothing was (``skip``)."""
    if case.where == "covered":
        return Row(case, COVERED, f"covered by {case.covered_by}")
    if seen is None:
        if skip is not None:
            return Row(case, NOT_RUN, skip)
        return Row(case, FAIL, "no observation (the probe did not report it)")
    observed = f"{seen.result} {seen.detail}".strip()
    status = PASS if case.accepts(seen.result, seen.detail) else FAIL
    return Row(case, status, observed, "" if status == PASS else seen.evidence)


def evaluate(observations: dict[str, Observation], skips: dict[str, str],
             host_info: dict[str, Observation] | None = None) -> list[Row]:
    """Rows for every case; ``skips`` maps a case or a ``where`` to why it was not run.

    ``host_info`` adds this host's view of a guest-only case to its row.
    """
    rows = []
    for case in CASES:
        row = judge(case, observations.get(case.name), skips.get(case.name, skips.get(case.where)))
        info = (host_info or {}).get(case.name)
        if row.status == NOT_RUN and info is not None:
            row = Row(case, NOT_RUN, f"{row.observed}; on this host: {info.result} {info.detail}")
        rows.append(row)
    return rows


def counts(rows: list[Row]) -> dict[str, int]:
    out = {PASS: 0, FAIL: 0, COVERED: 0, NOT_RUN: 0}
    for row in rows:
        out[row.status] += 1
    return out


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def format_table(rows: list[Row], extra_errors: dict[str, Observation] | None = None) -> str:
    """The table, the evidence of each failure, then the summary lines."""
    lines = [f"{'case':40} | {'expected':28} | {'observed':60} | result", "-" * 145]
    for row in rows:
        lines.append(f"{row.case.name:40} | {_clip(row.case.expect, 28):28} | "
                     f"{_clip(row.observed, 60):60} | {row.status}")
    failures = [row for row in rows if row.status == FAIL]
    for row in failures:
        lines += ["", f"== FAIL {row.case.name}: {row.case.what}",
                  f"   expected {row.case.expect}; observed {row.observed}", "   console evidence:"]
        lines += [f"   | {text}" for text in (row.evidence or "(none)").splitlines()[-40:]]
    for name, seen in (extra_errors or {}).items():
        lines += ["", f"== ERROR {name}: {seen.detail}"]
    c = counts(rows)
    lines += ["", f"covered by other tests: {c[COVERED]}; not run (need the QEMU guest): {c[NOT_RUN]}",
              f"hostile: {c[PASS]} passed, {c[FAIL]} failed"]
    return "\n".join(lines)
