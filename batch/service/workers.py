"""Scale-out: several worker processes executing the payouts of one planned run.

One planner (``batch run``) records every decision and marks the run planned; workers
(``batch worker``) claim payouts from the journal with ``FOR UPDATE SKIP LOCKED`` and a lease.
A worker that dies simply stops renewing its leases; when they run out, another worker (or the
planner, which always makes a last pass) claims those payouts and reads back before acting.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

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
        codes = [p.wait() for p in processes]
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
    with structlog.contextvars.bound_contextvars(run_id=str(run_id), worker=name):
        stats = run_worker(app, run_id, actor=operator, worker_name=name)
        log.info("worker.finished", by_state=dict(stats.by_state))
    attention = stats.by_state.get("NEEDS_ATTENTION", 0)
    return ExitCode.ATTENTION if attention else ExitCode.OK
