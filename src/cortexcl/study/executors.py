"""Executors run a study's jobs; they know nothing of what a job does.

Every executor keeps its books with one `JobBook`: a job whose completion record matches is
skipped, a job starts once every job it depends on is done, and a failing job is reported with
its log file (``logs/<key>.log``) and blocks only the jobs that depend on it. The completion
record of a job is written by the process that drives the executor (it holds the run's lock;
workers never take it), and only after the job returned successfully: a worker killed mid-way
leaves none, so a rerun redoes that job, resuming from its checkpoint where it has one.

- ``serial``: one job after another in this process.
- ``ray``: each job a Ray task with the resources its kind needs, submitted as soon as its
  dependencies are done; a local Ray instance or a running cluster.
- ``slurm``: each job a submitit job (SLURM, or local processes); the jobs ready together go
  as one job array; preempted or timed-out jobs are requeued and resume from their checkpoints.
"""

from __future__ import annotations

import importlib
import itertools
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType, TracebackType
from typing import TYPE_CHECKING, Any, Protocol

from tqdm.auto import tqdm

from cortexcl.atomic import atomic_write_text
from cortexcl.errors import InputError
from cortexcl.study.jobs import Job

if TYPE_CHECKING:
    from cortexcl.config import ExecutionConfig

RunJob = Callable[[Job], None]
OnEvent = Callable[[str, Job], None]
TUNING_KINDS = ("tune", "tune-pooled")


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


class Executor(Protocol):
    """What the study runner needs of an executor."""

    def run(self, jobs: Sequence[Job], run_job: RunJob, root: Path,
            on_event: OnEvent | None = None) -> ExecutionReport:
        """Run every unfinished job of ``jobs`` (dependencies first) and report."""
        ...


class JobBook:
    """The books an executor keeps while it runs a study's jobs.

    Parameters
    ----------
    jobs : sequence of Job
        The study's jobs, dependencies first.
    root : path
        The run directory.
    on_event : callable, optional
        ``on_event(event, job)`` for ``start``, ``retry``, ``done``, ``skipped``, ``failed``
        and ``blocked``.
    progress : bool
        Show a progress bar over the jobs.
    desc : str
        Label of the progress bar.
    """

    def __init__(self, jobs: Sequence[Job], root: Path, on_event: OnEvent | None = None,
                 progress: bool = False, desc: str = "jobs") -> None:
        self.root = Path(root)
        self.report = ExecutionReport()
        self._waiting = list(jobs)
        self._planned = {job.key for job in jobs}
        self._finished: set[str] = set()
        self._unusable: set[str] = set()
        self._on_event = on_event
        self._bar = tqdm(total=len(self._waiting), desc=desc, unit="job", disable=not progress)

    def __enter__(self) -> JobBook:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self._bar.close()

    def ready(self, limit: int | None = None) -> list[Job]:
        """Settle the waiting jobs that can be settled now; start and return those to run.

        In order, a waiting job with a failed or blocked dependency is blocked, and one whose
        dependencies are all finished is skipped when it is done already, or else started: its
        outputs of other settings are removed and its start is recorded. At most ``limit`` jobs
        are started (the jobs after the last one wait).
        """
        started: list[Job] = []
        waiting: list[Job] = []
        for index, job in enumerate(self._waiting):
            if limit is not None and len(started) == limit:
                waiting.extend(self._waiting[index:])
                break
            if self._unusable.intersection(job.depends_on):
                self._unusable.add(job.key)
                self._settle("blocked", job, self.report.blocked)
            elif any(key in self._planned and key not in self._finished
                     for key in job.depends_on):
                waiting.append(job)
            elif job.is_done(self.root):
                self._finished.add(job.key)
                self._settle("skipped", job, self.report.skipped)
            else:
                job.reset(self.root)
                job.mark_started(self.root)
                self.notify("start", job)
                started.append(job)
        self._waiting = waiting
        return started

    def finish(self, job: Job, failure: str | None) -> None:
        """Record the end of a started job: done, or failed with the text of ``failure``."""
        if failure is None:
            job.mark_done(self.root)
            self._finished.add(job.key)
            self._settle("done", job, self.report.done)
            return
        log = self.root / "logs" / (job.key.replace("/", "__") + ".log")
        atomic_write_text(log, failure)
        self.report.failed[job.key] = log
        self._unusable.add(job.key)
        self._bar.update()
        self.notify("failed", job)

    def notify(self, event: str, job: Job) -> None:
        """Tell ``on_event`` what happened to ``job``."""
        if self._on_event is not None:
            self._on_event(event, job)

    def _settle(self, event: str, job: Job, outcome: list[str]) -> None:
        outcome.append(job.key)
        self._bar.update()
        self.notify(event, job)


