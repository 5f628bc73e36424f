"""Scale-out: several worker processes executing the payouts of one planned run.

One planner (``batch run``) records every decision and marks the run planned; workers
(``batch worker``) claim payouts from the journal with ``FOR UPDATE SKIP LOCKED`` and a lease.
A worker that dies simply stops renewing its leases; when they run out, another worker (or the
planner, which always makes a last pass) claims those payouts and reads back before acting.
SIGTERM stops a worker gracefully (no new claims; each payout in flight finishes its current step),
and a planner forwards it to the workers it started.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from types import FrameType

import structlog

from batch.bootstrap import App
from batch.service.run import ExitCode, run_worker

log = structlog.get_logger("batch.workers")


def spawn_local_workers(config: Path | None) -> Callable[[uuid.UUID, int], None]:
    """``batch run --workers N``: start N worker processes on this machine and wait for them."""

    def spawn(run_id: uuid.UUID, count: int) -> None:
        command = [sys.executable, "-m", "batch"]
        if config is not None:
            command += ["--config", str(config)]
        command += ["worker", "--run-id", str(run_id)]
        processes = [subprocess.Popen(command) for _ in range(count)]
        previous = signal.getsignal(signal.SIGTERM)

        def forward(signum: int, frame: FrameType | None) -> None:
            # in a container only the planner gets SIGTERM: pass it on, then stop the planner as before
            for process in processes:
                if process.poll() is None:
                    process.send_signal(signum)
            if callable(previous):
                previous(signum, frame)

        on_main_thread = threading.current_thread() is threading.main_thread()
        if on_main_thread:
            signal.signal(signal.SIGTERM, forward)
        try:
            codes = [p.wait() for p in processes]
        finally:
            if on_main_thread:
                signal.signal(signal.SIGTERM, previous)
        log.info("workers.finished", run_id=str(run_id), exit_codes=codes)

    return spawn


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
    name = f"{socket.gethostname()}:{os.getpid()}:worker"
    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.warning("worker.stop_requested", signal=signal.Signals(signum).name)
        stop.set()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, on_signal)
    with structlog.contextvars.bound_contextvars(run_id=str(run_id), worker=name):
        stats = run_worker(app, run_id, actor=operator, worker_name=name, stop=stop)
        log.info("worker.finished", by_state=dict(stats.by_state))
    attention = stats.by_state.get("NEEDS_ATTENTION", 0)
    return ExitCode.ATTENTION if attention else ExitCode.OK
