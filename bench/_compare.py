"""Turn the rounds of one comparison into a report section: a table of contenders and summary ratios."""

from __future__ import annotations

from collections.abc import Sequence

from ._report import Ratio, Section, fmt_ratio, fmt_us
from ._rounds import Rounds

__all__ = ["comparison_section"]


def comparison_section(
    key: str,
    title: str,
    rounds: Rounds,
    *,
    subject: str,
    baselines: Sequence[str],
    label: str,
    bar: float | None,
) -> Section:
    """Rows per contender (median per request, quartiles, requests/s, ``subject`` / this contender as a
    ratio of medians and as the median of same-round ratios); one summary ratio per baseline."""
    subject_median = rounds.median(subject)
    section = Section(
        key=key,
        title=f"{title} ({rounds.completed} rounds x {rounds.plan.count:,} requests, median per request)",
        headers=["client", "per request", "quartiles", "req/s", f"{subject} / this", "paired"],
    )
    for name in rounds.names:
        median = rounds.median(name)
        low, high = rounds.spread(name)
        section.rows.append(
            [
                name,
                fmt_us(median),
                f"{low * 1e6:,.1f}..{high * 1e6:,.1f}",
                f"{1 / median:,.0f}",
                fmt_ratio(subject_median / median),
                fmt_ratio(rounds.paired_ratio(subject, name)),
            ]
        )
    for baseline in baselines:
        section.ratios.append(
            Ratio(
                label=f"{label}: {subject} / {baseline}",
                subject=subject_median,
                baseline=rounds.median(baseline),
                ratio=subject_median / rounds.median(baseline),
                bar=bar,
            )
        )
    if rounds.stopped_early:
        section.notes.append(f"stopped after {rounds.completed} rounds: the time budget was used up")
    section.data = {
        "subject": subject,
        "baselines": list(baselines),
        "median_per_request_seconds": {name: rounds.median(name) for name in rounds.names},
        "paired_ratio": {name: rounds.paired_ratio(subject, name) for name in rounds.names},
        **rounds.to_json(),
    }
    return section
