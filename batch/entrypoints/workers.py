"""Scale-out: several worker processes executing the payouts of one planned run.

One planner (``batch run``) records every decision and marks the run planned; it then executes
payouts itself beside the workers (``batch worker``): every process claims payouts from the journal
with ``FOR UPDATE SKIP LOCKED`` and a lease. Processes, not more threads: the job's own work per
payout is Python (GIL-bound), so one process saturates one core long before the I/O does.
A worker that dies simply stops renewing its leases; when they run out, another worker (or the
planner, which always makes a last pass) claims those payouts and reads back before acting.
SIGTERM stops a worker gracefully (no new claims; each payout in flight finishes its current step),
and a planner forwards it to the workers it started.
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import FrameType

import structlog

from batch.bootstrap import App
from batch.service.nightly.run import ExitCode
from batch.service.wiring import run_worker

log = structlog.get_logger("batch.workers")
_PR_SET_PDEATHSIG = 1


class LocalWorkers:
    """Worker processes started by a planner on this machine (``batch run --workers N``)."""

    def __init__(self, processes: list[subprocess.Popen[bytes]]) -> None:
        self.processes = processes
        self._previous = signal.getsignal(signal.SIGTERM)
        self._on_main_thread = threading.current_thread() is threading.main_thread()
        if self._on_main_thread:
            signal.signal(signal.SIGTERM, self._forward)

    def _forward(self, signum: int, frame: FrameType | None) -> None:
        # in a container only the planner gets SIGTERM: pass it on, then stop the planner as before
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signum)
        if callable(self._previous):
            self._previous(signum, frame)

    def lease_owners(self) -> list[str]:
        """The names the workers lease payouts under (``worker_main``)."""
        return [worker_name(process.pid) for process in self.processes]

    def wait(self) -> list[int]:
        try:
            codes = [p.wait() for p in self.processes]
        finally:
            if self._on_main_thread:
                signal.signal(signal.SIGTERM, self._previous)
        log.info("workers.finished", exit_codes=codes)
        return codes


def worker_name(pid: int) -> str:
    """The name a worker process on this host leases payouts under."""
    return f"{socket.gethostname()}:{pid}:worker"


def spawn_local_workers(
    config: Path | None, options: Sequence[str] = ()
) -> Callable[[uuid.UUID, int, Mapping[str, str]], LocalWorkers]:
    """Start ``count`` ``batch worker`` processes for a planned run; they stop when the planner dies.

    ``options`` are global options for them (the planner's log format and level); ``overrides`` are
    settings for the workers as ``BATCH_*`` variables (their share of the rate limit).
    """

    def spawn(run_id: uuid.UUID, count: int, overrides: Mapping[str, str]) -> LocalWorkers:
        command = [sys.executable, "-m", "batch", *options]
        if config is not None:
            command += ["--config", str(config)]
        command += ["worker", "--run-id", str(run_id)]
        env = dict(os.environ, BATCH_PLANNER_PID=str(os.getpid()), **overrides)
        return LocalWorkers([subprocess.Popen(command, env=env) for _ in range(count)])

    return spawn


def _stop_with_planner(stop: threading.Event) -> None:
    """A worker started by a planner gets SIGTERM when the planner dies (Linux), so it never outlives it."""
    planner = os.environ.get("BATCH_PLANNER_PID")
    if not planner or not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):  # pragma: no cover - not glibc
        return
    if os.getppid() != int(planner):  # the planner died before the request took effect
        stop.set()


def worker_main(app: App, run_id: uuid.UUID | None, operator: str, wait_seconds: float) -> int:
    """Wait (bounded) for a planned run if none is given, then execute its payouts."""
    journal = app.journal
    deadline = time.monotonic() + wait_seconds
    while run_id is None:
        run_id = journal.current_planned_run()
        if run_id is None:
            if time.monotonic() > deadline:
                log.info("worker.no_planned_run", waited_s=wait_seconds)
                return ExitCode.OK
            time.sleep(1.0)
    name = worker_name(os.getpid())
    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.warning("worker.stop_requested", signal=signal.Signals(signum).name)
        stop.set()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, on_signal)
    _stop_with_planner(stop)
    run = journal.get_run(run_id)
    business_date = str(run["business_date"]) if run is not None else None
    with structlog.contextvars.bound_contextvars(run_id=str(run_id), business_date=business_date, worker=name):
        stats = run_worker(app, run_id, actor=operator, worker_name=name, stop=stop)
        log.info("worker.finished", by_state=dict(stats.by_state))
    attention = stats.by_state.get("NEEDS_ATTENTION", 0)
    return ExitCode.ATTENTION if attention else ExitCode.OK
