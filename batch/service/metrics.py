"""Run metrics for Prometheus: pushed to a Pushgateway, or written as a node-exporter textfile.

A failing push never fails the run: it is logged as ``metrics.push_failed`` and the run goes on.
"""

from __future__ import annotations

import os
import tempfile
import time
from decimal import Decimal

import structlog
from prometheus_client import CollectorRegistry, Gauge, generate_latest, push_to_gateway

from batch.service.run import RunResult
from batch.settings import MetricsSettings

log = structlog.get_logger("batch.metrics")


def build_registry(result: RunResult, *, now: float | None = None) -> CollectorRegistry:
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
    last_success = Gauge("batch_run_last_success_timestamp_seconds", "When a run last succeeded", registry=registry)
    exceptions = Gauge("batch_run_exceptions", "Held or needs-attention lines in the last run", registry=registry)
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
    if int(result.exit_code) in (0, 3):
        last_success.set(now if now is not None else time.time())
    return registry


def publish_run_metrics(settings: MetricsSettings, result: RunResult) -> bool:
    """Push or write the metrics when configured. Returns True when something was published."""
    if not settings.pushgateway_url and not settings.textfile_path:
        return False
    registry = build_registry(result)
    published = False
    if settings.pushgateway_url:
        try:
            push_to_gateway(
                settings.pushgateway_url, job=settings.job_name, registry=registry, timeout=settings.timeout_seconds
            )
            published = True
        except Exception as exc:  # a failing push never fails the run
            log.warning("metrics.push_failed", error=f"{type(exc).__name__}: {exc}"[:300])
    if settings.textfile_path:
        try:
            path = settings.textfile_path
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".batch-metrics-")
            with os.fdopen(fd, "wb") as fh:
                fh.write(generate_latest(registry))
            os.replace(tmp, path)  # atomic: node-exporter never reads half a file
            published = True
        except OSError as exc:
            log.warning("metrics.textfile_failed", error=str(exc)[:300])
    return published
