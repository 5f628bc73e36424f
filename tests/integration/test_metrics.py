"""Run metrics: pushed to a (local, real HTTP) Pushgateway or written as a node-exporter textfile; never fatal."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families
from structlog.testing import capture_logs

from batch.adapters.postgres import Dsns
from batch.sandbox.app import DEFAULT_ACCESS_KEY_ID, DEFAULT_SECRET_ACCESS_KEY
from batch.sandbox.seed import libpq_dsn, seed_scenario
from batch.service.nightly.metrics import publish_run_metrics
from batch.service.nightly.run import ExitCode, RunResult
from batch.service.reports.build import Report, Totals
from batch.settings import MetricsSettings
from tests.fixtures.sandbox import RunningSandbox

ROOT = Path(__file__).resolve().parents[2]
STARTED = datetime(2026, 3, 2, 0, 30, tzinfo=UTC)


@dataclass
class Pushed:
    method: str
    path: str
    body: str


@dataclass
class FakePushgateway:
    """A real HTTP server on 127.0.0.1 standing in for the Prometheus Pushgateway."""

    status: int = 200
    requests: list[Pushed] = field(default_factory=list)
    url: str = ""


@pytest.fixture
def gateway() -> Iterator[FakePushgateway]:
    """A Pushgateway stand-in answering ``gateway.status`` and recording every request."""
    state = FakePushgateway()

    class Handler(BaseHTTPRequestHandler):
        def _handle(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length).decode("utf-8")
            state.requests.append(Pushed(self.command, self.path, body))
            self.send_response(state.status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_PUT = do_POST = _handle

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def _totals(counts: dict[str, int], amounts: dict[str, str]) -> Totals:
    totals = Totals()
    for bucket, n in counts.items():
        totals.count[bucket] = n
    for bucket, a in amounts.items():
        totals.amount[bucket] = Decimal(a)
    return totals


def _result(exit_code: ExitCode = ExitCode.ATTENTION) -> RunResult:
    report = Report(
        kind="run",
        business_date=date(2026, 3, 2),
        runs=[{"id": "r", "started_at": STARTED, "finished_at": STARTED + timedelta(seconds=42)}],
        as_of=STARTED,
        lines=[],
        totals={
            "EUR": _totals({"paid": 3, "deferred": 1, "held": 1}, {"paid": "300.50", "held": "60000.00"}),
            "JPY": _totals({"paid": 2, "skipped": 4}, {"paid": "2469"}),
        },
        checks=[],
        audit={},
        generated_at=STARTED,
    )
    return RunResult(None, date(2026, 3, 2), exit_code, "SUCCEEDED_WITH_EXCEPTIONS", report=report)


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def test_push_sends_exit_code_counts_and_last_success(gateway: FakePushgateway) -> None:
    """A push POSTs the job's metrics: exit code, counts and amounts by outcome and currency, last success time."""
    settings = MetricsSettings(pushgateway_url=gateway.url, job_name="payout_test")
    assert publish_run_metrics(settings, _result()) is True
    (request,) = gateway.requests
    assert request.method == "POST"  # replaces only the pushed metric names in the group
    assert request.path == "/metrics/job/payout_test"
    samples = _samples(request.body)
    assert samples[("batch_run_exit_code", ())] == 3
    assert samples[("batch_payout_candidates", (("currency", "EUR"), ("outcome", "paid")))] == 3
    assert samples[("batch_payout_candidates", (("currency", "EUR"), ("outcome", "held")))] == 1
    assert samples[("batch_payout_candidates", (("currency", "JPY"), ("outcome", "skipped")))] == 4
    assert samples[("batch_payout_amount", (("currency", "EUR"), ("outcome", "paid")))] == 300.5
    assert samples[("batch_run_duration_seconds", ())] == 42
    assert samples[("batch_run_last_success_timestamp_seconds", ())] > 1_700_000_000


