"""The composition root: builds the real adapters from settings. Nothing else constructs them."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

from sqlalchemy.engine import Engine

from batch.adapters.banking import CoreBanking
from batch.adapters.investsuite import InvestSuiteClient
from batch.adapters.journal import Journal
from batch.adapters.ledger import Ledger
from batch.adapters.ledger_bank_payouts import BankPayoutLedger
from batch.adapters.ledger_deposits import DepositLedger
from batch.adapters.ledger_reads import LedgerReader
from batch.adapters.migrations import migrate, pending
from batch.adapters.postgres import Dsns, make_engine, resolve_dsns, unavailable_as
from batch.domain.announce import announce_flows
from batch.domain.deposit import deposit_flows
from batch.domain.flow import Flow
from batch.domain.payout import FlowKind
from batch.domain.ports import Ports
from batch.domain.withdrawal import withdrawal_flow
from batch.errors import BatchError, ConfigError
from batch.settings import RefusedAfterMove, Settings


@dataclass
class App:
    """The wired application for one process. Close it when done."""

    settings: Settings
    dsns: Dsns
    journal_engine: Engine
    ledger_engine: Engine
    _client: InvestSuiteClient | None = field(default=None, repr=False)
    _ledger_reader: LedgerReader | None = field(default=None, repr=False)

    @property
    def journal(self) -> Journal:
        return Journal(self.journal_engine, lease_seconds=self.settings.run.lease_seconds)

    @property
    def ledger(self) -> Ledger:
        return Ledger(self.ledger_engine, self.settings.ledger)

    @property
    def ledger_reader(self) -> LedgerReader:
        """Read-only ledger queries (reconciliation); one per process, it counts its queries."""
        if self._ledger_reader is None:
            self._ledger_reader = LedgerReader(self.ledger_engine)
        return self._ledger_reader

    @property
    def client(self) -> InvestSuiteClient:
        if self._client is None:
            self._client = InvestSuiteClient(self.settings.investsuite)
        return self._client

    @property
    def deposit_ledger(self) -> DepositLedger:
        """The deposit side of the ledger: incoming credits, moves to customer accounts."""
        return DepositLedger(self.ledger_engine, self.settings.ledger)

    @property
    def bank_payouts(self) -> BankPayoutLedger:
        """The bank's payouts to counter accounts (withdrawals with broker integration by InvestSuite)."""
        return BankPayoutLedger(self.ledger_engine)

    @property
    def ports(self) -> Ports:
        """What the flows' steps call: this process's InvestSuite client and the core banking ledger."""
        banking = CoreBanking(self.ledger, self.deposit_ledger)
        return Ports(investsuite=self.client, ledger=banking, clock=lambda: datetime.now(UTC))

    @property
    def flows(self) -> Mapping[FlowKind, Flow]:
        """Every flow the engine drives, built from the settings."""
        reverse = self.settings.deposits.refused_after_move is RefusedAfterMove.REVERSE
        return {
            FlowKind.WITHDRAWAL: withdrawal_flow(self.settings.policy.to_policy()),
            **deposit_flows(reverse_refused=reverse),
            **announce_flows(),
        }

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
        self.journal_engine.dispose()
        self.ledger_engine.dispose()


def build_app(settings: Settings, *, dsns: Dsns | None = None, migrate_schemas: bool = True) -> App:
    """Resolve the databases (starting the embedded server if no DSN is set) and build the adapters."""
    resolved = dsns or resolve_dsns(settings.database)
    pool = max(settings.database.pool_size, settings.run.concurrency + 4)
    db = settings.database
    journal_engine = make_engine(resolved.journal, pool_size=pool, application_name="batch-journal", settings=db)
    ledger_engine = make_engine(resolved.ledger, pool_size=pool, application_name="batch-ledger", settings=db)
    if migrate_schemas:
        migrate(journal_engine, "journal")
    else:
        try:
            with unavailable_as("journal database", resolved.journal):
                behind = pending(journal_engine, "journal")
        except BatchError:
            journal_engine.dispose()
            ledger_engine.dispose()
            raise
        if behind:
            journal_engine.dispose()
            ledger_engine.dispose()
            raise ConfigError(f"the journal schema is behind ({', '.join(behind)} not applied): run `batch migrate`")
    return App(settings=settings, dsns=resolved, journal_engine=journal_engine, ledger_engine=ledger_engine)
