"""Rejects: every record a stage leaves out, with its file and reason, reported the same way by every
stage (`reports/<stage>/rejects.csv`, a line each in the log, the counts by kind in MLflow)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lipseg.core.files import csv_text, write_text_atomic

REJECT_COLUMNS = ("split", "name", "file", "reason")


class DatasetError(RuntimeError):
    """The dataset folder itself is unusable (missing, no lists, nothing valid)."""


@dataclass(frozen=True)
class Reject:
    """A name or file that was left out, and why: `reason` is '<kind>' or '<kind>: <detail>'."""

    name: str
    file: str
    reason: str

    def as_dict(self) -> dict[str, str]:
        return {"name": self.name, "file": self.file, "reason": self.reason}

    @property
    def kind(self) -> str:
        return reject_kind(self.reason)


def reject_kind(reason: str) -> str:
    """What rejects are counted by: the reason without its per-file detail."""
    return reason.split(": ", 1)[0]


def reject_rows(split: str, rejects: Iterable[Reject]) -> list[dict[str, str]]:
    """Rejects as rows of a stage's rejects report (REJECT_COLUMNS)."""
    return [{"split": split, **reject.as_dict()} for reject in rejects]


def count_rejects(rows: Iterable[dict[str, str]]) -> dict[str, int]:
    """Rejects counted by kind, the most frequent first."""
    return dict(Counter(reject_kind(row["reason"]) for row in rows).most_common())


def describe_reject_counts(counts: dict[str, int]) -> str:
    if not counts:
        return "nothing rejected"
    return f"{sum(counts.values())} rejected: " + ", ".join(f"{count} {kind}" for kind, count in counts.items())


def rejects_csv(rows: list[dict[str, str]]) -> str:
    return csv_text(rows, fieldnames=REJECT_COLUMNS, lineterminator="\n")  # the header even when nothing was rejected


def report_rejects(stage: str, rows: list[dict[str, str]], csv_path: Path, run: Any) -> dict[str, int]:
    """What every stage that drops records does with them: the rejects report at `csv_path`, one line
    per reject and the counts by kind in the stage log, and the counts in MLflow (`run`, a
    tracking.StageRun). Returns the counts."""
    write_text_atomic(csv_path, rejects_csv(rows))
    for row in rows:
        print(f"{stage}: rejected {row['split']}/{row['name']}: {row['reason']} ({row['file']})")
    counts = count_rejects(rows)
    print(f"{stage}: {describe_reject_counts(counts)} (report: {csv_path})")
    run.log_reject_counts(counts)
    run.log_artifact(csv_path)
    return counts


def require_usable(stage: str, sizes: dict[str, int], counts: dict[str, int], see: str | Path) -> None:
    """DatasetError naming the reasons when a split has nothing left (every record was rejected);
    `see` says where each reject is listed with its file."""
    empty = [split for split, size in sizes.items() if size == 0]
    if empty:
        raise DatasetError(
            f"{stage}: no usable images left in {', '.join(empty)}; {describe_reject_counts(counts)} "
            f"(each reject with its file and reason: {see})"
        )