def test_failed_run_keeps_the_last_success_on_the_gateway(gateway: FakePushgateway) -> None:
    """A failed run's push leaves the last-success metric out, so the gateway keeps the earlier success time."""
    result = RunResult(None, date(2026, 3, 2), ExitCode.TECHNICAL_FAILURE, "FAILED", error="boom")
    assert publish_run_metrics(MetricsSettings(pushgateway_url=gateway.url), result) is True
    (request,) = gateway.requests
    assert request.method == "POST"
    samples = _samples(request.body)
    assert samples[("batch_run_exit_code", ())] == 1
    assert not [name for name, _ in samples if name == "batch_run_last_success_timestamp_seconds"]


def test_failed_run_keeps_the_last_success_in_the_textfile(tmp_path: Path) -> None:
    """After a success then a failure, the textfile still carries the success's timestamp."""
    path = tmp_path / "payout.prom"
    settings = MetricsSettings(textfile_path=path)
    assert publish_run_metrics(settings, _result(ExitCode.OK)) is True
    first = _samples(path.read_text(encoding="utf-8"))
    success = first[("batch_run_last_success_timestamp_seconds", ())]
    failed = RunResult(None, date(2026, 3, 3), ExitCode.TECHNICAL_FAILURE, "FAILED", error="boom")
    assert publish_run_metrics(settings, failed) is True
    second = _samples(path.read_text(encoding="utf-8"))
    assert second[("batch_run_exit_code", ())] == 1
    assert second[("batch_run_last_success_timestamp_seconds", ())] == success


def test_nothing_configured_publishes_nothing() -> None:
    """Without a Pushgateway URL or a textfile path nothing is published."""
    assert publish_run_metrics(MetricsSettings(), _result()) is False


def test_gateway_answering_500_never_raises(gateway: FakePushgateway) -> None:
    """A Pushgateway answering 500 is logged as metrics.push_failed and publish returns False."""
    gateway.status = 500
    with capture_logs() as logs:
        assert publish_run_metrics(MetricsSettings(pushgateway_url=gateway.url), _result()) is False
    assert len(gateway.requests) == 1
    assert [e["event"] for e in logs] == ["metrics.push_failed"]
    assert logs[0]["log_level"] == "warning"


def test_unreachable_gateway_never_raises() -> None:
    """A Pushgateway nobody listens on is logged as metrics.push_failed within the timeout."""
    settings = MetricsSettings(pushgateway_url="http://127.0.0.1:9", timeout_seconds=1.0)
    with capture_logs() as logs:
        assert publish_run_metrics(settings, _result()) is False
    assert [e["event"] for e in logs] == ["metrics.push_failed"]


