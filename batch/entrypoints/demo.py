"""``batch demo``: the real job on the embedded PostgreSQL and the local sandbox, ending with a report.

1. start the embedded PostgreSQL (data under ``database.data_dir``) and migrate the three schemas;
2. start the InvestSuite-compatible sandbox on 127.0.0.1 and seed a scenario — withdrawals of every
   case and incoming credits of every deposit case (once: a second demo reuses it, which is how it
   shows that nothing is paid twice);
3. run the nightly job for today (both flows), print the summary and where the reports are;
4. run the same business date again and show that it paid nothing new;
5. the other withdrawal set-up, broker integration by InvestSuite: the bank's core banking has paid some
   customers' counter accounts (seeded), the job announces each payout once and holds what it cannot;
6. stop the sandbox and the database server.
"""

from __future__ import annotations

import shutil
from datetime import date

import sqlalchemy as sa

from batch.adapters.migrations import migrate
from batch.adapters.postgres import Dsns, EmbeddedServer, make_engine, resolve_dsns
from batch.bootstrap import build_app
from batch.sandbox.seed import seed_scenario
from batch.sandbox.seed_bank_payouts import seed_bank_payouts
from batch.sandbox.seed_deposits import seed_deposits
from batch.sandbox.server import SandboxProcess
from batch.service.nightly.run import ExitCode, RunRequest, run_job
from batch.settings import BrokerIntegration, Settings

DEMO_ACCESS_KEY = "demo-access-key"
DEMO_SECRET = "demo-secret-key"  # noqa: S105 - the sandbox's published demo credential, not a secret


def _ledger_movements(ledger_dsn: str) -> tuple[int, int]:
    """How many payouts (customer -> payout clearing) and deposit moves (incoming -> customer) the ledger holds."""
    engine = make_engine(ledger_dsn, pool_size=1)
    try:
        with engine.connect() as conn:
            row = conn.execute(
                sa.text(
                    "SELECT count(*) FILTER (WHERE c.kind = 'PAYOUT_CLEARING'),"
                    " count(*) FILTER (WHERE d.kind = 'INCOMING_FUNDS' AND c.kind = 'CUSTOMER_INVESTMENT_CASH')"
                    " FROM ledger.transfers t JOIN ledger.accounts c ON c.id = t.credit_account_id"
                    " JOIN ledger.accounts d ON d.id = t.debit_account_id"
                )
            ).one()
        return int(row[0]), int(row[1])
    finally:
        engine.dispose()


def run_demo(settings: Settings, *, size: int, reset: bool, keep_running: bool) -> int:
    server = EmbeddedServer(settings.database.data_dir)
    if reset:
        server.stop()
        shutil.rmtree(settings.database.data_dir, ignore_errors=True)
    print(f"== embedded PostgreSQL under {settings.database.data_dir}")
    # the demo is the one command that always means the embedded server (it stops it at the end)
    database = settings.database.model_copy(update={"embedded": True})
    dsns = resolve_dsns(database, components=("journal", "ledger", "sandbox"))
    for component in ("journal", "ledger", "sandbox"):
        engine = make_engine(getattr(dsns, component), pool_size=1)
        try:
            migrate(engine, component)
        finally:
            engine.dispose()
    try:
        with SandboxProcess(dsns.sandbox, access_key_id=DEMO_ACCESS_KEY, secret_access_key=DEMO_SECRET) as sandbox:
            print(f"== InvestSuite sandbox on {sandbox.base_url}")
            manifest = seed_scenario(dsns.sandbox, dsns.ledger, size=size)
            seeded = "reused" if manifest.get("already_seeded") else "seeded"
            print(f"== scenario {seeded}: {manifest['size']} portfolios over {len(manifest['cases'])} cases")
            credits = seed_deposits(dsns.sandbox, dsns.ledger)
            print(f"== incoming credits: {sum(map(len, credits.values()))} over {len(credits)} deposit cases")
            demo_settings = settings.model_copy(
                update={
                    "investsuite": settings.investsuite.model_copy(
                        update={
                            "base_url": sandbox.base_url,
                            "access_key_id": settings.investsuite.access_key_id or DEMO_ACCESS_KEY,
                            "secret_access_key": settings.investsuite.secret_access_key or _secret(DEMO_SECRET),
                        }
                    ),
                }
            )
            app = build_app(demo_settings, dsns=dsns)
            try:
                before = _ledger_movements(dsns.ledger)
                print("== nightly run")
                first = run_job(app, RunRequest(trigger="manual", operator="demo"))
                from batch.entrypoints.nightly import print_run_result  # noqa: PLC0415 - the CLI prints, the service does not

                print_run_result(first)
                middle = _ledger_movements(dsns.ledger)
                print(f"\n== the same business date again ({first.business_date})")
                second = run_job(app, RunRequest(business_date=first.business_date, trigger="manual", operator="demo"))
                after = _ledger_movements(dsns.ledger)
                for label, (n, moves) in (
                    ("before the demo", before),
                    ("after the first run", middle),
                    ("after the second run", after),
                ):
                    print(f"  {label + ':':<22} ledger payouts {n}, deposits moved {moves}")
                print(
                    f"  -> {after[0] - middle[0]} new payout(s), {after[1] - middle[1]} new deposit move(s):"
                    " nothing is paid or moved twice"
                )
                print(
                    f"  second run exit code {int(second.exit_code)} ({second.status}); reports in "
                    f"{demo_settings.run.report_dir}/"
                )
                _investsuite_set_up(demo_settings, dsns, first.business_date)
                print(
                    "\nNext: `batch payouts --state held`, `batch runs`, `batch audit verify` (see README, Operations)."
                )
                return int(first.exit_code) if first.exit_code is not ExitCode.ATTENTION else ExitCode.OK
            finally:
                app.close()
    finally:
        if not keep_running:
            server.stop()


def _investsuite_set_up(settings: Settings, dsns: Dsns, business_date: date) -> None:
    """Step 5: ``[withdrawals] broker_integration = "investsuite"``: announce the bank's payouts, twice."""
    print("\n== withdrawals with broker integration by InvestSuite: the bank paid, the job announces")
    payouts = seed_bank_payouts(dsns.sandbox, dsns.ledger, business_date)
    print(f"  the bank's core banking paid {sum(map(len, payouts.values()))} counter accounts on {business_date}")
    withdrawals = settings.withdrawals.model_copy(update={"broker_integration": BrokerIntegration.INVESTSUITE})
    app = build_app(settings.model_copy(update={"withdrawals": withdrawals}), dsns=dsns)
    try:
        for label in ("announcement run", "the same date again"):
            request = RunRequest(business_date=business_date, trigger="manual", operator="demo", flows=("withdrawals",))
            result = run_job(app, request)
            section = result.report.announcements if result.report else None
            for ccy, t in section.totals.items() if section else ():
                print(
                    f"  {label}: {ccy} bank payouts {t.credits} ({t.received}) = announced {t.count['announced']}"
                    f" ({t.amount['announced']}) + held {t.count['held']} ({t.amount['held']})"
                )
            print(f"  {label}: exit code {int(result.exit_code)} ({result.status})")
    finally:
        app.close()


def _secret(value: str) -> object:
    from pydantic import SecretStr  # noqa: PLC0415

    return SecretStr(value)
