"""``batch schedule``: a resident scheduler (APScheduler 3.x) calling the same run as ``batch run``.

Cron expression (5 crontab fields, or 6 with seconds first) and time zone come from ``[schedule]``.
Misfires within the grace period still run, missed runs coalesce into one, and at most one instance
runs at a time (the run lock guards across processes too). SIGTERM/SIGINT stop gracefully: the
payout in flight finishes its current step, the run is recorded, then the process exits.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from pathlib import Path
from types import FrameType

import structlog
from apscheduler.schedulers.blocking import BlockingScheduler
from apscheduler.triggers.cron import CronTrigger

from batch.bootstrap import build_app
from batch.errors import ConfigError
from batch.service.nightly.interruption import Interruption
from batch.service.nightly.metrics import publish_run_metrics
from batch.service.nightly.run import ExitCode, RunRequest, RunResult, run_job
from batch.settings import Settings

log = structlog.get_logger("batch.scheduler")


def make_trigger(settings: Settings) -> CronTrigger:
    """The cron trigger of ``schedule.cron``: 5 crontab fields, or 6 with seconds first (Quartz style)."""
    expression, timezone = settings.schedule.cron, settings.schedule.timezone
    try:
        fields = expression.split()
        if len(fields) == 6:
            second, minute, hour, day, month, day_of_week = fields
            return CronTrigger(
                second=second,
                minute=minute,
                hour=hour,
                day=day,
                month=month,
                day_of_week=day_of_week,
                timezone=timezone,
            )
        return CronTrigger.from_crontab(expression, timezone=timezone)
    except (ValueError, KeyError) as exc:
        raise ConfigError(f"invalid schedule.cron {expression!r}: {exc}") from exc


def scheduled_run(settings: Settings, stop: threading.Event) -> RunResult | None:
    """One scheduled firing: the same service function as ``batch run``."""
    if stop.is_set():
        return None
    app = build_app(settings)
    try:
        result = run_job(app, RunRequest(trigger="scheduler", operator="scheduler"), stop=stop)
        publish_run_metrics(settings.metrics, result)
        log.info("schedule.run_finished", exit_code=int(result.exit_code), run_id=str(result.run_id))
        return result
    finally:
        app.close()


def build_scheduler(
    settings: Settings, stop: threading.Event, job: Callable[[], object] | None = None
) -> BlockingScheduler:
    scheduler = BlockingScheduler(timezone=settings.schedule.timezone)
    scheduler.add_job(
        job or (lambda: scheduled_run(settings, stop)),
        trigger=make_trigger(settings),
        id="nightly-payout-run",
        misfire_grace_time=settings.schedule.misfire_grace_seconds,
        coalesce=True,
        max_instances=1,
        replace_existing=True,
    )
    return scheduler


def run_scheduler(settings: Settings, *, config_path: Path | None = None) -> int:
    stop = Interruption()
    scheduler = build_scheduler(settings, stop)

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        log.info("schedule.stopping", signal=name)
        stop.request(name)  # a run in flight is recorded INTERRUPTED
        # wait=True: a run in flight finishes its current steps and is recorded before we exit
        threading.Thread(target=lambda: scheduler.shutdown(wait=True), daemon=True).start()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    job = scheduler.get_job("nightly-payout-run")
    log.info(
        "schedule.started",
        cron=settings.schedule.cron,
        timezone=settings.schedule.timezone,
        next_run=str(job.next_run_time) if job is not None and hasattr(job, "next_run_time") else None,
        config=str(config_path) if config_path else None,
    )
    scheduler.start()
    log.info("schedule.stopped")
    return ExitCode.OK
