"""Sections of results, the tables printed for them, the summary of ratios, and the JSON file."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["Ratio", "Section", "fmt_ratio", "fmt_us", "render", "write_json"]


@dataclass(frozen=True)
class Ratio:
    """One line of the summary: ``subject`` / ``baseline`` (both seconds), checked against ``bar``."""

    label: str
    subject: float
    baseline: float
    ratio: float | None
    bar: float | None = None
    #: "seconds" for times; "count" for a plain number checked against its bar (subject = ratio).
    unit: str = "seconds"

    @property
    def verdict(self) -> str:
        if self.bar is None:
            return ""
        if self.ratio is None:
            return "n/a"
        return "ok" if self.ratio <= self.bar else "OVER"

    def to_json(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "subject_seconds": self.subject,
            "baseline_seconds": self.baseline,
            "ratio": self.ratio,
            "bar": self.bar,
            "unit": self.unit,
            "verdict": self.verdict or None,
        }


@dataclass
class Section:
    """A measurement: its detail table, the ratios it adds to the summary, notes and raw data."""

    key: str
    title: str
    headers: Sequence[str]
    rows: list[Sequence[str]] = field(default_factory=list)
    ratios: list[Ratio] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)


def fmt_us(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1e6:,.1f} us"


def fmt_ratio(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """Left-aligned first column, right-aligned others, a rule under the header."""
    widths = [max(len(str(row[i])) for row in (headers, *rows)) for i in range(len(headers))]

    def line(cells: Sequence[str]) -> str:
        first, *rest = cells
        parts = [str(first).ljust(widths[0])] + [str(c).rjust(w) for c, w in zip(rest, widths[1:], strict=True)]
        return "  " + "  ".join(parts).rstrip()

    return [line(headers), "  " + "  ".join("-" * w for w in widths), *(line(row) for row in rows)]


def _summary_rows(sections: Sequence[Section]) -> list[list[str]]:
    rows = []
    for section in sections:
        for ratio in section.ratios:
            bar = "-" if ratio.bar is None else f"<= {ratio.bar:g}"
            rows.append(
                [
                    ratio.label,
                    fmt_us(ratio.subject) if ratio.unit == "seconds" else f"{ratio.subject:g}",
                    fmt_us(ratio.baseline) if ratio.unit == "seconds" else "-",
                    fmt_ratio(ratio.ratio),
                    bar,
                    ratio.verdict,
                ]
            )
    return rows


def render(header: Sequence[str], sections: Sequence[Section]) -> str:
    """Every section's table, then one summary table of all ratios with their absolute times."""
    out = [*header, ""]
    for section in sections:
        out += [section.title, *_table(section.headers, section.rows)]
        out += [f"  note: {note}" for note in section.notes]
        out.append("")
    out.append("SUMMARY: ratios (subject / baseline) with absolute times")
    out += _table(["measure", "subject", "baseline", "ratio", "bar", ""], _summary_rows(sections))
    return "\n".join(out)


def write_json(path: Path, meta: dict[str, Any], sections: Sequence[Section]) -> None:
    document = {
        "meta": meta,
        "summary": [ratio.to_json() for section in sections for ratio in section.ratios],
        "sections": {
            section.key: {"title": section.title, "notes": section.notes, **section.data} for section in sections
        },
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2) + "\n")
