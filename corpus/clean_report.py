"""The cleaning report: counts and examples gathered as results come back, the table that the terminal
and Prefect show, and the message of a clean that kept nothing."""
from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path

EXAMPLES_PER_STEP = 5


class Report:
    """Counts and examples gathered as results come back."""

    def __init__(self):
        self.dropped: Counter[str] = Counter()
        self.examples: dict[str, list[dict]] = defaultdict(list)
        self.lines_removed: Counter[str] = Counter()
        self.line_examples: dict[str, list[str]] = defaultdict(list)
        self.pii: Counter[str] = Counter()
        self.languages: Counter[str] = Counter()
        self.languages_out: Counter[str] = Counter()

    def drop(self, step: str, url: str, detail: str = "") -> None:
        self.dropped[step] += 1
        if len(self.examples[step]) < EXAMPLES_PER_STEP:
            self.examples[step].append({"url": url, **({"detail": detail} if detail else {})})

    def lines(self, step: str, n: int, examples: list[str]) -> None:
        self.lines_removed[step] += n
        room = EXAMPLES_PER_STEP - len(self.line_examples[step])
        self.line_examples[step].extend(e[:200] for e in examples[:max(room, 0)])


def nothing_kept_message(summary: dict, report_file: Path) -> str:
    steps = sorted(summary["dropped"].items(), key=lambda kv: -kv[1])
    parts = []
    for step, n in steps[:3]:
        example = (summary["dropped_examples"].get(step) or [{}])[0]
        parts.append(f"{step} {n} (e.g. {example.get('url', '?')}: {example.get('detail', '')})")
    step = steps[0][0] if steps else "language"
    setting = "clean.languages.keep" if step == "language" else f"clean.{step}"
    return (f"cleaning kept none of the {summary['pages_in']} pages: {'; '.join(parts)}. "
            f"Loosen {setting} in the config (see {report_file} for every step's counts).")


def report_rows(report: dict) -> list[dict]:
    """The cleaning report as table rows (step, what it removed, an example), in pipeline order."""
    rows = [{"step": "language", "removed": f"{report['dropped'].get('language', 0)} pages",
             "example": f"kept {report['languages_out']} of {report['languages_in']}"}]
    for step, n in report["lines_removed"].items():
        examples = report["lines_removed_examples"].get(step) or [""]
        rows.append({"step": step, "removed": f"{n} lines", "example": examples[0][:80]})
    rows += [{"step": f"pii: {kind}", "removed": f"{n} replaced", "example": ""}
             for kind, n in report["pii_replaced"].items()]
    for step, n in report["dropped"].items():
        if step == "language":
            continue
        first = (report["dropped_examples"].get(step) or [{}])[0]
        example = " — ".join(filter(None, [first.get("url", ""), first.get("detail", "")]))
        rows.append({"step": step, "removed": f"{n} pages", "example": example[:120]})
    leakage = report["leakage"]
    rows.append({"step": "boilerplate leakage", "removed": f"{leakage['before']:.2%} → {leakage['after']:.2%}",
                 "example": leakage["definition"]})
    return rows
