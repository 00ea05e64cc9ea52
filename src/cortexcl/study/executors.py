"""Executors run a study's jobs; they know nothing of what a job does."""

from __future__ import annotations

import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cortexcl.atomic import atomic_write_text
from cortexcl.study.jobs import Job


@dataclass
class ExecutionReport:
    """What happened to each job: done now, skipped (already done), failed or blocked."""

    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, Path] = field(default_factory=dict)
    blocked: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when no job failed or was blocked by a failure."""
        return not self.failed and not self.blocked


class SerialExecutor:
    """Run jobs one after another in the given (dependency-first) order.

    A failing job is reported with its log file and does not stop the jobs that do not depend
    on it; the jobs that do are reported as blocked.
    """

    def run(self, jobs: Sequence[Job], run_job: Callable[[Job], None], root: Path,
            on_event: Callable[[str, Job], None] | None = None) -> ExecutionReport:
        """Run every unfinished job of ``jobs`` and report."""
        report = ExecutionReport()
        unusable: set[str] = set()
        for job in jobs:
            if unusable.intersection(job.depends_on):
                report.blocked.append(job.key)
                unusable.add(job.key)
                _notify(on_event, "blocked", job)
                continue
            if job.is_done(root):
                report.skipped.append(job.key)
                _notify(on_event, "skipped", job)
                continue
            job.reset(root)
            job.mark_started(root)
            _notify(on_event, "start", job)
            try:
                run_job(job)
            except Exception:  # noqa: BLE001 - reported with its log; independent jobs go on
                log = root / "logs" / (job.key.replace("/", "__") + ".log")
                atomic_write_text(log, traceback.format_exc())
                report.failed[job.key] = log
                unusable.add(job.key)
                _notify(on_event, "failed", job)
                continue
            job.mark_done(root)
            report.done.append(job.key)
            _notify(on_event, "done", job)
        return report


def _notify(on_event: Callable[[str, Job], None] | None, event: str, job: Job) -> None:
    if on_event is not None:
        on_event(event, job)


EXECUTORS = {"serial": SerialExecutor}