def test_textfile_is_written_atomically(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The textfile is written to a temporary file in the same folder, then renamed over the old one."""
    path = tmp_path / "collector" / "payout.prom"
    path.parent.mkdir()
    path.write_text("old content\n", encoding="utf-8")
    renames: list[tuple[str, str]] = []
    real_replace = os.replace

    def spy_replace(src: str, dst: str) -> None:
        renames.append((str(src), str(dst)))
        assert path.read_text(encoding="utf-8") == "old content\n"  # readers still see the whole old file
        real_replace(src, dst)

    monkeypatch.setattr("batch.service.nightly.metrics.os.replace", spy_replace)  # the os module the writer calls
    assert publish_run_metrics(MetricsSettings(textfile_path=path), _result(ExitCode.OK)) is True
    ((src, dst),) = renames
    assert Path(src).parent == path.parent and dst == str(path)
    samples = _samples(path.read_text(encoding="utf-8"))
    assert samples[("batch_run_exit_code", ())] == 0
    assert samples[("batch_payout_candidates", (("currency", "JPY"), ("outcome", "paid")))] == 2
    assert sorted(p.name for p in path.parent.iterdir()) == ["payout.prom"]  # no temporary file left
    assert path.stat().st_mode & 0o777 == 0o644  # readable by node-exporter running as another user


def test_textfile_that_cannot_be_written_never_raises(tmp_path: Path) -> None:
    """An unwritable textfile location is logged as metrics.textfile_failed and publish returns False."""
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("", encoding="utf-8")
    with capture_logs() as logs:
        assert publish_run_metrics(MetricsSettings(textfile_path=blocker / "payout.prom"), _result()) is False
    assert [e["event"] for e in logs] == ["metrics.textfile_failed"]


def _journal_runs(dsns: Dsns) -> list[tuple[Any, ...]]:
    with psycopg.connect(libpq_dsn(dsns.journal)) as conn:
        return conn.execute("SELECT status, exit_code FROM batch.runs").fetchall()


def _batch_run(
    tmp_path: Path, dsns: Dsns, sandbox: RunningSandbox, gateway_url: str
) -> subprocess.CompletedProcess[str]:
    config = tmp_path / "batch.toml"
    config.write_text(
        f"""
[database]
journal_dsn = "{dsns.journal}"
ledger_dsn = "{dsns.ledger}"
sandbox_dsn = "{dsns.sandbox}"

[investsuite]
base_url = "{sandbox.base_url}"
access_key_id = "{DEFAULT_ACCESS_KEY_ID}"
secret_access_key = "{DEFAULT_SECRET_ACCESS_KEY}"

[run]
report_dir = "{tmp_path / "reports"}"

[metrics]
pushgateway_url = "{gateway_url}"
job_name = "payout_e2e"
timeout_seconds = 2.0
""",
        encoding="utf-8",
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("BATCH_")}
    return subprocess.run(
        [sys.executable, "-m", "batch", "--config", str(config), "run", "--trigger", "test"],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=180,
        check=False,
    )


def test_batch_run_pushes_its_metrics(
    tmp_path: Path, dsns: Dsns, sandbox: RunningSandbox, gateway: FakePushgateway
) -> None:
    """`batch run` pushes the metrics of the run it just recorded (same exit code, seconds per phase)."""
    seed_scenario(dsns.sandbox, dsns.ledger, size=30, rng_seed=11)
    done = _batch_run(tmp_path, dsns, sandbox, gateway.url)
    ((status, exit_code),) = _journal_runs(dsns)
    assert done.returncode == exit_code, done.stderr
    (request,) = gateway.requests
    assert request.path == "/metrics/job/payout_e2e"
    samples = _samples(request.body)
    assert samples[("batch_run_exit_code", ())] == exit_code
    paid = sum(
        v
        for (name, labels), v in samples.items()
        if name == "batch_payout_candidates" and ("outcome", "paid") in labels
    )
    assert paid > 0
    assert status in ("SUCCEEDED", "SUCCEEDED_WITH_EXCEPTIONS")
    phases = {dict(labels)["phase"] for (name, labels), _ in samples.items() if name == "batch_run_phase_seconds"}
    assert phases == {"resume", "plan", "execute", "reconcile", "report"}  # where the night's time went
    with psycopg.connect(libpq_dsn(dsns.journal)) as conn:
        (recorded,) = conn.execute("SELECT summary -> 'phases' FROM batch.runs").fetchone() or (None,)
    assert set(recorded) == phases and "phases: resume" in done.stdout


def test_failing_push_does_not_change_the_exit_code(
    tmp_path: Path, dsns: Dsns, sandbox: RunningSandbox, gateway: FakePushgateway
) -> None:
    """`batch run` with a Pushgateway answering 500 exits with the run's own code and logs metrics.push_failed."""
    gateway.status = 500
    seed_scenario(dsns.sandbox, dsns.ledger, size=30, rng_seed=11)
    done = _batch_run(tmp_path, dsns, sandbox, gateway.url)
    ((_status, exit_code),) = _journal_runs(dsns)
    assert exit_code in (0, 3)
    assert done.returncode == exit_code, done.stderr
    events = [json.loads(line)["event"] for line in done.stderr.splitlines() if line.startswith("{")]
    assert "metrics.push_failed" in events
    assert events.index("metrics.push_failed") > events.index("run.finished")
