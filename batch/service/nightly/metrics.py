"""Run metrics for Prometheus: pushed to a Pushgateway, or written as a node-exporter textfile.

A failing push never fails the run: it is logged as ``metrics.push_failed`` and the run goes on.
The last-success timestamp survives a failed run: the push is a POST (it replaces only the metric
names it carries, and a failed run does not carry that one), and the textfile keeps the old value.
"""

from __future__ import annotations

import os
import tempfile
import time
from decimal import Decimal
from pathlib import Path

import structlog
from prometheus_client import CollectorRegistry, Gauge, generate_latest, pushadd_to_gateway
from prometheus_client.parser import text_string_to_metric_families

from batch.service.nightly.run import RunResult
from batch.settings import MetricsSettings

log = structlog.get_logger("batch.metrics")


LAST_SUCCESS = "batch_run_last_success_timestamp_seconds"


def build_registry(
    result: RunResult, *, now: float | None = None, previous_success: float | None = None
) -> CollectorRegistry:
    """The run's metrics. The last-success gauge is present only after a success (or to carry ``previous_success``)."""
    registry = CollectorRegistry()
    outcome = Gauge(
        "batch_payout_candidates",
        "Candidates by outcome and currency in the last run",
        ["outcome", "currency"],
        registry=registry,
    )
    amount = Gauge(
        "batch_payout_amount",
        "Amounts by outcome and currency in the last run",
        ["outcome", "currency"],
        registry=registry,
    )
    exit_code = Gauge("batch_run_exit_code", "Exit code of the last run", registry=registry)
    duration = Gauge("batch_run_duration_seconds", "Duration of the last run", registry=registry)
    exceptions = Gauge("batch_run_exceptions", "Held or needs-attention lines in the last run", registry=registry)
    phases = Gauge("batch_run_phase_seconds", "Wall seconds per phase of the last run", ["phase"], registry=registry)
    for phase, seconds in result.phases.seconds.items():
        phases.labels(phase).set(seconds)
    exit_code.set(int(result.exit_code))
    report = result.report
    if report is not None:
        for ccy, totals in report.totals.items():
            for bucket, count in totals.count.items():
                outcome.labels(bucket, ccy).set(count)
                amount.labels(bucket, ccy).set(float(totals.amount.get(bucket, Decimal(0))))
        exceptions.set(report.exceptions_count)
        run = report.runs[0]
        if run.get("finished_at") and run.get("started_at"):
            duration.set((run["finished_at"] - run["started_at"]).total_seconds())
    success_at = previous_success
    if int(result.exit_code) in (0, 3):
        success_at = now if now is not None else time.time()
    if success_at is not None:
        Gauge(LAST_SUCCESS, "When a run last succeeded", registry=registry).set(success_at)
    return registry


def _previous_success(path: Path) -> float | None:
    """The last-success timestamp in an earlier textfile, if there is a readable one."""
    try:
        text = path.read_text(encoding="utf-8")
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == LAST_SUCCESS:
                    return float(sample.value)
    except (OSError, ValueError):
        return None
    return None


def publish_run_metrics(settings: MetricsSettings, result: RunResult) -> bool:
    """Push or write the metrics when configured. Returns True when something was published."""
    if not settings.pushgateway_url and not settings.textfile_path:
        return False
    published = False
    if settings.pushgateway_url:
        try:
            # POST, not PUT: a failed run must not wipe the last-success timestamp of the group
            pushadd_to_gateway(
                settings.pushgateway_url,
                job=settings.job_name,
                registry=build_registry(result),
                timeout=settings.timeout_seconds,
            )
            published = True
        except Exception as exc:  # a failing push never fails the run
            log.warning("metrics.push_failed", error=f"{type(exc).__name__}: {exc}"[:300])
    if settings.textfile_path:
        try:
            path = settings.textfile_path
            registry = build_registry(result, previous_success=_previous_success(path))
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".batch-metrics-")
            try:
                os.fchmod(fd, 0o644)  # mkstemp makes it 0600; node-exporter usually runs as another user
                with os.fdopen(fd, "wb") as fh:
                    fh.write(generate_latest(registry))
                os.replace(tmp, path)  # atomic: node-exporter never reads half a file
            except OSError:
                Path(tmp).unlink(missing_ok=True)
                raise
            published = True
        except OSError as exc:
            log.warning("metrics.textfile_failed", error=str(exc)[:300])
    return published