def attempt(run_job: RunJob, job: Job) -> str | None:
    """Run one job; None when it succeeded, else the traceback of its exception.

    This is what workers execute: the traceback travels back to the driver, which writes it
    to the job's log. Interrupts (`KeyboardInterrupt`, `SystemExit`) are not caught.
    """
    try:
        run_job(job)
    except Exception:  # noqa: BLE001 - reported with its log; independent jobs go on
        return traceback.format_exc()
    return None


def import_engine(module: str, executor: str, name: str, extra: str) -> ModuleType:
    """Import the engine of an executor, or say in one line how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise InputError(
            f"the {executor} executor needs {name}: pip install 'cortexcl[{extra}]'") from None


@dataclass
class SerialExecutor:
    """Run jobs one after another in this process, in the given (dependency-first) order.

    A failing job is reported with its log file and does not stop the jobs that do not depend
    on it; the jobs that do are reported as blocked.
    """

    @classmethod
    def from_config(cls, execution: ExecutionConfig, root: Path,
                    progress: bool = True) -> SerialExecutor:
        """The executor of a study's ``execution`` settings."""
        return cls()

    def run(self, jobs: Sequence[Job], run_job: RunJob, root: Path,
            on_event: OnEvent | None = None) -> ExecutionReport:
        """Run every unfinished job of ``jobs`` and report."""
        with JobBook(jobs, root, on_event) as book:
            while started := book.ready(limit=1):
                book.finish(started[0], attempt(run_job, started[0]))
            return book.report


@dataclass
class RayExecutor:
    """Run each job as a Ray task, as soon as the jobs it depends on are done.

    Attributes mirror `cortexcl.config.RayConfig`. Ray is started here (and shut down after)
    unless this process is connected to Ray already.
    """

    address: str | None = None
    num_cpus: int | None = None
    num_gpus: float | None = None
    cpus_per_job: int = 1
    encode_gpu_share: float = 0.25
    max_retries: int = 2
    retry_exceptions: int = 0
    progress: bool = True

    @classmethod
    def from_config(cls, execution: ExecutionConfig, root: Path,
                    progress: bool = True) -> RayExecutor:
        """The executor of a study's ``execution`` settings."""
        return cls(**execution.ray.model_dump(), progress=progress)

    def resources(self, kind: str, gpus: bool) -> dict[str, float]:
        """Ray resources of a job of ``kind`` on a cluster with or without ``gpus``.

        Tuning takes a whole GPU (and one CPU), or ``cpus_per_job`` CPUs without GPUs; the
        aggregation one CPU; encoding and the other evaluations ``cpus_per_job`` CPUs and a
        share of a GPU.
        """
        if kind in TUNING_KINDS:
            return {"num_cpus": 1, "num_gpus": 1} if gpus else {"num_cpus": self.cpus_per_job}
        if kind == "aggregate":
            return {"num_cpus": 1}
        return {"num_cpus": self.cpus_per_job, "num_gpus": self.encode_gpu_share if gpus else 0}

    def run(self, jobs: Sequence[Job], run_job: RunJob, root: Path,
            on_event: OnEvent | None = None) -> ExecutionReport:
        """Run every unfinished job of ``jobs`` on Ray and report."""
        ray = import_engine("ray", "ray", "Ray", "ray")
        ours = not ray.is_initialized()
        if ours:
            local = ({"num_cpus": self.num_cpus, "num_gpus": self.num_gpus}
                     if self.address is None else {})
            # Jobs write their own logs; worker output stays in Ray's session folder.
            ray.init(address=self.address, include_dashboard=False, log_to_driver=False,
                     **local)
        try:
            return self._run(ray, jobs, run_job, root, on_event)
        finally:
            if ours:
                ray.shutdown()

    def _run(self, ray: ModuleType, jobs: Sequence[Job], run_job: RunJob, root: Path,
             on_event: OnEvent | None) -> ExecutionReport:
        gpus = ray.cluster_resources().get("GPU", 0) > 0
        task = ray.remote(attempt)
        runner = ray.put(run_job)
        running: dict[Any, Job] = {}
        retried: dict[str, int] = {}

        def submit(job: Job) -> None:
            options = {"name": job.key, "max_retries": self.max_retries,
                       **self.resources(job.kind, gpus)}
            running[task.options(**options).remote(runner, job)] = job

        with JobBook(jobs, root, on_event, self.progress, "jobs (ray)") as book:
            try:
                for job in book.ready():
                    submit(job)
                while running:
                    (ref,), _ = ray.wait(list(running), num_returns=1)
                    job = running.pop(ref)
                    try:
                        failure = ray.get(ref)
                    except ray.exceptions.RayError as error:  # its worker died too often
                        failure = f"{type(error).__name__}: {error}\n"
                    else:
                        if failure is not None and retried.get(job.key, 0) < self.retry_exceptions:
                            retried[job.key] = retried.get(job.key, 0) + 1
                            book.notify("retry", job)
                            submit(job)
                            continue
                    book.finish(job, failure)
                    for ready in book.ready():
                        submit(ready)
            finally:
                for ref in running:
                    ray.cancel(ref, force=True)
            return book.report


class RequeueableJob:
    """A job as submitit runs it: requeued, the same job, when preempted or timed out.

    It follows submitit's ``Checkpointable`` protocol (a ``checkpoint`` method returning the
    submission to requeue) without needing submitit to be importable where it is built. The
    requeued job resumes from its own checkpoint.
    """

    def __init__(self, run_job: RunJob, job: Job) -> None:
        self.run_job = run_job
        self.job = job

    def __call__(self) -> str | None:
        return attempt(self.run_job, self.job)

    def checkpoint(self) -> Any:
        """The submission that requeues this job (called by submitit on preemption)."""
        from submitit.helpers import DelayedSubmission

        return DelayedSubmission(self)


@dataclass
class SlurmExecutor:
    """Run each job as a submitit job once the jobs it depends on are done.

    Attributes mirror `cortexcl.config.SlurmConfig`; ``folder`` holds submitit's files (the
    pickled jobs and their output).
    """

    folder: Path
    partition: str | None = None
    time_min: int = 240
    gpus_per_job: int = 1
    cpus_per_task: int = 4
    mem_gb: int = 32
    array_parallelism: int = 16
    max_requeues: int = 3
    cluster: str = "auto"
    poll_s: float = 10.0
    progress: bool = True

    @classmethod
    def from_config(cls, execution: ExecutionConfig, root: Path,
                    progress: bool = True) -> SlurmExecutor:
        """The executor of a study's ``execution`` settings; its files go to ``root/slurm``."""
        return cls(Path(root) / "slurm", **execution.slurm.model_dump(), progress=progress)

    def gpus(self, kind: str) -> int:
        """GPUs of a job of ``kind``: none for the aggregation, ``gpus_per_job`` otherwise."""
        return 0 if kind == "aggregate" else self.gpus_per_job

    def run(self, jobs: Sequence[Job], run_job: RunJob, root: Path,
            on_event: OnEvent | None = None) -> ExecutionReport:
        """Run every unfinished job of ``jobs`` with submitit and report."""
        submitit = import_engine("submitit", "slurm", "submitit", "slurm")
        executor = submitit.AutoExecutor(
            folder=self.folder, cluster=None if self.cluster == "auto" else self.cluster,
            slurm_max_num_timeout=self.max_requeues)
        executor.update_parameters(
            name="cortexcl", timeout_min=self.time_min, cpus_per_task=self.cpus_per_task,
            mem_gb=self.mem_gb, slurm_partition=self.partition,
            slurm_array_parallelism=self.array_parallelism)
        running: dict[str, tuple[Job, Any]] = {}

        def submit(ready: list[Job]) -> None:
            ready = sorted(ready, key=lambda job: self.gpus(job.kind))
            for gpus, group in itertools.groupby(ready, key=lambda job: self.gpus(job.kind)):
                group = list(group)
                executor.update_parameters(gpus_per_node=gpus)
                with executor.batch():
                    handles = [executor.submit(RequeueableJob(run_job, job)) for job in group]
                running.update((job.key, (job, handle))
                               for job, handle in zip(group, handles, strict=True))

        with JobBook(jobs, root, on_event, self.progress, "jobs (slurm)") as book:
            try:
                submit(book.ready())
                while running:
                    finished = [key for key, (_, handle) in running.items() if handle.done()]
                    if not finished:
                        time.sleep(self.poll_s)
                        continue
                    for key in finished:
                        job, handle = running.pop(key)
                        book.finish(job, _submitit_outcome(handle))
                    submit(book.ready())
            finally:
                for _, handle in running.values():
                    handle.cancel(check=False)
            return book.report


def _submitit_outcome(handle: Any) -> str | None:
    """None when a finished submitit job succeeded, else what went wrong and where its output is."""
    try:
        failure = handle.result()
    except Exception as error:  # noqa: BLE001 - killed, out of time or memory: the job failed
        failure = f"{type(error).__name__}: {error}\n"
    if failure is None:
        return None
    return f"{failure}\nsubmitit job {handle.job_id}: output in {handle.paths.stdout} and " \
           f"{handle.paths.stderr}\n"


EXECUTORS: dict[str, type[SerialExecutor | RayExecutor | SlurmExecutor]] = {
    "serial": SerialExecutor, "ray": RayExecutor, "slurm": SlurmExecutor}


def make_executor(execution: ExecutionConfig, root: Path, progress: bool = True) -> Executor:
    """The executor a study's ``execution`` settings name, for the run directory ``root``."""
    return EXECUTORS[execution.executor].from_config(execution, root, progress)
